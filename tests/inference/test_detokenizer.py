"""Tests of incremental detokenization (UTF-8 safe deltas) and of stop-sequence hold-back."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.tokenizers import byte_level_tokenizer
from tokenizers import Tokenizer

from services.inference.detokenizer import REPLACEMENT, IncrementalDetokenizer, StopSequenceFilter

SHIPPED_TOKENIZER = Path(__file__).resolve().parents[2] / "models" / "genmesh-tiny-llama" / "tokenizer.json"
MULTIBYTE = ["héllo — 日本語 🐍", "naïve café: 𝄞 한국어 ∑ ≠ ∞, emoji 👩‍💻🎉 and Ελληνικά", "plain ascii text"]


def small_byte_level_tokenizer() -> Tokenizer:
    return byte_level_tokenizer(["hello world, the with statement", "héllo 日本語 🐍 café"], vocab_size=300)


@pytest.fixture(scope="module", params=["shipped", "small"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    if request.param == "small":
        return small_byte_level_tokenizer()
    return Tokenizer.from_file(str(SHIPPED_TOKENIZER))


@pytest.mark.parametrize("text", MULTIBYTE)
def test_deltas_never_split_a_character_and_concatenate_to_the_full_decode(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    pieces = [tokenizer.decode([i]) for i in ids]
    if text != "plain ascii text":
        assert any(REPLACEMENT in p for p in pieces), "the test needs characters split across tokens"
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add(i) for i in ids]
    deltas.append(detok.flush())
    assert all(REPLACEMENT not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert detok.token_ids == ids


def test_every_prefix_of_the_stream_is_a_prefix_of_the_text(tokenizer: Tokenizer) -> None:
    text = " ".join(MULTIBYTE)
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    detok = IncrementalDetokenizer(tokenizer)
    emitted = ""
    for i in ids:
        emitted += detok.add(i)
        assert text.startswith(emitted)
    assert emitted + detok.flush() == text


def test_prompt_context_does_not_leak_into_the_output(tokenizer: Tokenizer) -> None:
    prompt = tokenizer.encode("The café says héllo", add_special_tokens=False).ids
    completion = tokenizer.encode(" — 日本語 🐍", add_special_tokens=False).ids
    detok = IncrementalDetokenizer(tokenizer, prompt)
    out = detok.add_many(completion) + detok.flush()
    assert out == " — 日本語 🐍"
    assert detok.token_ids == completion


def test_incomplete_character_at_the_end_is_flushed_as_replacement(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("🐍", add_special_tokens=False).ids
    if len(ids) < 2:
        pytest.skip("the emoji is a single token in this vocabulary")
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.add_many(ids[:-1]) == ""
    assert detok.flush() == tokenizer.decode(ids[:-1])
    assert REPLACEMENT in tokenizer.decode(ids[:-1])


@pytest.mark.parametrize("split", [1, 2, 3, 5])
def test_stop_sequence_across_chunk_boundaries_is_excluded(split: int) -> None:
    text = "def f():\n    return 1\n\n\nclass C:\n    pass"
    chunks = [text[i : i + split] for i in range(0, len(text), split)]
    stops = StopSequenceFilter(["\n\n\n", "never"])
    out = ""
    for chunk in chunks:
        out += stops.feed(chunk)
        if stops.stopped:
            break
    assert stops.stopped and stops.matched == "\n\n\n"
    assert out == "def f():\n    return 1"
    assert stops.feed("more") == "" and stops.flush() == ""


def test_held_back_prefix_is_released_when_the_stop_does_not_complete() -> None:
    stops = StopSequenceFilter(["END"])
    assert stops.feed("the EN") == "the "
    assert stops.feed("D") == ""
    assert stops.stopped
    stops = StopSequenceFilter(["END"])
    assert stops.feed("the EN") == "the "
    assert stops.feed("ter") == "ENter"
    assert stops.feed("E") == ""
    assert stops.flush() == "E"
    assert not stops.stopped


def test_earliest_stop_wins_and_no_stops_pass_through() -> None:
    stops = StopSequenceFilter(["b c", "a b"])
    assert stops.feed("x a b c") == "x "
    assert stops.matched == "a b"
    assert StopSequenceFilter([]).feed("anything") == "anything"
