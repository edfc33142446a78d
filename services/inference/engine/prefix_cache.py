"""Prefix-cache keys: a hash chain over full KV-cache blocks, as in vLLM.

A full block's key is ``blake2b(parent key || its token ids as int64 bytes)``, so a key names the
whole prefix up to the block's end, and two sequences share a block exactly when they share that prefix.
Why a chain of block keys rather than a radix tree of tokens: block granularity is what the paged
allocator shares anyway (a partial block is never shared), lookup is one dict probe per block, O(blocks),
and there is no tree to split, merge or prune: a key lives in a flat map while its block holds it.
A cryptographic hash, not Python's ``hash()`` of an int tuple: the latter is trivially collidable by a
crafted prompt, which would let one user's request read another's cached keys (vLLM CVE-2025-25183).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

ROOT = b""
"""The parent key of a sequence's first block."""


def block_key(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The key of a full block holding ``tokens`` after the prefix whose last block's key is ``parent``."""
    digest = hashlib.blake2b(parent, digest_size=16)
    ids = array("q", tokens)
    if ids.itemsize != 8:  # pragma: no cover - "q" is 8 bytes on every platform CPython supports
        raise RuntimeError("array('q') is not 64-bit here")
    digest.update(ids.tobytes())
    return digest.digest()


def prefix_keys(tokens: Sequence[int], block_size: int, parent: bytes = ROOT) -> list[bytes]:
    """The chain of keys of every full block of ``tokens`` (a partial last block has none)."""
    keys = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = block_key(parent, tokens[start : start + block_size])
        keys.append(parent)
    return keys
