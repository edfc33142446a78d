"""The engine's CUDA path against the float32 CPU reference: logits, and greedy tokens decoded with the KV cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from genmesh.sampling import SamplingParams
from services.inference.engine import Engine, EngineConfig, GenerationRequest, TokenChunk
from services.inference.models.loader import LoadedModel, load_model

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "genmesh-tiny-llama"
PROMPTS = ["The with statement", "A generator function", "The import system", "Class definitions"]
MAX_TOKENS = 32

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device: the CUDA path runs on a GPU machine (pytest -m gpu, or scripts/check_cuda.py)",
    ),
]


def tolerance(dtype: torch.dtype) -> float:
    """How far (in logits) a device's answer may be from the float32 CPU reference's."""
    return 1e-3 if dtype == torch.float32 else 0.5


def reference_logits(reference: LoadedModel, ids: list[int]) -> torch.Tensor:
    """The float32 CPU logits [len(ids), vocab] of a full forward pass, no cache."""
    with torch.inference_mode():
        logits: torch.Tensor = reference.model(torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0))
    return logits[0].float()


async def greedy(engine: Engine, request_id: str, prompt: str) -> list[int]:
    ids: list[int] = []
    request = GenerationRequest(request_id, prompt, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    async for item in engine.generate(request):
        if isinstance(item, TokenChunk):
            ids.extend(item.token_ids)
    return ids


@pytest.fixture(scope="module")
def reference() -> LoadedModel:
    return load_model(MODEL_DIR, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, None], ids=["float32", "loader-default"])
async def test_cuda_logits_and_greedy_tokens_match_the_cpu_reference(
    reference: LoadedModel, dtype: torch.dtype | None
) -> None:
    loaded = load_model(MODEL_DIR, device="cuda", dtype=dtype)
    assert loaded.device.type == "cuda"
    if dtype is None:
        assert loaded.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    tol = tolerance(loaded.dtype)

    prompt = reference.encode_prompt(PROMPTS[0])
    with torch.inference_mode():
        ids = torch.tensor([prompt], device=loaded.device)
        got = loaded.model(ids, torch.arange(len(prompt), device=loaded.device).unsqueeze(0))[0].float().cpu()
    want = reference_logits(reference, prompt)
    assert float((got - want).abs().max()) <= tol

    # Decoded on the device with the KV cache, in one batch: each token is the reference's argmax, up to `tol`
    # (teacher-forced along the device's own tokens, so a near-tie that went the other way does not cascade).
    async with Engine(loaded, EngineConfig(max_running=len(PROMPTS))) as engine:
        outputs = await asyncio.gather(*(greedy(engine, f"cuda-{i}", p) for i, p in enumerate(PROMPTS)))
    for prompt_text, generated in zip(PROMPTS, outputs, strict=True):
        assert len(generated) == MAX_TOKENS, "greedy here runs to max_tokens (no EOS)"
        prompt_ids = reference.encode_prompt(prompt_text)
        logits = reference_logits(reference, prompt_ids + generated)[len(prompt_ids) - 1 : -1]
        chosen = logits.gather(1, torch.tensor(generated).unsqueeze(1)).squeeze(1)
        shortfall = logits.max(dim=-1).values - chosen
        assert float(shortfall.max()) <= tol, f"{prompt_text!r}: token {int(shortfall.argmax())} is not an argmax"
