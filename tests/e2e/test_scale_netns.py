"""Scale-out across a real network path: the gateway and its inference replicas each on a host of their own (Linux
network namespaces, support/netns.py), while replicas die, drop off the network, drain, or differ in size.

Which replica served a request is read from the replicas' JSON logs (one line per RPC, with its request id);
which requests were first sent to a replica that could not answer them, from the gateway's "retrying Generate"
lines. Needs root (CAP_NET_ADMIN): without it these tests fail, never skip. Select them with ``-k netns``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from support.netns import Host, Network, net_admin_missing

from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.launcher import LAUNCHER_PID_ENV, ServiceProcess, wait_ready
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.slow

PORTS = {"gateway": 50051, "retrieval": 50052, "tools": 50053, "inference": 50054}
SECOND_GATEWAY_PORT = 50061
QUESTION = "Explain how the garbage collector finds reference cycles."
KILL_NOTICED_S = 1.0
"""A killed replica's connections reset as it goes: its health stream breaks and its streams end within this."""
DRAIN_NOTICED_S = 0.5
"""A draining replica says NOT_SERVING at once: past this, no new request may be sent to it."""
CUT_NOTICED_S = 6.0
"""A cut link sends nothing: keepalive (a ping every 2 s, 1 s to answer) or load reports silent for 3 s must
notice it within this; its streams end UNAVAILABLE within it too."""


@dataclass(slots=True)
class Outcome:
    """One streamed request as the client saw it (time.monotonic)."""

    request_id: str
    started: float
    first_token: float | None = None
    ended: float = 0.0
    code: grpc.StatusCode = grpc.StatusCode.OK

    @property
    def ttft_s(self) -> float:
        assert self.first_token is not None, f"{self.request_id} got no token"
        return self.first_token - self.started


def _json_lines(path: Path | None) -> Iterator[dict[str, Any]]:
    assert path is not None
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            fields = json.loads(line)
            if isinstance(fields, dict):
                yield fields


def served(replica: ServiceProcess) -> dict[str, str]:
    """Client's request id → status of every Generate the replica logged (a line is written as each call ends;
    the gateway sends each attempt as the client's id, a dot and a suffix of its own)."""
    return {
        str(f.get("request_id")).rpartition(".")[0]: str(f.get("status"))
        for f in _json_lines(replica.log_path)
        if f.get("msg") == "rpc" and str(f.get("method", "")).endswith("/Generate")
    }


def retried(gateway: ServiceProcess) -> set[str]:
    """Request ids whose Generate the gateway tried again (an attempt failed before the first token)."""
    return {str(f.get("request_id")) for f in _json_lines(gateway.log_path) if f.get("msg") == "retrying Generate"}


def report(what: str, **numbers: float | int | str) -> None:
    text = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items())
    print(f"\n[netns] {what}: {text}", flush=True)


