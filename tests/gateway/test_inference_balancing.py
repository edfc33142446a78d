"""The gateway's inference balancing over real gRPC replicas (in-process servers on loopback ports): load-aware
choice, replicas that are unhealthy, draining or failing get nothing, retries (of Generate and of CountTokens) go
elsewhere, Abort is routed by each attempt's own id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from inprocess import Fault, start_scripted_mesh
from replicas import Replicas, start_replicas

from gateway.balancing.choice import Policy
from gateway.balancing.pool import RESOLVE_EVERY_S, InferencePool
from gateway.orchestrator import Orchestrator
from gateway.upstreams import Upstreams, UpstreamTargets
from genmesh.errors import InvalidArgument
from genmesh.targets import TargetSpec, parse_target
from genmesh.v1 import gateway_pb2

NO_RETRIEVAL = gateway_pb2.RetrievalOptions(disabled=True)


@pytest.fixture
async def replicas() -> AsyncIterator[Replicas]:
    started = await start_replicas(3)
    yield started
    await started.stop()


@pytest.fixture
async def balanced(replicas: Replicas) -> AsyncIterator[Callable[..., Upstreams]]:
    """Upstreams whose inference target lists the replicas (retrieval and tools: a scripted mesh)."""
    mesh = await start_scripted_mesh()
    opened: list[Upstreams] = []

    def make(policy: Policy = Policy.LEAST_LOAD) -> Upstreams:
        upstreams = Upstreams(UpstreamTargets(mesh.address, mesh.address, replicas.target, policy))
        opened.append(upstreams)
        return upstreams

    yield make
    for upstreams in opened:
        await upstreams.close()
    await mesh.stop()


async def _started(upstreams: Upstreams) -> Upstreams:
    await upstreams.inference.start()
    await upstreams.inference.wait_until_any_serving(5.0)
    for _ in range(100):  # every replica has reported its load once
        if all(r.eligible() for r in upstreams.inference.replicas.values()):
            return upstreams
        await asyncio.sleep(0.05)
    raise AssertionError("replicas never became eligible")


async def _ask(
    upstreams: Upstreams, request_id: str = "", retrieval: gateway_pb2.RetrievalOptions = NO_RETRIEVAL
) -> str:
    request = gateway_pb2.GatewayRequest(question="q?", retrieval=retrieval, request_id=request_id)
    text = ""
    async for event in Orchestrator(upstreams).answer(request, 5.0):
        if event.HasField("delta"):
            text += event.delta.text
    return text


async def test_least_load_sends_new_calls_to_the_replicas_with_room(
    replicas: Replicas, balanced: Callable[..., Upstreams]
) -> None:
    first, second, _ = (r.servicer for r in replicas.replicas)
    first.report(running=8, waiting=20)
    second.report(running=8, waiting=20)
    upstreams = await _started(balanced())
    await asyncio.sleep(0.3)  # the reports arrived
    for _ in range(12):
        await _ask(upstreams)
    assert replicas.generate_counts() == [0, 0, 12]


async def test_round_robin_ignores_load(replicas: Replicas, balanced: Callable[..., Upstreams]) -> None:
    replicas.replicas[0].servicer.report(running=8, waiting=20)
    upstreams = await _started(balanced(Policy.ROUND_ROBIN))
    for _ in range(12):
        await _ask(upstreams)
    assert replicas.generate_counts() == [4, 4, 4]


async def test_replicas_not_serving_or_draining_get_nothing(
    replicas: Replicas, balanced: Callable[..., Upstreams]
) -> None:
    upstreams = await _started(balanced())
    await replicas.replicas[0].set_serving(False)
    replicas.replicas[1].servicer.report(accepting=False)
    await asyncio.sleep(0.3)
    for _ in range(10):
        await _ask(upstreams)
    assert replicas.generate_counts() == [0, 0, 10]


async def test_a_generate_retried_before_its_first_token_goes_to_another_replica(
    replicas: Replicas, balanced: Callable[..., Upstreams]
) -> None:
    broken, second, third = (r.servicer for r in replicas.replicas)
    broken.fault = Fault(grpc.StatusCode.UNAVAILABLE, "replica lost its engine", times=100)
    second.report(waiting=4)  # the broken replica looks best; the second is next best
    third.report(waiting=8)
    upstreams = await _started(balanced())
    await asyncio.sleep(0.3)
    assert await _ask(upstreams) == "Generators yield values.", "the call was retried"
    assert replicas.generate_counts() == [1, 1, 0], "the retry went to another replica, the next best"
    assert await _ask(upstreams) == "Generators yield values."
    assert replicas.generate_counts()[0] <= 2


async def test_abort_reaches_the_replica_that_runs_the_request(
    replicas: Replicas, balanced: Callable[..., Upstreams]
) -> None:
    for replica in replicas.replicas:
        replica.servicer.delta_delay_s = 0.5
    upstreams = await _started(balanced())
    asking = asyncio.create_task(_ask(upstreams, request_id="req-abort-1"))
    while sum(replicas.generate_counts()) == 0:
        await asyncio.sleep(0.01)
    serving = replicas.generate_counts().index(1)
    sent = replicas.replicas[serving].servicer.requests[0].request_id
    assert sent.startswith("req-abort-1."), "the attempt's own id starts with the client's"
    assert await upstreams.inference.abort(sent)
    aborted = [r.servicer.aborted for r in replicas.replicas]
    assert aborted[serving] == [sent] and sum(len(a) for a in aborted) == 1
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    await asyncio.sleep(0.1)
    assert aborted[serving] == [sent, sent], "a cancelled request is aborted on its replica"


async def test_requests_sharing_a_client_s_id_run_and_are_aborted_apart(
    replicas: Replicas, balanced: Callable[..., Upstreams]
) -> None:
    for replica in replicas.replicas:
        replica.servicer.delta_delay_s = 0.3
    upstreams = await _started(balanced())

    def sent() -> list[str]:
        return [request.request_id for r in replicas.replicas for request in r.servicer.requests]

    first = asyncio.create_task(_ask(upstreams, request_id="shared-1"))
    while not sent():
        await asyncio.sleep(0.01)
    first_id = sent()[0]
    second = asyncio.create_task(_ask(upstreams, request_id="shared-1"))
    while len(sent()) < 2:
        await asyncio.sleep(0.01)
    assert len(set(sent())) == 2 and all(i.startswith("shared-1.") for i in sent()), sent()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == "Generators yield values.", "the other request runs to its end"
    assert [i for r in replicas.replicas for i in r.servicer.aborted] == [first_id], "only the cancelled one"


async def test_count_tokens_failing_on_a_dying_replica_is_retried_on_another(
    replicas: Replicas, balanced: Callable[..., Upstreams]
) -> None:
    dying, second, third = (r.servicer for r in replicas.replicas)
    for servicer in (dying, second, third):
        servicer.counting = True
    dying.count_fault = Fault(grpc.StatusCode.UNAVAILABLE, "replica is going away")
    second.report(waiting=4)  # the dying replica looks best
    third.report(waiting=8)
    upstreams = await _started(balanced())
    await asyncio.sleep(0.3)
    assert await _ask(upstreams) == "Generators yield values."
    assert [len(s.counted) for s in (dying, second, third)] == [1, 1, 0], "counted by the next best"


async def test_a_refusal_of_the_passages_texts_names_no_client_field_and_the_request_answers(
    replicas: Replicas, balanced: Callable[..., Upstreams]
) -> None:
    for replica in replicas.replicas:
        replica.servicer.counting = True
        bad = InvalidArgument.field("texts[0]", "at most 65536 characters, got 100023")
        replica.servicer.count_fault = Fault(grpc.StatusCode.INVALID_ARGUMENT, rich=bad)
    upstreams = await _started(balanced())
    assert await _ask(upstreams, retrieval=gateway_pb2.RetrievalOptions()) == "Generators yield values."
    (counted,) = [request for r in replicas.replicas for request in r.servicer.counted]
    assert counted.texts, "the passages were sent to be counted"
    (prompt,) = [p for r in replicas.replicas for p in r.servicer.prompts]
    assert "A yield expression suspends" in prompt, "the budget was guessed: the passage is in the prompt"


async def test_a_replica_that_joins_the_dns_name_gets_calls_within_seconds(replicas: Replicas) -> None:
    answers = {"names": [replicas.replicas[0].address]}

    async def lookup(spec: TargetSpec) -> list[str]:
        return list(answers["names"])

    mesh = await start_scripted_mesh()
    upstreams = Upstreams(UpstreamTargets(mesh.address, mesh.address, "dns:///inference.test:50054"))
    upstreams.inference = InferencePool(parse_target("dns:///inference.test:50054"), Policy.ROUND_ROBIN, None, lookup)
    try:
        await _started(upstreams)
        answers["names"] = [r.address for r in replicas.replicas[:2]]  # a second replica joins
        joined = asyncio.get_running_loop().time()
        while replicas.generate_counts()[1] == 0:
            assert asyncio.get_running_loop().time() - joined < RESOLVE_EVERY_S + 3.0, "the new replica got nothing"
            await _ask(upstreams)
            await asyncio.sleep(0.05)
        answers["names"] = [replicas.replicas[1].address]  # the first one leaves
        await asyncio.sleep(RESOLVE_EVERY_S + 0.5)
        before = replicas.generate_counts()[0]
        for _ in range(4):
            await _ask(upstreams)
        assert replicas.generate_counts()[0] == before, "a replica gone from DNS gets no calls"
    finally:
        await upstreams.close()
        await mesh.stop()
