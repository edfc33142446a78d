"""Constrained decoding on the shipped model, no mocks: every output of a format parses and validates."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator

import jsonschema
import pytest
import pytest_asyncio

from genmesh.errors import InvalidArgument
from genmesh.response_format import (
    JSON_OBJECT,
    FormatKind,
    ResponseFormat,
    choice_format,
    grammar_format,
    json_schema_format,
    regex_format,
)
from genmesh.sampling import SamplingParams
from services.inference.constraints import GrammarCompiler, TokenConstraint, bitmask
from services.inference.engine import Engine, EngineConfig, Finished, FinishReason, GenerationRequest, TokenChunk
from services.inference.engine.types import TokenLogprob
from services.inference.models.loader import LoadedModel

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
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "color", "tags", "home", "ok"],
    "additionalProperties": False,
}
POINTS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9}, "label": {"enum": ["a", "b"]}},
        "required": ["x", "label"],
        "additionalProperties": False,
    },
    "minItems": 1,
    "maxItems": 4,
}
DATE = r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
SUM = 'start: "(" NUM (OP NUM)* ")"\nOP: "+" | "-"\nNUM: /[1-9][0-9]{0,2}/'
SUM_SHAPE = re.compile(r"\([1-9][0-9]{0,2}([+-][1-9][0-9]{0,2})*\)")
SAMPLINGS = [SamplingParams(temperature=0.0, max_tokens=300)] + [
    SamplingParams(temperature=t, max_tokens=300, seed=s) for t in (0.7, 1.2) for s in (1, 2, 3)
]


@pytest_asyncio.fixture
async def engine(loaded: LoadedModel) -> AsyncIterator[Engine]:
    async with Engine(loaded, EngineConfig(max_running=8, max_waiting=64)) as eng:
        yield eng


async def complete(
    engine: Engine, rid: str, fmt: ResponseFormat | None, sampling: SamplingParams, prompt: str
) -> tuple[str, Finished]:
    text = ""
    done: Finished | None = None
    request = GenerationRequest(rid, prompt, sampling, response_format=fmt)
    async for item in engine.generate(request):
        if isinstance(item, TokenChunk):
            text += item.text
        else:
            done = item
    assert done is not None
    return text, done


async def outputs(engine: Engine, fmt: ResponseFormat, prompt: str = "The answer is") -> list[str]:
    """The texts of ``fmt`` under every sampling, run as one batch; each must have ended because it was complete."""
    runs = [complete(engine, f"r{i}", fmt, s, prompt) for i, s in enumerate(SAMPLINGS)]
    texts = []
    for text, done in await asyncio.gather(*runs):
        assert done.finish_reason is FinishReason.STOP, (text, done)
        texts.append(text)
    return texts


async def test_json_schema_outputs_always_validate(engine: Engine) -> None:
    for schema in (PERSON, POINTS):
        texts = await outputs(engine, json_schema_format("s", json.dumps(schema)))
        for text in texts:
            jsonschema.validate(json.loads(text), schema)
        assert len(set(texts)) > 1, "sampled outputs differ: the mask leaves the model a choice"


async def test_json_object_outputs_are_objects(engine: Engine) -> None:
    for text in await outputs(engine, JSON_OBJECT, prompt='Return JSON: {"a": 1}\n'):
        assert isinstance(json.loads(text), dict)


async def test_regex_choice_and_grammar_outputs_match(engine: Engine) -> None:
    for text in await outputs(engine, regex_format(DATE)):
        assert re.fullmatch(DATE, text), text
    choices = ["yes", "no", "not sure"]
    assert set(await outputs(engine, choice_format(choices))) <= set(choices)
    for fmt in (
        grammar_format(FormatKind.LARK, SUM),
        grammar_format(FormatKind.EBNF, 'root ::= "(" [1-9] ("+" [1-9])* ")"'),
    ):
        for text in await outputs(engine, fmt):
            assert SUM_SHAPE.fullmatch(text), text


async def test_a_constrained_and_a_free_request_share_the_batch(engine: Engine) -> None:
    greedy = SamplingParams(temperature=0.0, max_tokens=30)
    alone, _ = await complete(engine, "free", None, greedy, "The answer is")
    (dated, _), (free, _) = await asyncio.gather(
        complete(engine, "dated", regex_format(DATE), greedy, "The answer is"),
        complete(engine, "free2", None, greedy, "The answer is"),
    )
    assert re.fullmatch(DATE, dated), dated
    assert free == alone, "the free sequence is not masked by its neighbour's format"


async def test_max_tokens_cuts_a_constrained_output_with_length(engine: Engine) -> None:
    text, done = await complete(
        engine, "short", json_schema_format("s", json.dumps(PERSON)), SamplingParams(temperature=0.0, max_tokens=5), "x"
    )
    assert done.finish_reason is FinishReason.LENGTH and done.completion_tokens == 5
    assert text.startswith('{"n')
    with pytest.raises(ValueError):
        json.loads(text)


async def test_decode_masks_are_filled_on_the_worker_during_the_forward_pass(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    fill = bitmask.fill_bitmask

    def recording(constraints: list[TokenConstraint], vocab_size: int) -> object:
        threads.append(threading.current_thread().name)
        return fill(constraints, vocab_size)

    monkeypatch.setattr(bitmask, "fill_bitmask", recording)
    monkeypatch.setattr("services.inference.engine.output.fill_bitmask", recording)
    _, done = await complete(
        engine, "w", regex_format("[a-z]{12}"), SamplingParams(temperature=0.0, max_tokens=20), "x"
    )
    assert done.finish_reason is FinishReason.STOP and done.completion_tokens >= 2
    assert threads[0] == "genmesh-engine", "the first token's mask is filled after prefill"
    assert threads[1:] and all(name.startswith("genmesh-masks") for name in threads[1:]), threads


async def test_a_broken_matcher_ends_its_stream_with_an_error(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    real = GrammarCompiler.constraint

    def broken(self: GrammarCompiler, fmt: ResponseFormat | None) -> TokenConstraint | None:
        constraint = real(self, fmt)
        assert constraint is not None
        constraint.matcher.consume_token(self.tokenizer.tokenize_str("zzz")[0])  # refused: error state
        return constraint

    monkeypatch.setattr(GrammarCompiler, "constraint", broken)
    with pytest.raises(RuntimeError, match="constrained decoding failed"):
        await asyncio.wait_for(complete(engine, "b", regex_format("[0-9]+"), SamplingParams(max_tokens=9), "x"), 30)
    assert engine.load().running == 0


async def test_each_of_n_samples_gets_its_own_matcher(engine: Engine) -> None:
    request = GenerationRequest(
        "n",
        "The answer is",
        SamplingParams(temperature=1.0, max_tokens=30, seed=5, n=3),
        response_format=regex_format(DATE),
    )
    texts = ["", "", ""]
    reasons = {}
    async for item in engine.generate(request):
        if isinstance(item, TokenChunk):
            texts[item.index] += item.text
        else:
            reasons[item.index] = item.finish_reason
    assert reasons == dict.fromkeys(range(3), FinishReason.STOP)
    assert all(re.fullmatch(DATE, text) for text in texts), texts
    assert len(set(texts)) > 1


@pytest.mark.parametrize(
    ("knobs", "field"), [({"min_tokens": 3}, "sampling.min_tokens"), ({"ignore_eos": True}, "sampling.ignore_eos")]
)
def test_knobs_that_hold_eos_back_are_refused_with_a_format(knobs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        GenerationRequest("k", "x", SamplingParams(**knobs), response_format=regex_format("a"))  # type: ignore[arg-type]
    assert [v.field for v in caught.value.violations] == [field]
    GenerationRequest("k", "x", SamplingParams(**knobs))  # type: ignore[arg-type]


async def test_an_invalid_format_is_refused_before_anything_runs(engine: Engine) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await complete(engine, "bad", regex_format("(["), SamplingParams(max_tokens=3), "x")
    assert [v.field for v in caught.value.violations] == ["response_format.regex"]
    assert engine.load().running == engine.load().waiting == 0


async def test_logprobs_under_a_format_are_the_models_raw_ones(engine: Engine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=5)

    async def first_logprob(rid: str, fmt: ResponseFormat | None) -> TokenLogprob:
        items = [
            item async for item in engine.generate(GenerationRequest(rid, "The answer is", params, response_format=fmt))
        ]
        return next(lp for item in items if isinstance(item, TokenChunk) for lp in item.logprobs)

    free = await first_logprob("free", None)
    digits = await first_logprob("digits", regex_format("[0-9]+"))
    assert engine.tokenizer.decode([digits.token_id]).strip().isdigit()
    assert [i for i, _, _ in digits.top] == [i for i, _, _ in free.top], "alternatives the format masks are reported"
    assert [lp for _, _, lp in digits.top] == pytest.approx([lp for _, _, lp in free.top], abs=1e-5)
    assert digits.logprob <= free.top[0][2] + 1e-5 and digits.logprob < 0, "not renormalized over the allowed tokens"
