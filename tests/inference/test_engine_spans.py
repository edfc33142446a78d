"""The engine's phase spans on the shipped model, exported by the OpenTelemetry SDK to a real OTLP receiver: each
request's queue wait, prefill and decode as children of the span that submitted it, back to back in time order,
with its tokens, batch and ending; a request that ended early only has the phases it reached."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from support.engine_steps import ForwardGate
from support.otlp_receiver import OtlpReceiver, ReceivedSpan, running_receiver

from genmesh import tracing
from genmesh.errors import DeadlineExceeded
from genmesh.sampling import SamplingParams
from services.inference.engine import Engine, EngineConfig, Finished, GenerationRequest, TokenChunk
from services.inference.engine.spans import (
    BATCH_SIZE,
    DECODE,
    FINISH_REASONS,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    PREFILL,
    QUEUED,
)
from services.inference.engine.types import FinishReason
from services.inference.models.loader import LoadedModel

HELD_S = 0.3


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with running_receiver() as receiver:
        tracing.install("inference", tracing.TraceSettings(receiver.endpoint))
        try:
            yield receiver
        finally:
            await asyncio.to_thread(tracing.shutdown)  # while the receiver still listens


async def traced(
    engine: Engine, request_id: str, max_tokens: int, prompt: str = "The with statement", deadline: float | None = None
) -> tuple[str, list[TokenChunk | Finished]]:
    """Generate inside a span, as the Generate RPC does; that span's id and the items streamed."""
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    with tracing.tracer().start_as_current_span(f"rpc {request_id}") as parent:
        items = [item async for item in engine.generate(GenerationRequest(request_id, prompt, sampling, deadline))]
    return format(parent.get_span_context().span_id, "016x"), items


async def exported(receiver: OtlpReceiver) -> list[ReceivedSpan]:
    assert await asyncio.to_thread(tracing.flush)  # returns once the receiver has taken every span ended so far
    return list(receiver.spans)


def phases(spans: list[ReceivedSpan], parent: str) -> dict[str, ReceivedSpan]:
    """The engine spans under ``parent``, by name (each at most once)."""
    children = [span for span in spans if span.parent_span_id == parent]
    by_name = {span.name: span for span in children}
    assert len(by_name) == len(children), children
    assert set(by_name) <= {QUEUED, PREFILL, DECODE}
    return by_name


def seconds(span: ReceivedSpan) -> float:
    return float(span.end_ns - span.start_ns) / 1e9


def one_after_another(parent: ReceivedSpan, chain: list[ReceivedSpan]) -> None:
    assert all(span.trace_id == parent.trace_id and span.kind == "INTERNAL" for span in chain)
    assert parent.start_ns <= chain[0].start_ns and chain[-1].end_ns <= parent.end_ns
    for earlier, later in itertools.pairwise(chain):
        assert earlier.start_ns <= earlier.end_ns == later.start_ns, (earlier, later)


async def wait_until(check: object, what: str) -> None:
    give_up = time.monotonic() + 30
    while not check():  # type: ignore[operator]
        assert time.monotonic() < give_up, what
        await asyncio.sleep(0.005)