class Cluster:
    """A network of hosts ``gw`` (gateway, retrieval, tools) and ``inf1..3`` (one inference replica each), with
    retrieval and tools up for the whole module; each test starts its replicas and gateways, ``reset`` ends them."""

    def __init__(self, net: Network, log_dir: Path) -> None:
        self.net = net
        self.log_dir = log_dir
        self.gw = net.add_host("gw")
        self.inference_hosts = [net.add_host(f"inf{i}") for i in (1, 2, 3)]
        self._running: list[ServiceProcess] = []
        self.support: asyncio.Task[None] | None = None

    async def start_support(self) -> None:
        """Start retrieval and tools on ``gw`` (gateways wait for them)."""
        data = ["--data-dir", str(self.log_dir / "retrieval-data"), "--threads", "1"]
        support = [
            await self._serve(self.gw, mesh.RETRIEVAL, PORTS["retrieval"], "retrieval", *data),
            await self._serve(self.gw, mesh.TOOLS, PORTS["tools"], "tools", "--retrieval-target", ""),
        ]
        self._running.clear()  # module-wide: not stopped by ``reset``
        self.support = asyncio.create_task(self._all_ready(support))

    async def replicas(self, test: str, *flags: Sequence[str]) -> list[ServiceProcess]:
        """One SERVING inference replica per entry of ``flags`` (its extra flags), on inf1, inf2, ..."""
        started = [
            await self._serve(host, mesh.INFERENCE, PORTS["inference"], f"{test}-{host.name}", "--threads", "1", *extra)
            for host, extra in zip(self.inference_hosts, flags, strict=False)
        ]
        await self._all_ready(started)
        return started

    async def gateway(
        self, test: str, replicas: Sequence[ServiceProcess], *flags: str, port: int = PORTS["gateway"]
    ) -> ServiceProcess:
        """A SERVING gateway on ``gw`` balancing over ``replicas``."""
        assert self.support is not None
        await self.support
        upstreams = {name: f"{self.gw.address}:{PORTS[name]}" for name in ("retrieval", "tools")}
        gateway = await self._serve(
            self.gw,
            mesh.GATEWAY,
            port,
            f"{test}-gateway-{port}",
            *["--retrieval-target", upstreams["retrieval"], "--tools-target", upstreams["tools"]],
            *["--inference-target", ",".join(r.address for r in replicas)],
            *["--jobs-db", str(self.log_dir / f"{test}-jobs-{port}.db"), *flags],
        )
        await self._all_ready([gateway])
        return gateway

    def host_of(self, service: ServiceProcess) -> Host:
        return next(h for h in self.net.hosts.values() if service.address.startswith(f"{h.address}:"))

    async def reset(self) -> None:
        """SIGKILL what the test started; every link back up."""
        for service in self._running:
            if service.process.returncode is None:
                service.process.kill()
            await service.process.wait()
        self._running.clear()
        for host in self.inference_hosts:
            await self.net.link_up(host)

    async def _serve(self, host: Host, spec: mesh.ServiceSpec, port: int, name: str, *flags: str) -> ServiceProcess:
        argv = [sys.executable, "-m", "genmesh.cli", "serve", spec.name, "--host", host.address, "--port", str(port)]
        env = {LAUNCHER_PID_ENV: str(os.getpid())}  # dies with the test process, however it ends
        log_path = self.log_dir / f"{name}.log"
        process = await self.net.spawn(host, [*argv, "--log-format", "json", *flags], log_path, env)
        service = ServiceProcess(spec, f"{host.address}:{port}", process, log_path, name)
        self._running.append(service)
        return service

    @staticmethod
    async def _all_ready(services: Sequence[ServiceProcess]) -> None:
        await asyncio.gather(*(wait_ready(s, timeout_s=240) for s in services))


@pytest_asyncio.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    if missing := net_admin_missing():
        pytest.fail(f"{missing}; run them as root, e.g. sudo .venv/bin/pytest -k netns", pytrace=False)
    net = Network()
    running: Cluster | None = None
    try:
        net.open()
        running = Cluster(net, tmp_path_factory.mktemp("netns"))
        await running.start_support()
        yield running
    finally:
        if running is not None and running.support is not None:
            running.support.cancel()
            await asyncio.gather(running.support, return_exceptions=True)
        await net.close()


@pytest_asyncio.fixture
async def rig(cluster: Cluster) -> AsyncIterator[Cluster]:
    try:
        yield cluster
    finally:
        await cluster.reset()


def _request(request_id: str, max_tokens: int) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(request_id=request_id, question=QUESTION)
    request.sampling.max_tokens = max_tokens  # greedy: the tiny model does not stop early on this question
    request.sampling.temperature = 0.0
    request.retrieval.disabled = True
    return request


async def stream(stub: gateway_pb2_grpc.GatewayServiceStub, request_id: str, max_tokens: int) -> Outcome:
    outcome = Outcome(request_id, time.monotonic())
    try:
        async for event in stub.Generate(_request(request_id, max_tokens), timeout=60):
            if event.HasField("delta") and outcome.first_token is None:
                outcome.first_token = time.monotonic()
    except grpc.aio.AioRpcError as error:
        outcome.code = error.code()
    outcome.ended = time.monotonic()
    return outcome


async def open_loop(
    stub: gateway_pb2_grpc.GatewayServiceStub, prefix: str, count: int, every_s: float, max_tokens: int
) -> list[Outcome]:
    """``count`` requests started ``every_s`` apart, whatever the earlier ones are doing."""
    start = time.monotonic()
    calls = []
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i * every_s - time.monotonic()))
        calls.append(asyncio.create_task(stream(stub, f"{prefix}-{i}", max_tokens)))
    return list(await asyncio.gather(*calls))


async def closed_loop(
    stub: gateway_pb2_grpc.GatewayServiceStub, prefix: str, count: int, clients: int, max_tokens: int
) -> list[Outcome]:
    """``count`` requests from ``clients`` clients, each sending its next one when the last ended."""
    numbers = iter(range(count))

    async def client() -> list[Outcome]:
        return [await stream(stub, f"{prefix}-{n}", max_tokens) for n in numbers]

    return [outcome for done in await asyncio.gather(*(client() for _ in range(clients))) for outcome in done]


