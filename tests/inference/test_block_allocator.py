"""The KV-cache block allocator and the prefix-cache hash chain, on their own."""

from __future__ import annotations

import hashlib
from array import array

import pytest

from services.inference.engine.block_allocator import BlockAllocator
from services.inference.engine.prefix_cache import ROOT, block_key, prefix_keys


def test_blocks_are_handed_out_low_first_and_counted() -> None:
    alloc = BlockAllocator(3)
    assert [alloc.allocate() for _ in range(3)] == [0, 1, 2]
    assert (alloc.free, alloc.used, alloc.refcount(1)) == (0, 3, 1)
    with pytest.raises(RuntimeError, match="no free KV cache block"):
        alloc.allocate()
    alloc.release(1)
    assert (alloc.free, alloc.used, alloc.refcount(1)) == (1, 2, 0)
    with pytest.raises(ValueError, match="not held"):
        alloc.release(1)
    assert alloc.allocate() == 1


def test_a_registered_block_is_shared_by_refcount_and_cached_when_released() -> None:
    alloc = BlockAllocator(4)
    block = alloc.allocate()
    assert alloc.register(block, b"k1") and alloc.lookup(b"k1") == block
    assert not alloc.register(alloc.allocate(), b"k1"), "a key is cached once; the duplicate stays private"
    alloc.share(block)
    assert alloc.refcount(block) == 2
    alloc.release(block)
    alloc.release(block)
    assert (alloc.refcount(block), alloc.cached, alloc.free, alloc.lookup(b"k1")) == (0, 1, 3, block)
    alloc.share(block)  # a later prompt with the prefix takes it off the LRU
    assert (alloc.refcount(block), alloc.cached, alloc.free) == (1, 0, 2)
    with pytest.raises(ValueError, match="no prefix key"):
        alloc.share(3)


def test_cached_blocks_are_evicted_only_when_no_empty_block_is_left_least_recently_freed_first() -> None:
    alloc = BlockAllocator(3)
    blocks = [alloc.allocate() for _ in range(3)]
    for block, key in zip(blocks, (b"a", b"b", b"c"), strict=True):
        alloc.register(block, key)
    alloc.release(blocks[1])  # freed first: evicted first
    alloc.release(blocks[0])
    alloc.release(blocks[2])
    alloc.share(blocks[0])  # touched again: no longer evictable
    alloc.release(blocks[0])  # back at the recent end of the LRU
    assert alloc.allocate() == blocks[1] and alloc.lookup(b"b") is None
    assert alloc.allocate() == blocks[2] and alloc.lookup(b"c") is None
    assert alloc.lookup(b"a") == blocks[0]


def test_an_unregistered_block_is_reused_before_any_cached_one() -> None:
    alloc = BlockAllocator(2)
    kept, plain = alloc.allocate(), alloc.allocate()
    alloc.register(kept, b"k")
    alloc.release(kept)
    alloc.release(plain)
    assert alloc.allocate() == plain and alloc.lookup(b"k") == kept


def test_with_the_prefix_cache_off_nothing_is_registered() -> None:
    alloc = BlockAllocator(2, prefix_cache=False)
    block = alloc.allocate()
    assert not alloc.register(block, b"k") and alloc.lookup(b"k") is None
    alloc.release(block)
    assert alloc.cached == 0


def test_block_keys_chain_the_whole_prefix_with_a_cryptographic_hash() -> None:
    first = block_key(ROOT, [1, 2, 3, 4])
    expected = hashlib.blake2b(b"", digest_size=16)
    expected.update(array("q", [1, 2, 3, 4]).tobytes())
    assert first == expected.digest()
    assert block_key(first, [5, 6, 7, 8]) != block_key(ROOT, [5, 6, 7, 8]), "a key depends on its parent"
    assert prefix_keys([1, 2, 3, 4, 5, 6, 7, 8, 9], 4) == [first, block_key(first, [5, 6, 7, 8])]
    assert prefix_keys([1, 2, 3], 4) == [], "a partial block has no key"
    # ids wider than a byte, or than 32 bits, are not folded onto one another
    assert block_key(ROOT, [256]) != block_key(ROOT, [0]) and block_key(ROOT, [2**32]) != block_key(ROOT, [0])


def test_python_hash_collisions_do_not_collide_block_keys() -> None:
    # hash(-1) == hash(-2) in CPython: a tuple hash chain would give these two prefixes the same key
    assert hash((-1,)) == hash((-2,))
    assert block_key(ROOT, [-1]) != block_key(ROOT, [-2])