async def test_each_request_has_its_phases_as_children_of_its_span_in_time_order(
    loaded: LoadedModel, receiver: OtlpReceiver
) -> None:
    async with Engine(loaded, EngineConfig(max_running=4, max_waiting=4)) as engine:
        with ForwardGate(loaded.model) as passes:
            passes.hold()
            first = asyncio.create_task(traced(engine, "first", 3))
            await asyncio.to_thread(passes.blocked.wait, 10)  # the engine holds "first" in its prefill pass
            later = [
                asyncio.create_task(traced(engine, "a", 5)),
                asyncio.create_task(traced(engine, "b", 9, "Lists are")),
            ]
            await wait_until(lambda: engine.load().running == 3, "a and b queued")
            await asyncio.sleep(HELD_S)
            passes.release()  # "first" is prefilled, then a and b together in the next step
            results = await asyncio.gather(first, *later)
        spans = await exported(receiver)

    parents = {span.span_id: span for span in spans if span.name.startswith("rpc ")}
    for (parent_id, items), batch in zip(results, (1, 2, 2), strict=True):
        done = items[-1]
        assert isinstance(done, Finished) and done.finish_reason is FinishReason.LENGTH
        parent = parents[parent_id]
        found = phases(spans, parent_id)
        assert set(found) == {QUEUED, PREFILL, DECODE}
        queued, prefill, decode = found[QUEUED], found[PREFILL], found[DECODE]
        one_after_another(parent, [queued, prefill, decode])
        assert prefill.attributes == {INPUT_TOKENS: done.prompt_tokens, BATCH_SIZE: batch}, parent.name
        assert queued.attributes == {}
        assert decode.attributes == {OUTPUT_TOKENS: done.completion_tokens, FINISH_REASONS: ["length"]}
        assert all(span.status == "UNSET" for span in found.values())
        # the timings are those the request reports (ms rounded to µs), on the wall clock
        assert seconds(queued) * 1000 == pytest.approx(done.queue_ms, abs=0.01)
        assert (decode.end_ns - queued.start_ns) / 1e6 == pytest.approx(done.total_ms, abs=0.01)
        assert (prefill.end_ns - queued.start_ns) / 1e6 == pytest.approx(done.ttft_ms, abs=0.01)
        assert abs(queued.start_ns - time.time_ns()) < 60e9
    first_phases, a_phases = phases(spans, results[0][0]), phases(spans, results[1][0])
    assert seconds(first_phases[QUEUED]) < HELD_S <= seconds(first_phases[PREFILL]), "held in its prefill pass"
    assert seconds(a_phases[QUEUED]) >= HELD_S, "a waited in the queue while the engine was held"


async def test_a_request_that_ends_early_has_only_the_phases_it_reached(
    loaded: LoadedModel, receiver: OtlpReceiver
) -> None:
    long = SamplingParams(temperature=0.0, max_tokens=400)
    async with Engine(loaded, EngineConfig(max_running=1, max_waiting=2)) as engine:
        with tracing.tracer().start_as_current_span("rpc runner") as runner_span:
            runner = engine.generate(GenerationRequest("runner", "The with statement", long))
            assert isinstance(await anext(runner), TokenChunk)
        waiter = asyncio.create_task(traced(engine, "waiter", 5))
        await wait_until(lambda: engine.load().waiting == 1, "waiter queued behind runner")
        waiter.cancel()  # its client went away while it waited for the one row
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert engine.abort("runner")
        rest = [item async for item in runner]
        cancelled = rest[-1]
        assert isinstance(cancelled, Finished) and cancelled.finish_reason is FinishReason.CANCELLED

        with ForwardGate(loaded.model) as passes, tracing.tracer().start_as_current_span("rpc late") as late_span:
            deadline = time.monotonic() + 1.0
            late = engine.generate(GenerationRequest("late", "The with statement", long, deadline))
            assert isinstance(await anext(late), TokenChunk)
            passes.hold()
            await asyncio.to_thread(passes.blocked.wait, 10)
            await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.05)
            passes.release()
            with pytest.raises(DeadlineExceeded):
                async for _ in late:
                    pass
        spans = await exported(receiver)

    [waiter_parent] = [span for span in spans if span.name == "rpc waiter"]
    waited = phases(spans, waiter_parent.span_id)
    assert list(waited) == [QUEUED], "never given a row: no prefill, no decode"
    assert waited[QUEUED].attributes == {OUTPUT_TOKENS: 0, FINISH_REASONS: ["cancelled"]}
    assert waited[QUEUED].status == "UNSET", "a client leaving is not the server's error"

    ran = phases(spans, format(runner_span.get_span_context().span_id, "016x"))
    assert set(ran) == {QUEUED, PREFILL, DECODE}
    assert ran[DECODE].attributes == {OUTPUT_TOKENS: cancelled.completion_tokens, FINISH_REASONS: ["cancelled"]}
    assert ran[DECODE].end_ns <= time.time_ns()

    expired = phases(spans, format(late_span.get_span_context().span_id, "016x"))
    assert set(expired) == {QUEUED, PREFILL, DECODE}
    assert expired[DECODE].status == "ERROR" and expired[DECODE].attributes[FINISH_REASONS] == ["error"]
    assert expired[DECODE].attributes[OUTPUT_TOKENS] >= 1
    assert expired[QUEUED].status == expired[PREFILL].status == "UNSET"
