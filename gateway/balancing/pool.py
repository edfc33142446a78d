"""The inference replicas behind one ``--inference-target``: discovery, the choice per call, Abort routing.

Replicas come from the target (a fixed list, or ``dns:///`` re-resolved every ``RESOLVE_EVERY_S``: a replica
that joins gets calls once it reports SERVING, within a few seconds). ``choose`` picks, in this order:

1. an eligible replica (serving, accepting, reporting, circuit closed) not yet tried by this request,
   by the balancing policy;
2. an eligible replica already tried (the only one left: a retry goes back to it);
3. a replica whose circuit is not open, though its health is unknown or down (one replica restarting: the
   call waits for it to reconnect, as with a single replica);
4. any replica: the circuit breaker then refuses the call, failing fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator

import grpc

from gateway.balancing.choice import Chooser, Policy
from gateway.balancing.replica import Replica
from gateway.circuit import CircuitConfig, CircuitState
from genmesh.interceptor import MAX_REQUEST_ID_CHARS
from genmesh.targets import TargetSpec, literal_addresses, resolve
from genmesh.tasks import cancel_and_wait
from genmesh.tls import ClientTLS
from genmesh.v1 import inference_pb2

log = logging.getLogger("genmesh.gateway")

RESOLVE_EVERY_S = 2.0
ABORT_TIMEOUT_S = 1.0


def attempt_id(request_id: str) -> str:
    """The request id one Generate attempt is sent to inference with, and aborted by: the client's ``request_id``
    (cut, when long, to stay within MAX_REQUEST_ID_CHARS), a dot and a random suffix. A client's id is a
    correlation id, not a key: two requests may share it, and must neither be refused for it nor abort each
    other. Starting with the client's id, it still finds the attempt in inference's logs."""
    suffix = secrets.token_hex(4)
    return f"{request_id[: MAX_REQUEST_ID_CHARS - len(suffix) - 1]}.{suffix}"


class InferencePool:
    """Every replica of the inference service, and which one runs each request."""

    def __init__(
        self,
        spec: TargetSpec,
        policy: Policy,
        circuit: CircuitConfig | None = None,
        resolver: Callable[[TargetSpec], Awaitable[list[str]]] = resolve,
        tls: ClientTLS | None = None,
    ) -> None:
        self.spec = spec
        self._tls = tls
        self._resolve = resolver
        self._chooser = Chooser(policy)
        self._circuit = circuit
        self.replicas: dict[str, Replica] = {}
        self._serving: dict[str, Replica] = {}
        """Replica of each attempt id (``attempt_id``) in flight, for Abort."""
        self._discovery: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[object]] = set()
        """Background work to cancel on close: replicas waiting for their calls to end, aborts in flight."""
        for name in literal_addresses(spec):  # known without a lookup: usable before ``start``
            self.replicas[name] = Replica(name, circuit, tls)

    async def start(self) -> None:
        """Resolve the target, start following every replica, and keep re-resolving it."""
        for replica in self.replicas.values():
            replica.start()
        await self._refresh()
        self._discovery = asyncio.create_task(self._rediscover(), name="inference-discovery")

    def choose(self, tried: frozenset[str], turn: bool = True) -> Replica | None:
        """The replica for the next attempt of a call that already tried ``tried`` (names); None when the
        target resolves to no replica at all. ``turn`` False: a side call (``Chooser.pick``)."""
        replicas = list(self.replicas.values())
        eligible = [r for r in replicas if r.eligible()]
        for tier in (
            [r for r in eligible if r.name not in tried],
            eligible,
            [r for r in replicas if r.breaker.state is not CircuitState.OPEN],
            replicas,
        ):
            if tier:
                return tier[self._chooser.pick([r.load() for r in tier], turn)]
        return None

    def several(self) -> bool:
        """Whether a retry can go to another replica."""
        return len(self.replicas) > 1

    @contextlib.contextmanager
    def serving(self, replica: Replica, request_id: str) -> Iterator[None]:
        """Record that ``replica`` runs ``request_id`` (an attempt's id: unique) and count it in flight while the
        block runs."""
        self._serving[request_id] = replica
        try:
            with replica.call():
                yield
        finally:
            if self._serving.get(request_id) is replica:
                del self._serving[request_id]

    async def abort(self, request_id: str) -> bool:
        """Stop ``request_id`` on the replica that runs it; False when no replica runs it (or it is gone)."""
        replica = self._serving.get(request_id)
        return replica is not None and await self._send_abort(replica, request_id)

    def abort_soon(self, request_id: str) -> None:
        """Send Abort for ``request_id`` to its replica in the background (a request the gateway gave up on:
        the replica frees its slot even if the call's cancellation is slow to arrive)."""
        replica = self._serving.get(request_id)
        if replica is None:
            return
        task: asyncio.Task[object] = asyncio.create_task(self._send_abort(replica, request_id))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _send_abort(replica: Replica, request_id: str) -> bool:
        try:
            request = inference_pb2.AbortRequest(request_id=request_id)
            response = await replica.stub.Abort(request, timeout=ABORT_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            log.info("abort failed", extra={"replica": replica.name, "code": error.code().name})
            return False
        return bool(response.found)

    async def wait_until_any_serving(self, timeout_s: float) -> None:
        """Return once some replica reports SERVING; TimeoutError after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        while not any(r.serving for r in self.replicas.values()):
            if loop.time() >= until:
                raise TimeoutError(f"no inference replica of {self.spec.text} is serving after {timeout_s:.0f} s")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        if self._discovery is not None:
            await cancel_and_wait(self._discovery)
        await cancel_and_wait(*self._retiring)
        for replica in list(self.replicas.values()):
            await replica.close()
        self.replicas.clear()

    async def _rediscover(self) -> None:
        while True:
            await asyncio.sleep(RESOLVE_EVERY_S)
            await self._refresh()

    async def _refresh(self) -> None:
        names = await self._resolve(self.spec)
        if not names and self.replicas:
            return  # a failed lookup keeps the replicas it knew
        for name in names:
            if name not in self.replicas:
                log.info("inference replica added", extra={"replica": name})
                replica = Replica(name, self._circuit, self._tls)
                replica.start()
                self.replicas[name] = replica
        for name in set(self.replicas) - set(names):
            log.info("inference replica removed", extra={"replica": name})
            retiring: asyncio.Task[object] = asyncio.create_task(
                self._retire(self.replicas.pop(name)), name=f"retire-{name}"
            )
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _retire(replica: Replica) -> None:
        """Close a replica that left the target once the calls it still runs have ended."""
        try:
            while replica.in_flight:
                await asyncio.sleep(0.1)
        finally:
            await replica.close()
