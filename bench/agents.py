"""Agents benchmark: the gateway's agent loop (GatewayRequest.tools) on the shipped model, against baselines of the
same run.

Starts a mesh on free loopback ports whose tools service loads bench/sleep_plugin.py (``nap``: 200 ms, no
arguments, so the model cannot get a call wrong), measures, stops it. A session is one Generate with
``tools=[nap]``, ``tool_choice`` REQUIRED, ``parallel_tool_calls`` false and ``max_steps`` 4: steps 1..3 each make
one 200 ms call, step 4 answers (the loop generates its last step with tool choice NONE).

- agents_concurrency_ratio: wall time of SESSIONS concurrent sessions over the median wall time of one session
  alone (1.0 would be perfect overlap; what is left is the engine's compute, shared by every session's steps:
  ``concurrent_tokens_per_s`` is the tokens the engine computed (prefilled and generated) per second meanwhile);
- parallel_tools_ratio: a step's tool phase (its step_end to its last tool_result, as the client sees them) when
  the model made 8 calls of the 200 ms tool in it (tool choice ``nap``, parallel calls: the shipped model, once
  calling, calls until the per-turn cap of 8; seeds are tried until a step holds 8) over the same when it made 1
  (parallel_tool_calls false), trials interleaved;
- step_overhead_ms: per step, the gateway's time beyond generation and tools (parsing, validating and
  assigning the calls, appending the results, building and fitting the next prompt), from the Completion's
  per-step spans of sessions run alone;
- continuation_prefill_ratio: prompt tokens prefilled (not served from the prefix cache) on steps 2+ over those
  steps' prompt tokens, from each StepEnd's usage.

    python -m bench.agents --quick     # about a minute, as CI runs it
    python -m bench.agents             # the figures of docs/BENCHMARKS.md

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench import harness
from genmesh.channels import open_channel
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Take a short nap three times, then say how you feel."
TOOL = "nap"
STEPS = 4
PARALLEL = 8
TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class Settings:
    sessions: int
    alone_trials: int
    parallel_trials: int


QUICK = Settings(sessions=16, alone_trials=3, parallel_trials=3)
FULL = Settings(sessions=64, alone_trials=5, parallel_trials=10)


@dataclass(slots=True)
class Session:
    """What one session's stream showed."""

    wall_s: float = 0.0
    steps: list[gateway_pb2.StepEnd] = field(default_factory=list)
    calls: int = 0
    completion: common_pb2.Completion | None = None


def session_request(index: int) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question=QUESTION, max_steps=STEPS, parallel_tool_calls=False)
    request.retrieval.disabled = True
    request.tools.add(server_tool=TOOL)
    request.tool_choice.mode = common_pb2.TOOL_CHOICE_MODE_REQUIRED
    request.sampling.max_tokens = 48  # a call of nap is about 30 of the shipped model's tokens
    request.sampling.seed = index
    return request


async def run_session(stub: gateway_pb2_grpc.GatewayServiceStub, request: gateway_pb2.GatewayRequest) -> Session:
    session = Session()
    start = time.perf_counter()
    async for event in stub.Generate(request, timeout=TIMEOUT_S):
        if event.HasField("step_end"):
            session.steps.append(event.step_end)
        elif event.HasField("tool_call"):
            session.calls += 1
        elif event.HasField("complete"):
            session.completion = event.complete
    session.wall_s = time.perf_counter() - start
    if session.completion is None or len(session.steps) != STEPS or session.calls != STEPS - 1:
        raise RuntimeError(f"a session did not run {STEPS} steps with {STEPS - 1} calls: {session}")
    return session


def step_overhead_ms(completion: common_pb2.Completion) -> float:
    """Per step: the loop's time (first step's generation start to the answer's end) less generation and tools."""
    timings = completion.timings
    inference = [s for s in timings.stages if s.stage == "inference" and s.step]
    tools: dict[int, list[common_pb2.StageSpan]] = defaultdict(list)
    for span in timings.stages:
        if span.stage.startswith("tool:") and span.step:
            tools[span.step].append(span)
    busy = sum(s.end_ms - s.start_ms for s in inference)
    busy += sum(max(s.end_ms for s in spans) - min(s.start_ms for s in spans) for spans in tools.values())
    loop_ms = max(s.end_ms for s in inference) - min(s.start_ms for s in inference)
    return (loop_ms - busy) / max(1, len(inference) - 1)


def continuation_prefill(sessions: list[Session]) -> float:
    prompt = prefilled = 0
    for session in sessions:
        for step in session.steps[1:]:
            prompt += step.usage.prompt_tokens
            prefilled += step.usage.prompt_tokens - step.usage.cached_tokens
    return prefilled / max(1, prompt)


