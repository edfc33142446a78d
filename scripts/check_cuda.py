"""Check the inference engine's CUDA path and measure it: run on a GPU machine, record the figures.

    python scripts/check_cuda.py                 # CUDA (bf16 where supported); the CPU, saying so, without a GPU
    python scripts/check_cuda.py --device cpu    # the same checks on the CPU, for comparison
    python scripts/check_cuda.py --device cuda   # fails without a GPU

Checks, against the float32 CPU reference (within bf16 tolerance on CUDA):

- the model loads on the device in the dtype the loader picks and its logits agree with the reference's;
- the paged cache: logits of a prompt of several blocks fed through a paged cache whose blocks are handed out
  out of order (chunks, then one token at a time) agree with the reference's full pass, and so do the raw
  logprobs the engine reports for its greedy tokens;
- every greedy token the engine decodes is an argmax of the reference (teacher-forced), and greedy outputs of a
  batch equal those of the requests run alone;
- the prefix cache: prompts sharing a ~300-token prefix give the same greedy tokens with the prefix cache on and
  off (alone and in a batch), and the cache serves their shared blocks;
- decode rows (off by default on CUDA): a batch's greedy tokens are the same with them on and off;

then measures engine tokens/s at 1 and 32 concurrent requests, and of 32 shared-prefix requests with the prefix
cache (hits) and without, and at 32 with decode rows and with the block gather. Without a CUDA device (and no
``--device``) the same checks run on the CPU in float32 and the output says the CUDA path was not checked. The last
line is one JSON object of the figures; the exit status is 1 when a check failed (``failed_checks`` names them), 0
otherwise. tests/inference/test_cuda.py (``pytest -m gpu``) makes the first comparisons.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from genmesh.sampling import SamplingParams
from services.inference.engine import Engine, EngineConfig, Finished, GenerationRequest, TokenChunk
from services.inference.models.loader import LoadedModel, load_model
from services.inference.server import DEFAULT_MODEL

PROMPTS = ["The with statement", "A generator function", "The import system", "Class definitions"]
MIN_ARGMAX_AGREEMENT = 0.9
BLOCK_SIZE = 16
SHARED_PREFIX_TOKENS = 300


def tolerance(dtype: torch.dtype) -> float:
    """How far (in logits) the device's answer may be from the float32 CPU reference's."""
    return 1e-3 if dtype == torch.float32 else 0.5


def reference_logits(reference: LoadedModel, ids: list[int]) -> torch.Tensor:
    """The float32 CPU logits [len(ids), vocab] of one full forward pass, no cache."""
    with torch.inference_mode():
        logits: torch.Tensor = reference.model(torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0))
    return logits[0].float()


def worst_shortfall(reference: LoadedModel, prompt: str, generated: list[int]) -> float:
    """How far below the reference's best logit the worst of ``generated`` is, teacher-forced along them."""
    prompt_ids = reference.encode_prompt(prompt)
    logits = reference_logits(reference, prompt_ids + generated)[len(prompt_ids) - 1 : -1]
    chosen = logits.gather(1, torch.tensor(generated).unsqueeze(1)).squeeze(1)
    return float((logits.max(dim=-1).values - chosen).max()) if generated else 0.0


def shared_prefix_prompts(loaded: LoadedModel, count: int) -> list[str]:
    """``count`` prompts: the same ~SHARED_PREFIX_TOKENS-token text (several cache blocks), then a short question
    of their own."""
    from pydoc_data.topics import topics

    text = " ".join(topics.values())
    prefix = loaded.tokenizer.decode(loaded.tokenizer.encode(text).ids[1000 : 1000 + SHARED_PREFIX_TOKENS])
    return [f"{prefix}\n\nQuestion {i}: what is {PROMPTS[i % len(PROMPTS)].lower()}?\nAnswer:" for i in range(count)]


