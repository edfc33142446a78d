"""Check the inference engine's CUDA path and measure it: run on a GPU machine, record the figures.

    python scripts/check_cuda.py                 # CUDA (bf16 where supported); fails without a GPU
    python scripts/check_cuda.py --device cpu    # the same checks on the CPU, for comparison

Checks that the model loads on the device in the dtype the loader picks, that its logits agree with
the float32 CPU reference (within bf16 tolerance), that every greedy token the engine decodes there is an
argmax of the reference (teacher-forced, within the same tolerance) and that greedy outputs of a batch
equal those of the requests run alone; then measures engine tokens/s at 1 and 32 concurrent requests. The
last line is one JSON object of the figures; the exit status is 1 when a check failed (``failed_checks``
names them), 0 otherwise. tests/inference/test_cuda.py (``pytest -m gpu``) makes the same comparisons.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import torch

from genmesh.sampling import SamplingParams
from services.inference.engine import Engine, EngineConfig, GenerationRequest, TokenChunk
from services.inference.models.loader import LoadedModel, load_model
from services.inference.server import DEFAULT_MODEL

PROMPTS = ["The with statement", "A generator function", "The import system", "Class definitions"]
MIN_ARGMAX_AGREEMENT = 0.9


def tolerance(dtype: torch.dtype) -> float:
    """How far (in logits) the device's answer may be from the float32 CPU reference's."""
    return 1e-3 if dtype == torch.float32 else 0.5


def worst_shortfall(reference: LoadedModel, prompt: str, generated: list[int]) -> float:
    """How far below the reference's best logit the worst of ``generated`` is, teacher-forced along them."""
    prompt_ids = reference.encode_prompt(prompt)
    ids = prompt_ids + generated
    with torch.inference_mode():
        logits = reference.model(torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0))[0].float()
    logits = logits[len(prompt_ids) - 1 : -1]
    chosen = logits.gather(1, torch.tensor(generated).unsqueeze(1)).squeeze(1)
    return float((logits.max(dim=-1).values - chosen).max()) if generated else 0.0


async def _generate(engine: Engine, request: GenerationRequest) -> list[int]:
    ids: list[int] = []
    async for item in engine.generate(request):
        if isinstance(item, TokenChunk):
            ids.extend(item.token_ids)
    return ids


async def _throughput(engine: Engine, concurrency: int, max_tokens: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    start = time.perf_counter()
    outputs = await asyncio.gather(
        *(
            _generate(engine, GenerationRequest(f"t{concurrency}-{i}", PROMPTS[i % 4], params))
            for i in range(concurrency)
        )
    )
    return sum(len(o) for o in outputs) / (time.perf_counter() - start)


async def check(model_dir: Path, device: str, max_tokens: int) -> dict[str, object]:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu or on a GPU machine")
    loaded = load_model(model_dir, device=device)
    reference = load_model(model_dir, device="cpu", dtype=torch.float32)
    ids = torch.tensor([loaded.encode_prompt(PROMPTS[0])])
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    with torch.inference_mode():
        got = loaded.model(ids.to(loaded.device), positions.to(loaded.device)).float().cpu()
        want = reference.model(ids, positions)
    max_abs_diff = float((got - want).abs().max())
    same_argmax = float((got.argmax(-1) == want.argmax(-1)).float().mean())

    greedy = SamplingParams(temperature=0.0, max_tokens=32)
    async with Engine(loaded, EngineConfig(max_running=32)) as engine:
        alone = [await _generate(engine, GenerationRequest(f"a{i}", p, greedy)) for i, p in enumerate(PROMPTS)]
        together = await asyncio.gather(
            *(_generate(engine, GenerationRequest(f"b{i}", p, greedy)) for i, p in enumerate(PROMPTS))
        )
        await _throughput(engine, 4, 8)  # warm-up
        c1 = await _throughput(engine, 1, max_tokens)
        c32 = await _throughput(engine, 32, max_tokens)
    tol = tolerance(loaded.dtype)
    shortfall = max(worst_shortfall(reference, p, out) for p, out in zip(PROMPTS, together, strict=True))
    checks = {
        "logits_within_tolerance": max_abs_diff <= tol,
        "argmax_agreement": same_argmax >= MIN_ARGMAX_AGREEMENT,
        "greedy_tokens_are_reference_argmaxes": shortfall <= tol and all(len(out) == 32 for out in together),
        "batch_equals_alone": together == alone,
    }
    return {
        "device": str(loaded.device),
        "device_name": torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda" else "cpu",
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "logits_max_abs_diff_vs_cpu_fp32": round(max_abs_diff, 5),
        "argmax_agreement_vs_cpu_fp32": round(same_argmax, 4),
        "batch_equals_alone": together == alone,
        "greedy_worst_shortfall_vs_cpu_fp32": round(shortfall, 5),
        "tolerance": tol,
        "tokens_per_s_c1": round(c1, 1),
        "tokens_per_s_c32": round(c32, 1),
        "failed_checks": [name for name, ok in checks.items() if not ok],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    figures = asyncio.run(check(args.model, args.device, args.max_tokens))
    for key, value in figures.items():
        print(f"{key:34} {value}")
    print(json.dumps(figures))
    failed = figures["failed_checks"]
    if not isinstance(failed, list) or failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