async def tool_phase_ms(stub: gateway_pb2_grpc.GatewayServiceStub, calls: int, seed: int) -> float | None:
    """The tool phase of step 1 when the model made ``calls`` calls in it (None when it made another number)."""
    request = gateway_pb2.GatewayRequest(question=QUESTION, max_steps=2, parallel_tool_calls=calls > 1)
    request.retrieval.disabled = True
    request.tools.add(server_tool=TOOL)
    request.tool_choice.tool_name = TOOL
    request.sampling.max_tokens = 320  # room for the per-turn cap of calls
    request.sampling.seed = seed
    made = answered = 0
    ended = 0.0
    call = stub.Generate(request, timeout=TIMEOUT_S)
    try:
        async for event in call:
            if event.HasField("tool_call"):
                made += 1
            elif event.HasField("step_end"):
                if made != calls:
                    return None
                ended = time.perf_counter()
            elif event.HasField("tool_result"):
                answered += 1
                if answered == calls:
                    return (time.perf_counter() - ended) * 1000
    finally:
        call.cancel()  # step 2 is not measured
    return None


async def parallel_ratio(stub: gateway_pb2_grpc.GatewayServiceStub, trials: int) -> float:
    """Median tool phase of steps of PARALLEL calls over that of steps of 1, trials interleaved."""
    one: list[float] = []
    many: list[float] = []
    seed = 0
    while len(many) < trials:
        if seed > 20 * trials:
            raise RuntimeError(f"fewer than {trials} steps with {PARALLEL} calls in {seed} seeds")
        seed += 1
        phase = await tool_phase_ms(stub, PARALLEL, seed)
        if phase is None:
            continue
        many.append(phase)
        single = await tool_phase_ms(stub, 1, seed)
        assert single is not None, "parallel_tool_calls false made more than one call"
        one.append(single)
    print(f"tool phase: 1 call {statistics.median(one):.1f} ms, {PARALLEL} calls {statistics.median(many):.1f} ms")
    return statistics.median(many) / statistics.median(one)


async def measure(stub: gateway_pb2_grpc.GatewayServiceStub, settings: Settings) -> harness.Figures:
    await run_session(stub, session_request(0))  # warm: schemas cached, grammar compiled, pools filled
    alone = [await run_session(stub, session_request(i)) for i in range(settings.alone_trials)]
    alone_s = statistics.median(s.wall_s for s in alone)
    start = time.perf_counter()
    together = await asyncio.gather(*(run_session(stub, session_request(i)) for i in range(settings.sessions)))
    together_s = time.perf_counter() - start
    computed = sum(
        step.usage.prompt_tokens - step.usage.cached_tokens + step.usage.completion_tokens
        for session in together
        for step in session.steps
    )
    print(f"one session {alone_s * 1000:.0f} ms; {settings.sessions} at once {together_s * 1000:.0f} ms", flush=True)

    parallel = await parallel_ratio(stub, settings.parallel_trials)

    overheads = [step_overhead_ms(s.completion) for s in alone if s.completion is not None]
    usage = [(s.usage.prompt_tokens, s.usage.cached_tokens) for s in alone[0].steps]
    print(f"step overhead {statistics.median(overheads):.2f} ms; first session's (prompt, cached) per step {usage}")
    return {
        "cpus": os.cpu_count(),
        "sessions": settings.sessions,
        "steps_per_session": STEPS,
        "session_alone_ms": round(alone_s * 1000, 1),
        "sessions_concurrent_ms": round(together_s * 1000, 1),
        "agents_concurrency_ratio": round(together_s / alone_s, 2),
        "concurrent_tokens_per_s": round(computed / together_s, 1),
        "parallel_tools_ratio": round(parallel, 3),
        "step_overhead_ms": round(statistics.median(overheads), 2),
        "continuation_prefill_ratio": round(continuation_prefill([*alone, *together]), 3),
    }


async def main_async(settings: Settings, _: argparse.Namespace) -> harness.Figures:
    extra = {
        "tools": ["--tools-module", "bench.sleep_plugin:nap"],
        "inference": ["--max-running", str(max(32, settings.sessions)), "--max-waiting", "256"],
        "gateway": ["--max-streams", str(max(64, 2 * settings.sessions))],
    }
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    with harness.scratch() as logs:
        async with (
            harness.running_mesh(logs, extra, env=env) as mesh,
            open_channel(mesh.address("gateway")) as channel,
        ):
            return await measure(gateway_pb2_grpc.GatewayServiceStub(channel), settings)


if __name__ == "__main__":
    harness.main("agents", __doc__, main_async, QUICK, FULL)
