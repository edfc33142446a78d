"""Paged attention: a model reading and writing scattered cache blocks through block tables computes the
logits of a full forward pass and of Hugging Face transformers, whatever the blocks, chunks and batch."""

from __future__ import annotations

import importlib
import random

import pytest
import torch

from services.inference.models.llama import CacheStep, KVCache, LlamaConfig, LlamaForCausalLM


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.init_weights(0.2, torch.Generator().manual_seed(seed))
    return model.eval()


def full_logits(model: LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits: torch.Tensor = model(torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0))
    return logits[0]


def table(blocks: list[int], positions: int, size: int, width: int | None = None) -> list[int]:
    """The first blocks covering ``positions``, padded with block 0 to ``width``."""
    used = blocks[: -(-positions // size)]
    return used + [0] * ((width or len(used)) - len(used))


@pytest.mark.parametrize("size", [1, 4, 16])
def test_scattered_blocks_chunked_prefill_and_batched_decode_equal_a_full_forward(size: int) -> None:
    model = tiny_model()
    rng = random.Random(size)
    lengths = [23, 13, 30]
    seqs = [[rng.randrange(2, 320) for _ in range(n)] for n in lengths]
    per_seq = -(-64 // size)
    pool = list(range(len(seqs) * per_seq))
    rng.shuffle(pool)  # each sequence's blocks are scattered over the pool, interleaved with the others'
    owned = [pool[i * per_seq : (i + 1) * per_seq] for i in range(len(seqs))]
    cache = KVCache(model.config, len(pool), size, "cpu", torch.float32)
    prompt = [10, 5, 17]
    got: list[list[torch.Tensor]] = [[] for _ in seqs]
    with torch.inference_mode():
        for i, ids in enumerate(seqs):  # prefill in two chunks of different lengths
            for start, end in ((0, prompt[i] // 2), (prompt[i] // 2, prompt[i])):
                logits = model(
                    torch.tensor([ids[start:end]]),
                    torch.arange(start, end).unsqueeze(0),
                    cache,
                    tables=torch.tensor([table(owned[i], end, size)]),
                )
                got[i].append(logits[0])
        for step in range(max(n - p for n, p in zip(lengths, prompt, strict=True))):
            rows = [i for i in range(len(seqs)) if prompt[i] + step < lengths[i]]
            ends = [prompt[i] + step + 1 for i in rows]
            width = -(-max(ends) // size)
            logits = model(
                torch.tensor([[seqs[i][end - 1]] for i, end in zip(rows, ends, strict=True)]),
                torch.tensor([[end - 1] for end in ends]),
                cache,
                tables=torch.tensor([table(owned[i], end, size, width) for i, end in zip(rows, ends, strict=True)]),
            )
            for row, i in enumerate(rows):
                got[i].append(logits[row])
    for i, ids in enumerate(seqs):
        torch.testing.assert_close(torch.cat(got[i]), full_logits(model, ids), atol=1e-5, rtol=1e-4)


def test_a_prefill_on_shared_prefix_blocks_equals_a_full_forward() -> None:
    model = tiny_model(1)
    size = 4
    rng = random.Random(1)
    first = [rng.randrange(2, 320) for _ in range(14)]
    second = [*first[:8], 7, 8, 9, 10, 11]
    cache = KVCache(model.config, 16, size, "cpu", torch.float32)
    with torch.inference_mode():
        model(torch.tensor([first]), torch.arange(14).unsqueeze(0), cache, tables=torch.tensor([[3, 9, 1, 12]]))
        # the second sequence holds the first's two full blocks and computes only its own tokens
        tail = model(
            torch.tensor([second[8:]]), torch.arange(8, 13).unsqueeze(0), cache, tables=torch.tensor([[3, 9, 5, 6]])
        )
    torch.testing.assert_close(tail[0], full_logits(model, second)[8:], atol=1e-5, rtol=1e-4)


def test_paged_decoding_gives_the_logits_of_hugging_face_transformers() -> None:
    transformers = importlib.import_module("transformers")  # a dev dependency, imported for real
    model = tiny_model(2)
    theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_dict())).eval()
    missing, unexpected = theirs.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all("rotary" in name for name in missing)
    rng = random.Random(2)
    ids = [rng.randrange(2, 320) for _ in range(21)]
    cache = KVCache(model.config, 8, 4, "cpu", torch.float32)
    blocks = [6, 2, 7, 0, 4, 1]
    with torch.inference_mode():
        pieces = [
            model(torch.tensor([ids[:9]]), torch.arange(9).unsqueeze(0), cache, tables=torch.tensor([blocks[:3]]))
        ]
        for p in range(9, 21):
            tables = torch.tensor([table(blocks, p + 1, 4)])
            pieces.append(model(torch.tensor([[ids[p]]]), torch.tensor([[p]]), cache, tables=tables))
        expected = theirs(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(torch.cat(pieces, dim=1)[0], expected, atol=1e-4, rtol=1e-4)


def test_the_default_tables_give_each_row_its_own_contiguous_blocks() -> None:
    cache = tiny_model().new_cache(batch=3, max_len=20, block_size=8)
    assert (cache.num_blocks, cache.max_len, cache.capacity_tokens) == (9, 20, 72)
    assert cache.default_tables.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert cache.keys[0].shape == (2, 9, 8, 16), "[kv_heads, blocks, block_size, head_dim]"


def test_every_layer_and_pass_gathers_into_the_same_buffers_and_a_pass_under_autograd_still_runs() -> None:
    model = tiny_model(3)
    cache = model.new_cache(batch=2, max_len=32, block_size=4)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [9, 8, 7, 6, 5, 4]])
    positions = torch.arange(6).expand(2, 6)
    with torch.inference_mode():
        step = CacheStep.build(cache, positions[:, :1], cache.default_tables[:, :1])
        kv = torch.zeros(2, cache.kv_heads, 1, model.config.dim_per_head)
        gathered = [step.store(layer, kv, kv)[0].data_ptr() for layer in range(2)]
        assert gathered[0] == gathered[1] == cache.gather_buffers(1)[0].data_ptr(), "no fresh pages per layer"
        logits = model(ids, positions, cache)
    with torch.no_grad():  # buffers made in inference mode stay writable outside it
        torch.testing.assert_close(model(ids, positions, cache), logits)
    torch.testing.assert_close(model(ids, positions, cache), logits)  # autograd on: fresh gathers