def paged_logits(loaded: LoadedModel, ids: list[int], chunk: int, decode_from: int) -> torch.Tensor:
    """Logits [len(ids), vocab] of ``ids`` fed through a paged cache whose blocks are handed out in shuffled
    order: ``ids[:decode_from]`` in chunks of ``chunk`` (the last one ragged), the rest one token per pass."""
    model, device = loaded.model, loaded.device
    blocks = -(-len(ids) // BLOCK_SIZE)
    cache = model.new_paged_cache(2 * blocks + 1, BLOCK_SIZE)
    order = torch.randperm(2 * blocks + 1, generator=torch.Generator().manual_seed(0))[:blocks]
    tables = order.unsqueeze(0).to(device)
    starts = [*range(0, decode_from, chunk), *range(decode_from, len(ids))]
    ends = [*starts[1:], len(ids)]
    pieces = []
    with torch.inference_mode():
        for start, end in zip(starts, ends, strict=True):
            piece = torch.tensor([ids[start:end]], device=device)
            positions = torch.arange(start, end, device=device).unsqueeze(0)
            pieces.append(model(piece, positions, cache, tables=tables)[0].float().cpu())
    return torch.cat(pieces)


async def _generate(engine: Engine, request: GenerationRequest) -> tuple[list[int], list[float], int]:
    """The generated ids, their raw logprobs (when asked for) and the prompt tokens the prefix cache served."""
    ids: list[int] = []
    logprobs: list[float] = []
    cached = 0
    async for item in engine.generate(request):
        if isinstance(item, TokenChunk):
            ids.extend(item.token_ids)
            logprobs.extend(lp.logprob for lp in item.logprobs)
        elif isinstance(item, Finished):
            cached = item.cached_tokens
    return ids, logprobs, cached


async def _tokens(engine: Engine, request_id: str, prompt: str, params: SamplingParams) -> list[int]:
    return (await _generate(engine, GenerationRequest(request_id, prompt, params)))[0]


async def _throughput(engine: Engine, prompts: list[str], tag: str, max_tokens: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    start = time.perf_counter()
    outputs = await asyncio.gather(*(_tokens(engine, f"{tag}-{i}", p, params) for i, p in enumerate(prompts)))
    return sum(len(o) for o in outputs) / (time.perf_counter() - start)


@dataclass(frozen=True, slots=True)
class EngineFigures:
    together: list[list[int]]
    alone: list[list[int]]
    long_tokens: int
    shortfall: float
    logprob_diff: float
    tokens_per_s_c1: float
    tokens_per_s_c32: float


@dataclass(frozen=True, slots=True)
class PrefixFigures:
    equal: bool
    cached_per_hit: int
    cached_when_off: int
    tokens_per_s_hits: float
    tokens_per_s_off: float


async def check_engine(loaded: LoadedModel, reference: LoadedModel, max_tokens: int) -> EngineFigures:
    """The engine's greedy tokens and logprobs against the reference; batch against alone; its tokens/s."""
    greedy = SamplingParams(temperature=0.0, max_tokens=32, logprobs=1)
    long_prompt = shared_prefix_prompts(loaded, 1)[0]
    async with Engine(loaded, EngineConfig(max_running=32, block_size=BLOCK_SIZE)) as engine:
        alone = [await _tokens(engine, f"a{i}", p, greedy) for i, p in enumerate(PROMPTS)]
        together = await asyncio.gather(*(_tokens(engine, f"b{i}", p, greedy) for i, p in enumerate(PROMPTS)))
        long_ids, long_logprobs, _ = await _generate(engine, GenerationRequest("long", long_prompt, greedy))
        await _throughput(engine, PROMPTS, "warm", 8)
        c1 = await _throughput(engine, PROMPTS[:1], "c1", max_tokens)
        c32 = await _throughput(engine, [PROMPTS[i % 4] for i in range(32)], "c32", max_tokens)
    prompt_ids = reference.encode_prompt(long_prompt)
    raw = torch.log_softmax(reference_logits(reference, prompt_ids + long_ids)[len(prompt_ids) - 1 : -1], dim=-1)
    want = raw.gather(1, torch.tensor(long_ids).unsqueeze(1)).squeeze(1)
    logprob_diff = float((torch.tensor(long_logprobs) - want).abs().max()) if long_ids else float("inf")
    shortfall = max(
        worst_shortfall(reference, p, out)
        for p, out in zip([*PROMPTS, long_prompt], [*together, long_ids], strict=True)
    )
    return EngineFigures(list(together), alone, len(long_ids), shortfall, logprob_diff, c1, c32)


async def check_prefix_cache(loaded: LoadedModel, max_tokens: int) -> PrefixFigures:
    """Greedy tokens with the prefix cache on and off (alone, then a batch); tokens/s with hits and without."""
    prompts = shared_prefix_prompts(loaded, 8)
    greedy = SamplingParams(temperature=0.0, max_tokens=32)
    results: dict[bool, list[list[int]]] = {}
    cached: dict[bool, int] = {}
    rates: dict[bool, float] = {}
    for on in (True, False):
        config = EngineConfig(max_running=32, block_size=BLOCK_SIZE, prefix_cache=on)
        async with Engine(loaded, config) as engine:
            first = await _generate(engine, GenerationRequest(f"{on}-first", prompts[0], greedy))
            rest = await asyncio.gather(
                *(_generate(engine, GenerationRequest(f"{on}-{i}", p, greedy)) for i, p in enumerate(prompts[1:]))
            )
            results[on] = [first[0], *(r[0] for r in rest)]
            cached[on] = sum(r[2] for r in rest)
            await _throughput(engine, shared_prefix_prompts(loaded, 4), f"{on}-warm", 4)
            rates[on] = await _throughput(engine, shared_prefix_prompts(loaded, 32), f"{on}-rate", max_tokens // 4)
    hits = len(prompts) - 1
    return PrefixFigures(
        results[True] == results[False], cached[True] // hits, cached[False], rates[True], rates[False]
    )


async def check_decode_rows(loaded: LoadedModel, max_tokens: int) -> tuple[bool, float, float]:
    """Greedy tokens of a batch with decode rows on and off (auto leaves them off on CUDA), and each one's tokens/s
    at 32 streams."""
    greedy = SamplingParams(temperature=0.0, max_tokens=32)
    outputs: dict[bool, list[list[int]]] = {}
    rates: dict[bool, float] = {}
    for rows in (True, False):
        config = EngineConfig(max_running=32, block_size=BLOCK_SIZE, decode_rows=rows)
        async with Engine(loaded, config) as engine:
            outputs[rows] = list(
                await asyncio.gather(*(_tokens(engine, f"{rows}-{i}", p, greedy) for i, p in enumerate(PROMPTS)))
            )
            await _throughput(engine, PROMPTS, f"{rows}-warm", 8)
            rates[rows] = await _throughput(engine, [PROMPTS[i % 4] for i in range(32)], f"{rows}-c32", max_tokens)
    return outputs[True] == outputs[False], rates[True], rates[False]


async def check(model_dir: Path, device: str, max_tokens: int) -> dict[str, object]:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu (or no --device) or on a GPU machine")
    loaded = load_model(model_dir, device=device)
    reference = load_model(model_dir, device="cpu", dtype=torch.float32)
    ids = torch.tensor([loaded.encode_prompt(PROMPTS[0])])
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    with torch.inference_mode():
        got = loaded.model(ids.to(loaded.device), positions.to(loaded.device)).float().cpu()
        want = reference.model(ids, positions)
    max_abs_diff = float((got - want).abs().max())
    same_argmax = float((got.argmax(-1) == want.argmax(-1)).float().mean())

    long_ids = loaded.encode_prompt(shared_prefix_prompts(loaded, 1)[0])
    paged = paged_logits(loaded, long_ids, chunk=100, decode_from=len(long_ids) - 24)
    full = reference_logits(reference, long_ids)
    paged_diff = float((paged - full).abs().max())
    paged_argmax = float((paged.argmax(-1) == full.argmax(-1)).float().mean())

    engine = await check_engine(loaded, reference, max_tokens)
    prefix = await check_prefix_cache(loaded, max_tokens)
    rows_equal, rows_rate, gather_rate = await check_decode_rows(loaded, max_tokens)
    tol = tolerance(loaded.dtype)
    checks = {
        "logits_within_tolerance": max_abs_diff <= tol,
        "argmax_agreement": same_argmax >= MIN_ARGMAX_AGREEMENT,
        "paged_logits_within_tolerance": paged_diff <= tol and paged_argmax >= MIN_ARGMAX_AGREEMENT,
        "engine_logprobs_within_tolerance": engine.logprob_diff <= tol and engine.long_tokens == 32,
        "greedy_tokens_are_reference_argmaxes": engine.shortfall <= tol
        and all(len(out) == 32 for out in engine.together),
        "batch_equals_alone": engine.together == engine.alone,
        "prefix_cache_on_off_equal": prefix.equal,
        "prefix_cache_hits": prefix.cached_per_hit >= SHARED_PREFIX_TOKENS // 2 and prefix.cached_when_off == 0,
        "decode_rows_on_off_equal": rows_equal,
    }
    cuda = loaded.device.type == "cuda"
    return {
        "device": str(loaded.device),
        "device_name": torch.cuda.get_device_name(loaded.device) if cuda else "cpu",
        "cuda_checked": cuda,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "logits_max_abs_diff_vs_cpu_fp32": round(max_abs_diff, 5),
        "argmax_agreement_vs_cpu_fp32": round(same_argmax, 4),
        "paged_logits_max_abs_diff_vs_cpu_fp32": round(paged_diff, 5),
        "paged_argmax_agreement_vs_cpu_fp32": round(paged_argmax, 4),
        "engine_logprob_max_abs_diff_vs_cpu_fp32": round(engine.logprob_diff, 5),
        "batch_equals_alone": engine.together == engine.alone,
        "greedy_worst_shortfall_vs_cpu_fp32": round(engine.shortfall, 5),
        "tolerance": tol,
        "tokens_per_s_c1": round(engine.tokens_per_s_c1, 1),
        "tokens_per_s_c32": round(engine.tokens_per_s_c32, 1),
        "prefix_cache_on_off_equal": prefix.equal,
        "prefix_cached_tokens_per_hit": prefix.cached_per_hit,
        "tokens_per_s_prefix_hits": round(prefix.tokens_per_s_hits, 1),
        "tokens_per_s_no_prefix_cache": round(prefix.tokens_per_s_off, 1),
        "decode_rows_on_off_equal": rows_equal,
        "tokens_per_s_c32_decode_rows": round(rows_rate, 1),
        "tokens_per_s_c32_block_gather": round(gather_rate, 1),
        "failed_checks": [name for name, ok in checks.items() if not ok],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    device = args.device
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            print("no CUDA device: the CUDA checks are skipped; the same checks run on the CPU (float32)", flush=True)
    figures = asyncio.run(check(args.model, device, args.max_tokens))
    for key, value in figures.items():
        print(f"{key:40} {value}")
    print(json.dumps(figures))
    failed = figures["failed_checks"]
    if not isinstance(failed, list) or failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
