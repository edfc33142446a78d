"""The sampling controls on the shipped model through the engine: logit_bias forces and bans tokens, min_tokens
keeps EOS and stop sequences out of the first tokens, ignore_eos runs to max_tokens, presence/frequency penalties
act on output tokens only, min_p 1 is greedy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest_asyncio

from genmesh.sampling import SamplingParams
from services.inference.engine import Engine, EngineConfig, Finished, FinishReason, GenerationRequest, TokenChunk
from services.inference.models.loader import LoadedModel

PROMPT = "The with statement"
GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


@pytest_asyncio.fixture
async def engine(loaded: LoadedModel) -> AsyncIterator[Engine]:
    async with Engine(loaded, EngineConfig(max_running=4, max_waiting=4)) as eng:
        yield eng


_ids = iter(range(10**6))


async def run(engine: Engine, sampling: SamplingParams, prompt: str = PROMPT) -> tuple[list[int], str, Finished]:
    items = [item async for item in engine.generate(GenerationRequest(f"r{next(_ids)}", prompt, sampling))]
    done = items[-1]
    assert isinstance(done, Finished)
    chunks = [i for i in items if isinstance(i, TokenChunk)]
    return [t for c in chunks for t in c.token_ids], "".join(c.text for c in chunks), done


async def test_logit_bias_forces_and_bans_tokens(engine: Engine) -> None:
    plain, _, _ = await run(engine, GREEDY)
    forced, _, _ = await run(engine, replace(GREEDY, logit_bias=((777, 100.0),)))
    assert forced == [777] * GREEDY.max_tokens
    banned, _, _ = await run(engine, replace(GREEDY, logit_bias=((plain[0], -100.0),)))
    assert banned[0] != plain[0] and plain[0] not in banned


async def test_eos_forced_ends_at_once_unless_min_tokens_or_ignore_eos(engine: Engine, loaded: LoadedModel) -> None:
    eos = loaded.eos_token_ids[0]
    to_eos = replace(GREEDY, logit_bias=((eos, 100.0),))
    ids, text, done = await run(engine, to_eos)
    assert (ids, text, done.finish_reason, done.completion_tokens) == ([], "", FinishReason.STOP, 0)
    ids, _, done = await run(engine, replace(to_eos, min_tokens=5))
    assert eos not in ids and len(ids) == 5  # EOS masked for five tokens, then the bias wins
    assert (done.finish_reason, done.completion_tokens) == (FinishReason.STOP, 5)
    ids, text, done = await run(engine, replace(to_eos, ignore_eos=True))
    assert ids == [eos] * GREEDY.max_tokens and text == ""  # ordinary tokens now, whose text is empty
    assert (done.finish_reason, done.completion_tokens) == (FinishReason.LENGTH, GREEDY.max_tokens)


async def test_min_tokens_streams_early_stop_sequences_as_text(engine: Engine, loaded: LoadedModel) -> None:
    long = replace(GREEDY, max_tokens=40)
    plain_ids, plain, _ = await run(engine, long)
    assert plain.startswith("\n")  # the model's greedy answer starts with a newline
    _, text, done = await run(engine, replace(long, stop=("\n",)))
    assert (text, done.finish_reason) == ("", FinishReason.STOP_SEQUENCE)
    ids, text, done = await run(engine, replace(long, stop=("\n",), min_tokens=6))
    # the first five tokens' text goes out as is; the stop sequence is looked for from the sixth token's text on
    early = len(loaded.tokenizer.decode(plain_ids[:5]))
    assert plain[:early].count("\n") > 0 and "\n" in plain[early:]
    assert text == plain[: early + plain[early:].index("\n")] and done.finish_reason is FinishReason.STOP_SEQUENCE
    assert ids == plain_ids[: len(ids)] and len(ids) >= 6


async def test_penalties_count_output_tokens_only(engine: Engine) -> None:
    prompt = "1 + 1 ="  # greedy repeats "*x* is" over and over
    plain, _, _ = await run(engine, replace(GREEDY, max_tokens=40), prompt)
    for knob in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        penalised, _, _ = await run(engine, replace(GREEDY, max_tokens=40, **knob), prompt)  # type: ignore[arg-type]
        assert penalised[0] == plain[0]  # nothing generated yet: the prompt's tokens are not penalised
        assert penalised != plain
        assert len(set(penalised)) > len(set(plain))  # fewer repeats


async def test_min_p_one_keeps_only_the_top_token(engine: Engine) -> None:
    plain, _, _ = await run(engine, GREEDY)
    sampled, _, _ = await run(engine, SamplingParams(temperature=1.5, min_p=1.0, seed=3, max_tokens=12))
    assert sampled == plain
