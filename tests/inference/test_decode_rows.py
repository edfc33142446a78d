"""Decode rows (``EngineConfig.decode_rows``): the decode batch read as views of rows of its own gives the same
tokens and log-probabilities as gathering each row's blocks, through joins, finishes (a row moved into a hole),
prefix sharing and preemption; a sequence decoding on is loaded from the pool once. The shipped model, on the CPU."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import torch

from genmesh.sampling import SamplingParams
from services.inference.engine import Engine, EngineConfig, Finished, GenerationRequest, TokenChunk
from services.inference.engine.decode_rows import DecodeBatchRows
from services.inference.engine.sequence import Sequence
from services.inference.models.llama import DecodeRows, LlamaConfig, LlamaForCausalLM
from services.inference.models.loader import LoadedModel

SHARED = "A context manager wraps a block with setup and teardown. "
PROMPTS = [SHARED * (1 + i % 3) + f"Question {i}: why?" for i in range(9)]


async def _answers(loaded: LoadedModel, config: EngineConfig) -> list[tuple[list[int], list[float]]]:
    """Each prompt's greedy tokens and their log-probabilities; requests join at staggered times and stop at
    different lengths, so rows empty in the middle of the batch and the last row moves into the hole."""

    async def one(i: int) -> tuple[list[int], list[float]]:
        await asyncio.sleep(0.01 * (i % 4))
        params = SamplingParams(temperature=0.0, max_tokens=6 + 5 * (i % 5), ignore_eos=True, logprobs=1)
        ids: list[int] = []
        logprobs: list[float] = []
        async for item in engine.generate(GenerationRequest(f"r{i}", PROMPTS[i], params)):
            if isinstance(item, TokenChunk):
                ids.extend(item.token_ids)
                logprobs.extend(lp.logprob for lp in item.logprobs)
            else:
                assert isinstance(item, Finished)
        return ids, logprobs

    async with Engine(loaded, config) as engine:
        return list(await asyncio.gather(*(one(i) for i in range(len(PROMPTS)))))


def _assert_same(got: list[tuple[list[int], list[float]]], want: list[tuple[list[int], list[float]]]) -> None:
    for (ids, logprobs), (want_ids, want_logprobs) in zip(got, want, strict=True):
        assert ids == want_ids
        assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(logprobs, want_logprobs, strict=True))


async def test_decode_rows_give_the_tokens_and_logprobs_of_the_block_gather(loaded: LoadedModel) -> None:
    base = EngineConfig(max_running=4, max_waiting=16, prefill_chunk=32)
    gathered = await _answers(loaded, dataclasses.replace(base, decode_rows=False))
    _assert_same(await _answers(loaded, base), gathered)


async def test_decode_rows_stay_right_under_preemption_in_a_tiny_cache(loaded: LoadedModel) -> None:
    tiny = EngineConfig(max_running=6, max_waiting=16, kv_cache_tokens=192, prefix_cache=False)
    gathered = await _answers(loaded, dataclasses.replace(tiny, decode_rows=False))
    _assert_same(await _answers(loaded, tiny), gathered)


def test_a_sequence_is_loaded_when_it_joins_or_moves_and_its_row_then_holds_its_blocks() -> None:
    config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    model = LlamaForCausalLM(config)
    pool = model.new_paged_cache(num_blocks=12, block_size=4)
    for layer in pool.keys + pool.values:
        layer.copy_(torch.arange(layer.numel(), dtype=layer.dtype).view(layer.shape))
    rows = DecodeBatchRows(DecodeRows(pool, rows=3, length=32))
    # s0 and s2 as long: when s0 leaves, the row s2 moves into last held as many positions as s2 then decodes at,
    # so only the move itself says the row must be loaded again
    seqs = [Sequence(f"s{i}", [1] * length, 4) for i, length in enumerate((6, 5, 6))]
    for seq, table in zip(seqs, ([7, 2], [0, 5], [11, 3]), strict=True):
        seq.block_table = table
    assert rows.arrange(seqs) == seqs and rows.loads == 3
    for seq in seqs:
        seq.append_token(2)
    assert rows.arrange(seqs) == seqs and rows.loads == 3, "each row took its pass's token: no reload"
    assert rows.arrange(seqs) == seqs and rows.loads == 6, "positions the rows do not hold: loaded again"
    seqs[1].append_token(2)
    seqs[2].append_token(2)
    seated = rows.arrange([seqs[1], seqs[2]])  # s0 left: s2 moves into row 0 and is loaded again
    assert [s.request_id for s in seated] == ["s2", "s1"] and rows.loads == 7
    for row, seq in enumerate(seated):
        blocks = seq.block_table[: -(-seq.next_position // 4)]
        want = pool.keys[1][:, blocks].reshape(config.kv_heads, -1, config.dim_per_head)
        torch.testing.assert_close(rows.rows.keys[1][row, :, : want.shape[1]], want)


async def test_decode_rows_are_kept_by_default_on_the_cpu_only(loaded: LoadedModel) -> None:
    assert EngineConfig().uses_decode_rows("cpu") and not EngineConfig().uses_decode_rows("cuda")
    assert EngineConfig(decode_rows=True).uses_decode_rows("cuda")
    assert not EngineConfig(decode_rows=False).uses_decode_rows("cpu")
    assert loaded.device.type == "cpu"
    async with Engine(loaded, EngineConfig(max_running=2)) as engine:
        assert engine._runner.rows is not None and engine._runner.rows.capacity == 2
