"""Constrained decoding's two figures, on engines in this process (the shipped model by default).

- ``structured_valid_share``: of the constrained requests (JSON Schemas with required string/integer/enum/array/
  nested fields, a regex, a choice, a Lark grammar; temperatures 0..1, several seeds), the share that ended by
  completing their format (finish ``stop``) with an output that parses and validates (``jsonschema``). Target 1.0.
- ``structured_tokens_per_s_ratio``: generated tokens per second constrained over unconstrained. Fairly: each
  unconstrained twin gets exactly as many tokens as its constrained run generated (its ``max_tokens``, with
  ``ignore_eos``), so both runs step the same batches and only the masking differs. Target ≥ 0.7.

    python -m bench.structured --quick      # last line: one JSON object
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import jsonschema

from genmesh.response_format import (
    FormatKind,
    ResponseFormat,
    choice_format,
    grammar_format,
    json_schema_format,
    regex_format,
)
from genmesh.sampling import SamplingParams
from services.inference.engine import Engine, EngineConfig, Finished, FinishReason, GenerationRequest, TokenChunk
from services.inference.models.loader import LoadedModel, load_model

WORD = {"type": "string", "maxLength": 12}
PERSON = {
    "type": "object",
    "properties": {
        "name": WORD,
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": WORD, "maxItems": 3},
        "home": {
            "type": "object",
            "properties": {"city": WORD, "zip": {"type": "integer", "minimum": 0, "maximum": 99999}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "color", "tags", "home"],
    "additionalProperties": False,
}
ORDER = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": WORD, "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": 3,
        },
        "express": {"type": "boolean"},
    },
    "required": ["items", "express"],
    "additionalProperties": False,
}
DATE = r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
SUM = 'start: "(" NUM (OP NUM)* ")"\nOP: "+" | "-"\nNUM: /[1-9][0-9]{0,2}/'
CHOICES = ["yes", "no", "not sure"]
PROMPTS = ["The answer is", "Describe it as data:", "Here is the result:"]
MAX_TOKENS = 256


def _json_check(schema: dict[str, Any]) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        try:
            jsonschema.validate(json.loads(text), schema)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True

    return check


FORMATS: list[tuple[ResponseFormat, Callable[[str], bool]]] = [
    (json_schema_format("person", json.dumps(PERSON)), _json_check(PERSON)),
    (json_schema_format("order", json.dumps(ORDER)), _json_check(ORDER)),
    (regex_format(DATE), lambda text: re.fullmatch(DATE, text) is not None),
    (choice_format(CHOICES), lambda text: text in CHOICES),
    (
        grammar_format(FormatKind.LARK, SUM),
        lambda text: re.fullmatch(r"\([1-9][0-9]{0,2}([+-][1-9][0-9]{0,2})*\)", text) is not None,
    ),
]


@dataclass(frozen=True, slots=True)
class Run:
    text: str
    done: Finished

    @property
    def steps(self) -> int:
        """Tokens generated, an EOS that ended it included (each took a forward pass)."""
        return self.done.completion_tokens + (self.done.finish_reason is FinishReason.STOP)


async def _run(engine: Engine, request: GenerationRequest) -> Run:
    text = ""
    done: Finished | None = None
    async for item in engine.generate(request):
        if isinstance(item, TokenChunk):
            text += item.text
        else:
            done = item
    assert done is not None
    return Run(text, done)


def requests(per_format: int) -> list[tuple[GenerationRequest, Callable[[str], bool]]]:
    """``per_format`` constrained requests of each format: temperatures 0, 0.7, 1.0 in turn, a seed each."""
    made = []
    for f, (fmt, check) in enumerate(FORMATS):
        for i in range(per_format):
            sampling = SamplingParams(temperature=(0.0, 0.7, 1.0)[i % 3], max_tokens=MAX_TOKENS, seed=100 + i)
            prompt = PROMPTS[i % len(PROMPTS)]
            made.append((GenerationRequest(f"s{f}-{i}", prompt, sampling, response_format=fmt), check))
    return made


async def _timed(engine: Engine, batch: list[GenerationRequest]) -> tuple[list[Run], float]:
    start = time.perf_counter()
    runs = await asyncio.gather(*(_run(engine, r) for r in batch))
    return list(runs), time.perf_counter() - start


async def measure_structured(
    source: LoadedModel | Engine | Callable[[], Engine], quick: bool = False, per_format: int | None = None
) -> dict[str, float]:
    """The two figures (module docstring) on ``source``: a loaded model (an engine is made), an engine, or a
    factory of one. ``per_format``: requests of each format (default 6 quick, 24 otherwise)."""
    count = per_format or (6 if quick else 24)
    if isinstance(source, Engine):
        return await _measure(source, count)
    engine = (
        Engine(source, EngineConfig(max_running=16, max_waiting=512)) if isinstance(source, LoadedModel) else source()
    )
    async with engine:
        return await _measure(engine, count)


async def _measure(engine: Engine, count: int) -> dict[str, float]:
    planned = requests(count)
    await _run(engine, replace(planned[0][0], request_id="warm-up"))
    constrained, constrained_s = await _timed(engine, [r for r, _ in planned])
    valid = sum(
        run.done.finish_reason is FinishReason.STOP and check(run.text)
        for run, (_, check) in zip(constrained, planned, strict=True)
    )
    twins = [
        replace(
            r,
            request_id=f"{r.request_id}-free",
            response_format=None,
            sampling=replace(r.sampling, max_tokens=run.steps, ignore_eos=True),
        )
        for (r, _), run in zip(planned, constrained, strict=True)
    ]
    free, free_s = await _timed(engine, twins)
    constrained_rate = sum(run.steps for run in constrained) / constrained_s
    free_rate = sum(run.steps for run in free) / free_s
    return {
        "structured_valid_share": round(valid / len(planned), 4),
        "structured_tokens_per_s_ratio": round(constrained_rate / free_rate, 4),
        "structured_requests": float(len(planned)),
        "structured_tokens_per_s": round(constrained_rate, 1),
        "unconstrained_tokens_per_s": round(free_rate, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 requests per format instead of 24")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from services.inference.server import DEFAULT_MODEL

    loaded = load_model(DEFAULT_MODEL, device=args.device)
    print(json.dumps(asyncio.run(measure_structured(loaded, quick=args.quick))), flush=True)


if __name__ == "__main__":
    main()