async def until_generating(replica: ServiceProcess, timeout_s: float = 20.0) -> None:
    """Wait until the replica (asked directly) has a generation running."""
    async with open_channel(replica.address) as channel, asyncio.timeout(timeout_s):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        while (await stub.GetLoad(inference_pb2.GetLoadRequest(), timeout=2)).running < 1:
            await asyncio.sleep(0.02)


def p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Loss:
    """A replica lost (killed, cut off) at ``at`` (time.monotonic), ``wall`` (time.time)."""

    replica: ServiceProcess
    at: float
    wall: float

    @classmethod
    def now(cls, replica: ServiceProcess) -> Loss:
        return cls(replica, time.monotonic(), time.time())

    def noticed_s(self, gateway: ServiceProcess) -> float:
        """When the gateway logged the replica as not serving, after the loss (inf: never)."""
        for f in _json_lines(gateway.log_path):
            if f.get("msg") == "inference replica not serving" and f.get("replica") == self.replica.address:
                logged = datetime.strptime(str(f["ts"]), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
                return logged.timestamp() - self.wall
        return math.inf


def check_failover(outcomes: Sequence[Outcome], gateway: ServiceProcess, loss: Loss, bound_s: float) -> None:
    """What a lost replica may cost: the gateway notices within ``bound_s``; only streams past their first token
    fail, with UNAVAILABLE, within ``bound_s``; every other request is answered (retried elsewhere); and no
    request started more than ``bound_s`` after the loss is sent to the lost replica."""
    cut = [o for o in outcomes if o.code != grpc.StatusCode.OK]
    again = [o for o in outcomes if o.request_id in retried(gateway)]
    noticed_s = loss.noticed_s(gateway)
    report(
        "failover",
        requests=len(outcomes),
        cut=len(cut),
        retried=len(again),
        noticed_s=noticed_s,
        cut_ended_s=max((o.ended - loss.at for o in cut), default=math.nan),
        last_sent_to_lost_s=max((o.started - loss.at for o in again), default=math.nan),
    )
    assert noticed_s <= bound_s, f"the gateway took {noticed_s:.2f} s to take the replica out of rotation"
    assert cut or again, "the lost replica was serving requests when it was lost"
    for o in cut:
        assert o.code == grpc.StatusCode.UNAVAILABLE, (o.request_id, o.code)
        assert o.first_token is not None, f"{o.request_id} failed before its first token: it should have been retried"
        assert o.ended - loss.at <= bound_s, f"{o.request_id} took {o.ended - loss.at:.2f} s to fail"
    late = [o.request_id for o in again if o.started > loss.at + bound_s]
    assert not late, f"sent to the lost replica more than {bound_s} s after it was lost: {late}"


async def test_netns_kill_9_of_a_replica_under_load(rig: Cluster) -> None:
    replicas = await rig.replicas("kill", (), (), ())
    gateway = await rig.gateway("kill", replicas)
    async with open_channel(gateway.address) as channel:
        load = asyncio.create_task(open_loop(gateway_pb2_grpc.GatewayServiceStub(channel), "kill", 30, 1 / 6, 48))
        await asyncio.sleep(1.5)
        await until_generating(replicas[1])
        killed_at = time.monotonic()
        os.kill(replicas[1].process.pid, signal.SIGKILL)
        await replicas[1].process.wait()
        loss = Loss.now(replicas[1])  # gone: its sockets are closed (tearing a big process down takes a while)
        outcomes = await load
    report("kill", reaped_s=loss.at - killed_at)
    check_failover(outcomes, gateway, loss, KILL_NOTICED_S)


async def test_netns_cut_link_of_a_replica_under_load(rig: Cluster) -> None:
    replicas = await rig.replicas("cut", (), (), ())
    gateway = await rig.gateway("cut", replicas)
    async with open_channel(gateway.address) as channel:
        load = asyncio.create_task(open_loop(gateway_pb2_grpc.GatewayServiceStub(channel), "cut", 45, 0.2, 48))
        await asyncio.sleep(1.5)
        await until_generating(replicas[2])
        loss = Loss.now(replicas[2])
        await rig.net.link_down(rig.host_of(replicas[2]))
        outcomes = await load
    check_failover(outcomes, gateway, loss, CUT_NOTICED_S)
    assert replicas[2].process.returncode is None, "cutting the link left the replica running"


async def test_netns_drain_of_a_replica_under_load(rig: Cluster) -> None:
    drain = ["--drain-delay", "2", "--grace", "10"]
    # 300 ms on the replica before each first token: a drained replica holds calls that have not answered yet.
    flags = [*drain, "--faults", "Generate:delay=300ms"]
    replicas = await rig.replicas("drain", flags, flags)
    gateway = await rig.gateway("drain", replicas)
    victim = replicas[1]
    async with open_channel(gateway.address) as channel:
        load = asyncio.create_task(open_loop(gateway_pb2_grpc.GatewayServiceStub(channel), "drain", 36, 1 / 6, 24))
        await asyncio.sleep(1.5)
        signalled = time.monotonic()
        victim.process.send_signal(signal.SIGTERM)
        outcomes = await load
        exit_code = await asyncio.wait_for(victim.process.wait(), 2 + 10 + 10)
    exited_s = time.monotonic() - signalled
    failed = [(o.request_id, o.code.name) for o in outcomes if o.code != grpc.StatusCode.OK]
    assert not failed, f"requests failed while a replica drained: {failed}"
    assert exit_code == 0, f"the drained replica exited with {exit_code}"
    on_victim = served(victim)
    started = {o.request_id: o.started - signalled for o in outcomes}
    finished_in_drain = [r for r, status in on_victim.items() if status == "OK" and started[r] < 0]
    late = {r: round(started[r], 3) for r in on_victim if started[r] > DRAIN_NOTICED_S}
    report("drain", in_flight_finished=len(finished_in_drain), late=len(late), exited_s=exited_s)
    assert finished_in_drain, "the drained replica had calls in flight, and finished them"
    assert not late, f"requests started after SIGTERM went to the draining replica: {late}"
    assert not retried(gateway), "no request was sent to the draining replica and refused"


async def test_netns_least_load_beats_round_robin_on_unequal_replicas(rig: Cluster) -> None:
    # The small replica (one sequence at a time) comes first in the target: order must not decide.
    replicas = await rig.replicas("unequal", ["--max-running", "1"], ["--max-running", "8"])
    small, big = replicas
    rr = await rig.gateway("unequal", replicas, "--inference-balancing", "round-robin", port=SECOND_GATEWAY_PORT)
    ll = await rig.gateway("unequal", replicas, "--inference-balancing", "least-load")
    ttft: dict[str, float] = {}
    for name, gateway in (("round-robin", rr), ("least-load", ll)):
        async with open_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            await closed_loop(stub, f"warm-{name}", 4, 2, 4)
            outcomes = await closed_loop(stub, name, 24, 8, 64)
        assert all(o.code == grpc.StatusCode.OK for o in outcomes), [o.code for o in outcomes]
        ttft[name] = p99([o.ttft_s for o in outcomes])
    on_small = [r for r in served(small) if r.startswith("least-load-")]
    on_big = [r for r in served(big) if r.startswith("least-load-")]
    report("unequal replicas", p99_ttft_rr_s=ttft["round-robin"], p99_ttft_ll_s=ttft["least-load"])
    report("least-load split", small=len(on_small), big=len(on_big))
    assert ttft["least-load"] < 0.8 * ttft["round-robin"], ttft
    assert on_small and on_big, "least-load gives both replicas work, whatever their order"


async def test_netns_a_replica_failing_every_call_is_routed_around(rig: Cluster) -> None:
    # inf1 stays SERVING and keeps reporting its load, but refuses every Generate before its first token. Its
    # circuit would open after 5 failures in a row; here the retries alone must route around it.
    replicas = await rig.replicas("flaky", ["--faults", "Generate:abort=UNAVAILABLE"], ())
    flaky, healthy = replicas
    gateway = await rig.gateway("flaky", replicas, "--circuit-failures", "1000")
    async with open_channel(gateway.address) as channel:
        outcomes = await closed_loop(gateway_pb2_grpc.GatewayServiceStub(channel), "flaky", 16, 8, 48)
    failed = [(o.request_id, o.code.name) for o in outcomes if o.code != grpc.StatusCode.OK]
    report("flaky replica", retried=len(retried(gateway)), failed=len(failed))
    assert not failed, f"each attempt refused by the flaky replica is retried on the other: {failed}"
    assert retried(gateway), "some first attempts went to the flaky replica"
    assert set(served(healthy)) >= {o.request_id for o in outcomes}
    assert not [s for s in served(flaky).values() if s == "OK"]
