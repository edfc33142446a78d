"""The engine's parts on their own: config checks, sequence bookkeeping and the output side."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer

from genmesh.sampling import SamplingParams
from services.inference.engine.config import EngineConfig
from services.inference.engine.output import OutputProcessor, SequenceOutput
from services.inference.engine.sequence import Sequence, SequenceStatus
from services.inference.engine.stream import Item
from services.inference.engine.types import Finished, FinishReason, GenerationRequest, TokenChunk

TOKENIZER = Path(__file__).resolve().parents[2] / "models" / "genmesh-tiny-llama" / "tokenizer.json"
EOS = 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_running": 0}, "max_running must be at least 1"),
        ({"prefill_chunk": 0}, "prefill_chunk must be at least 1"),
        ({"max_waiting": -1}, "max_waiting must not be negative"),
        ({"max_running": 8, "prefill_chunk": 16, "max_batched_tokens": 23}, "must cover a full decode batch"),
        ({"max_running": 2.0}, "max_running must be an integer"),
        ({"max_waiting": True}, "max_waiting must be an integer"),
        ({"block_size": 0}, "block_size must be at least 1"),
        ({"kv_cache_tokens": 31}, "at least two blocks"),
        ({"kv_cache_tokens": 64.0}, "kv_cache_tokens must be an integer"),
        ({"prefix_cache": 1}, "prefix_cache must be a bool"),
    ],
)
def test_engine_config_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EngineConfig(**values)


def test_engine_config_accepts_the_tightest_budget() -> None:
    assert EngineConfig(max_running=8, max_waiting=0, prefill_chunk=16, max_batched_tokens=24).max_batched_tokens == 24


def test_engine_config_sizes_the_cache_in_whole_blocks() -> None:
    assert EngineConfig(max_running=4).num_blocks(512) == 4 * 512 // 16, "default: every running sequence's context"
    assert EngineConfig(kv_cache_tokens=100, block_size=16).num_blocks(512) == 7, "rounded up to whole blocks"


def test_sequence_bookkeeping() -> None:
    seq = Sequence("r", [5, 6, 7], max_new=2)
    assert (seq.status, seq.block_table, seq.num_prompt_tokens, seq.cached_tokens) == (SequenceStatus.WAITING, [], 3, 0)
    seq.prefilled = 3
    assert seq.prompt_done and (seq.next_token, seq.next_position) == (7, 2)
    seq.append_token(9)
    assert seq.token_ids == [5, 6, 7, 9] and seq.prompt_ids == [5, 6, 7]
    assert (seq.num_generated, seq.cached_tokens, seq.next_position, seq.at_max_tokens) == (1, 3, 3, False)
    seq.append_token(10)
    assert (seq.cached_tokens, seq.at_max_tokens) == (4, True)
    assert seq != Sequence("r", [5, 6, 7], max_new=2), "sequences compare by identity"
    with pytest.raises(ValueError, match="at least one token"):
        Sequence("empty", [], 4)
    with pytest.raises(ValueError, match="max_new"):
        Sequence("none", [1], 0)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(TOKENIZER))


def add_output(
    outputs: OutputProcessor, tokenizer: Tokenizer, sampling: SamplingParams, max_new: int = 8
) -> tuple[Sequence, list[Item]]:
    items: list[Item] = []
    seq = Sequence(f"r{len(outputs)}", [0, 300, 301], max_new)
    request = GenerationRequest(seq.request_id, "unused", sampling)
    outputs.add(seq, SequenceOutput(request, seq.prompt_ids, tokenizer, frozenset({EOS}), items.append))
    return seq, items


def peaked(*tokens: int, vocab: int = 4096) -> torch.Tensor:
    """Logits [len(tokens), vocab] whose row i peaks sharply at ``tokens[i]``."""
    logits = torch.zeros(len(tokens), vocab)
    for row, token in enumerate(tokens):
        logits[row, token] = 50.0
    return logits


def test_each_sequence_gets_the_token_of_its_own_row(tokenizer: Tokenizer) -> None:
    outputs = OutputProcessor()
    plain, plain_items = add_output(outputs, tokenizer, SamplingParams(temperature=0.0))
    seeded, _ = add_output(outputs, tokenizer, SamplingParams(temperature=0.7, seed=3))
    penalised, _ = add_output(outputs, tokenizer, SamplingParams(temperature=0.0, repetition_penalty=1.2))
    later, _ = add_output(outputs, tokenizer, SamplingParams(temperature=0.0))
    ended = outputs.process([plain, seeded, penalised, later], peaked(400, 401, 402, 403))
    assert ended == []
    assert [s.token_ids[-1] for s in (plain, seeded, penalised, later)] == [400, 401, 402, 403]
    assert all(s.num_generated == 1 for s in (plain, seeded, penalised, later))
    assert [i for item in plain_items if isinstance(item, TokenChunk) for i in item.token_ids] == [400]


def test_eos_ends_with_stop_unstreamed_and_uncounted(tokenizer: Tokenizer) -> None:
    outputs = OutputProcessor()
    seq, items = add_output(outputs, tokenizer, SamplingParams(temperature=0.0))
    outputs.mark_started([seq], time.monotonic() + 10.0)  # queue time shows it was recorded
    assert outputs.process([seq], peaked(400)) == []
    assert outputs.process([seq], peaked(EOS)) == [(seq, FinishReason.STOP)]
    seq.status, seq.finish_reason = SequenceStatus.FINISHED, FinishReason.STOP
    outputs.finish([seq])
    chunks = [item for item in items if isinstance(item, TokenChunk)]
    assert [i for c in chunks for i in c.token_ids] == [400]
    done = items[-1]
    assert isinstance(done, Finished) and len(outputs) == 0
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == (FinishReason.STOP, 3, 1)
    assert 0.0 <= done.ttft_ms <= done.total_ms < 10_000.0 <= done.queue_ms
    outputs.finish([seq])  # forgotten: nothing more is sent
    assert items[-1] is done and len(items) == len(chunks) + 1


def test_the_last_allowed_token_ends_with_length(tokenizer: Tokenizer) -> None:
    outputs = OutputProcessor()
    seq, _ = add_output(outputs, tokenizer, SamplingParams(temperature=0.0), max_new=2)
    assert outputs.process([seq], peaked(400)) == []
    assert outputs.process([seq], peaked(401)) == [(seq, FinishReason.LENGTH)]


def test_a_failed_sequence_gets_its_error_and_no_finished(tokenizer: Tokenizer) -> None:
    outputs = OutputProcessor()
    seq, items = add_output(outputs, tokenizer, SamplingParams(temperature=0.0))
    seq.status, seq.error = SequenceStatus.FINISHED, RuntimeError("device lost")
    outputs.finish([seq])
    assert items == [seq.error]
