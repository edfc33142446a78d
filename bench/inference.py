"""Inference benchmark: genmesh's continuous-batching engine against Hugging Face transformers, same weights, same run.

One workload of requests with mixed prompt lengths and mixed max_tokens, arriving as a Poisson
process, greedy decoding, is served:

- (a) by genmesh's inference service over gRPC (a real process on a free loopback port), up to 32
  streams in flight;
- (a0) by the same engine in this process, without gRPC, to show what the transport costs;
- (b) by transformers ``generate``, one request at a time;
- (c) by transformers ``generate`` in static left-padded batches of 32, in arrival order;
- (d) by transformers' own continuous batching (``generate_batch``), when the installed version has it.

Figures: output tokens/s of each, ratios of (a) to (b) and (c), the gRPC overhead (1 - a / a0) and the
time to first token of (a) under that load (p50/p99, from when a stream sends the request). (b) runs a
subset spread evenly over the workload, in rounds; its figure is the median round's.

Then the paged KV cache's figures (bench/inference_cache.py): ``prefix_ttft_ratio`` (p50 time to first
token of gateway-laid-out prompts sharing ~400 tokens, without over with the prefix cache) and
``kv_capacity_ratio`` (peak sequences running in 4 rows' worth of cache over the 4 a row cache admitted);
and constrained decoding's (bench/structured.py): ``structured_valid_share`` and
``structured_tokens_per_s_ratio``.

    python -m bench.inference --quick     # about a minute, as CI runs it
    python -m bench.inference             # the figures of docs/BENCHMARKS.md

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import harness
from bench.inference_cache import CapacitySettings, PrefixSettings, kv_capacity, prefix_ttft
from genmesh.channels import open_channel
from genmesh.cli.launcher import free_port
from genmesh.mesh import INFERENCE
from genmesh.sampling import SamplingParams
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference.engine import Engine, EngineConfig, GenerationRequest, TokenChunk
from services.inference.models.loader import LoadedModel, load_model
from services.inference.server import DEFAULT_MODEL

STREAMS = 32


@dataclass(frozen=True, slots=True)
class Settings:
    requests: int
    sequential_requests: int
    sequential_rounds: int
    mean_gap_s: float
    prefix: PrefixSettings
    capacity: CapacitySettings


QUICK = Settings(32, 4, 3, 0.02, PrefixSettings(requests=20), CapacitySettings(requests=24))
FULL = Settings(128, 16, 3, 0.02, PrefixSettings(requests=40), CapacitySettings(requests=96))


@dataclass(frozen=True, slots=True)
class Job:
    prompt: str
    prompt_ids: list[int]
    max_tokens: int
    arrival_s: float


@dataclass(frozen=True, slots=True)
class Outcome:
    tokens: int
    seconds: float
    ttfts_ms: tuple[float, ...] = ()

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def make_workload(loaded: LoadedModel, count: int, mean_gap_s: float, seed: int = 0) -> list[Job]:
    """Prompts of 16..512 tokens (whatever fits with the answer in the context), max_tokens 16..256."""
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    corpus = loaded.tokenizer.encode(" ".join(topics.values())).ids
    context = loaded.context_length
    jobs, clock = [], 0.0
    for _ in range(count):
        max_tokens = rng.randint(16, 256)
        length = rng.randint(16, max(16, min(512, context - max_tokens - 1)))
        start = rng.randrange(len(corpus) - length)
        prompt = loaded.tokenizer.decode(corpus[start : start + length - 1])
        jobs.append(Job(prompt, loaded.encode_prompt(prompt), max_tokens, clock))
        clock += rng.expovariate(1.0 / mean_gap_s)
    return jobs


async def _arrivals(jobs: list[Job], serve: Callable[[Job, float], Awaitable[tuple[int, float]]]) -> Outcome:
    """Start each job at its arrival time on one of STREAMS streams; total tokens, makespan, and each job's
    time to first token from when its stream sent it (waiting for a free stream is not counted)."""
    gate = asyncio.Semaphore(STREAMS)
    origin = time.perf_counter()

    async def one(job: Job) -> tuple[int, float]:
        await asyncio.sleep(max(0.0, origin + job.arrival_s - time.perf_counter()))
        async with gate:
            sent = time.perf_counter()
            tokens, first = await serve(job, sent)
        return tokens, (first - sent) * 1000.0

    results = await asyncio.gather(*(one(job) for job in jobs))
    return Outcome(sum(t for t, _ in results), time.perf_counter() - origin, tuple(f for _, f in results))


async def run_in_process(loaded: LoadedModel, jobs: list[Job]) -> Outcome:
    async with Engine(loaded, EngineConfig(max_running=STREAMS, max_waiting=len(jobs))) as engine:
        count = 0

        async def serve(job: Job, arrived: float) -> tuple[int, float]:
            nonlocal count
            count += 1
            request = GenerationRequest(
                f"b{count}", job.prompt, SamplingParams(temperature=0.0, max_tokens=job.max_tokens)
            )
            tokens, first = 0, 0.0
            async for item in engine.generate(request):
                if isinstance(item, TokenChunk) and item.token_ids:
                    first = first or time.perf_counter()
                    tokens += len(item.token_ids)
            return tokens, first or time.perf_counter()

        return await _arrivals(jobs, serve)


async def run_grpc(jobs: list[Job], logs: Path) -> Outcome:
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = ["serve", "inference", "--port", str(port), "--max-running", str(STREAMS), "--max-waiting", str(len(jobs))]
    async with harness.serving(INFERENCE, args, address, logs, 120), open_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)

        async def serve(job: Job, arrived: float) -> tuple[int, float]:
            sampling = common_pb2.SamplingParams(temperature=0.0, max_tokens=job.max_tokens)
            tokens, first = 0, 0.0
            async for message in stub.Generate(inference_pb2.GenerateRequest(prompt=job.prompt, sampling=sampling)):
                if message.HasField("delta") and message.delta.token_ids:
                    first = first or time.perf_counter()
                    tokens += len(message.delta.token_ids)
            return tokens, first or time.perf_counter()

        await serve(jobs[0], time.perf_counter())  # warm up the channel and the model
        return await _arrivals(jobs, serve)


def _generated(sequences: torch.Tensor, start: int, limit: int, eos: set[int]) -> int:
    count = 0
    for token in sequences[start : start + limit].tolist():
        if token in eos:
            break
        count += 1
    return count


def spread(jobs: list[Job], count: int) -> list[Job]:
    """``count`` jobs spread evenly over ``jobs`` (a fixed choice, representative of the prompt and answer mix)."""
    step = max(1, len(jobs) // max(1, count))
    return jobs[::step][:count]


def run_hf_sequential(model: torch.nn.Module, jobs: list[Job], eos: set[int], rounds: int = 1) -> Outcome:
    """The jobs one at a time, ``rounds`` times over; the median round (a few requests alone are at the mercy of
    the machine's moment: one noisy round no longer sets the figure)."""
    outcomes = []
    for _ in range(rounds):
        start, tokens = time.perf_counter(), 0
        for job in jobs:
            ids = torch.tensor([job.prompt_ids])
            out = model.generate(  # type: ignore[operator]
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=job.max_tokens, do_sample=False
            )
            tokens += _generated(out[0], ids.shape[1], job.max_tokens, eos)
        outcomes.append(Outcome(tokens, time.perf_counter() - start))
    return sorted(outcomes, key=lambda o: o.tokens_per_s)[len(outcomes) // 2]


def run_hf_static(model: torch.nn.Module, jobs: list[Job], eos: set[int], pad: int) -> Outcome:
    """Batches of 32 in arrival order, left-padded; a batch runs until its longest request is done."""
    start, tokens = time.perf_counter(), 0
    for first in range(0, len(jobs), STREAMS):
        batch = jobs[first : first + STREAMS]
        width = max(len(j.prompt_ids) for j in batch)
        ids = torch.full((len(batch), width), pad)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, job in enumerate(batch):
            ids[row, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            mask[row, width - len(job.prompt_ids) :] = 1
        limit = max(j.max_tokens for j in batch)
        out = model.generate(ids, attention_mask=mask, max_new_tokens=limit, do_sample=False, pad_token_id=pad)  # type: ignore[operator]
        tokens += sum(_generated(out[row], width, job.max_tokens, eos) for row, job in enumerate(batch))
    return Outcome(tokens, time.perf_counter() - start)


def run_hf_continuous(model: torch.nn.Module, jobs: list[Job]) -> Outcome | str:
    """transformers' generate_batch; every request runs to the workload's largest max_tokens (one setting)."""
    if not hasattr(model, "generate_batch"):
        return "not offered by the installed transformers"
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max(j.max_tokens for j in jobs), do_sample=False)
    start = time.perf_counter()
    try:
        generate_batch = getattr(model, "generate_batch")  # noqa: B009 - absent from older transformers
        outputs = generate_batch([j.prompt_ids for j in jobs], generation_config=config, progress_bar=False)
    except Exception as error:  # an experimental API: report why it did not run
        return f"failed on this machine: {type(error).__name__}: {str(error)[:160]}"
    tokens = sum(len(o.generated_tokens) for o in outputs.values())
    return Outcome(tokens, time.perf_counter() - start)


async def structured_figures(loaded: LoadedModel, quick: bool) -> dict[str, object]:
    """Constrained decoding's figures from bench/structured.py (None each where that benchmark is absent)."""
    try:
        from bench.structured import measure_structured
    except ImportError as error:
        print(f"structured output: not measured ({error})", flush=True)
        return {"structured_valid_share": None, "structured_tokens_per_s_ratio": None}
    figures = await measure_structured(loaded, quick=quick)
    print(f"structured output: {figures}", flush=True)
    return dict(figures)


async def main_async(settings: Settings, _: argparse.Namespace) -> harness.Figures:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)  # every workload is seeded too (make_workload, bench.inference_cache): runs are alike
    loaded = load_model(DEFAULT_MODEL, device="cpu")
    jobs = make_workload(loaded, settings.requests, settings.mean_gap_s)
    eos = set(loaded.eos_token_ids)
    pad = loaded.tokenizer.token_to_id("<|pad|>") or 0
    hf = LlamaForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32).eval()
    lengths = sorted(len(j.prompt_ids) for j in jobs)
    limits = sorted(j.max_tokens for j in jobs)
    print(
        f"workload: {len(jobs)} requests, prompts {lengths[0]}..{lengths[-1]} tokens, "
        f"max_tokens {limits[0]}..{limits[-1]}, torch threads {torch.get_num_threads()}",
        flush=True,
    )

    with harness.scratch() as logs:
        grpc_run = await run_grpc(jobs, logs)
    print(f"(a)  genmesh over gRPC        {grpc_run.tokens_per_s:8.1f} tok/s", flush=True)
    in_process = await run_in_process(loaded, jobs)
    print(f"(a0) genmesh engine in-process {in_process.tokens_per_s:8.1f} tok/s", flush=True)
    with torch.inference_mode():
        subset = spread(jobs, settings.sequential_requests)
        sequential = run_hf_sequential(hf, subset, eos, settings.sequential_rounds)
        print(f"(b)  HF generate, one at a time {sequential.tokens_per_s:8.1f} tok/s", flush=True)
        static = run_hf_static(hf, jobs, eos, pad)
        print(f"(c)  HF generate, static x32   {static.tokens_per_s:8.1f} tok/s", flush=True)
        continuous = run_hf_continuous(hf, jobs)
    if isinstance(continuous, Outcome):
        print(f"(d)  HF generate_batch         {continuous.tokens_per_s:8.1f} tok/s", flush=True)
    else:
        print(f"(d)  HF generate_batch: {continuous}", flush=True)
    cache_figures = {**await prefix_ttft(loaded, settings.prefix), **await kv_capacity(loaded, settings.capacity)}
    structured = await structured_figures(loaded, settings is QUICK)

    ttfts = list(grpc_run.ttfts_ms)
    return {
        "device": "cpu",
        "requests": len(jobs),
        "tokens_per_s": round(grpc_run.tokens_per_s, 1),
        "tokens_per_s_in_process": round(in_process.tokens_per_s, 1),
        "tokens_per_s_hf_sequential": round(sequential.tokens_per_s, 1),
        "tokens_per_s_hf_static": round(static.tokens_per_s, 1),
        "tokens_per_s_hf_continuous": round(continuous.tokens_per_s, 1) if isinstance(continuous, Outcome) else None,
        "ratio_vs_sequential": round(grpc_run.tokens_per_s / sequential.tokens_per_s, 2),
        "ratio_vs_static": round(grpc_run.tokens_per_s / static.tokens_per_s, 2),
        "ratio_vs_hf_continuous": (
            round(grpc_run.tokens_per_s / continuous.tokens_per_s, 2) if isinstance(continuous, Outcome) else None
        ),
        "grpc_overhead": round(1.0 - grpc_run.tokens_per_s / in_process.tokens_per_s, 3),
        "ttft_p50_ms": round(statistics.median(ttfts), 1),
        "ttft_p99_ms": round(harness.percentile(ttfts, 0.99), 1),
        "hf_sequential_requests": len(subset),
        "hf_sequential_rounds": settings.sequential_rounds,
        **cache_figures,
        **structured,
    }


if __name__ == "__main__":
    harness.main("inference", __doc__, main_async, QUICK, FULL)
