"""KV-cache block allocator: reference counts, prefix-cache keys, and an LRU of cached blocks nobody holds.

A block is in one of three states: held (refcount > 0, listed in some sequence's block table), cached
(refcount 0 but holding a full block registered under its prefix key, kept in an LRU in case a later
prompt shares the prefix), or empty. ``allocate`` takes an empty block first, else evicts the least
recently freed cached one (dropping its key). Only the engine thread calls in, except for the counts.
"""

from __future__ import annotations

from collections import OrderedDict


class BlockAllocator:
    """Hands out ``num_blocks`` block ids; with ``prefix_cache`` off no key is ever registered."""

    def __init__(self, num_blocks: int, prefix_cache: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.prefix_cache = prefix_cache
        self._refs = [0] * num_blocks
        self._keys: list[bytes | None] = [None] * num_blocks
        self._by_key: dict[bytes, int] = {}
        self._empty = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first
        self._cached: OrderedDict[int, None] = OrderedDict()  # refcount 0, keyed; oldest first

    @property
    def free(self) -> int:
        """Blocks ``allocate`` can hand out now (empty or cached-but-unheld)."""
        return len(self._empty) + len(self._cached)

    @property
    def used(self) -> int:
        """Blocks held by at least one sequence."""
        return self.num_blocks - self.free

    @property
    def cached(self) -> int:
        """Unheld blocks kept for their prefix key."""
        return len(self._cached)

    def refcount(self, block: int) -> int:
        """How many sequences hold ``block``."""
        return self._refs[block]

    def allocate(self) -> int:
        """A block for one holder; RuntimeError when none is free (check ``free`` first)."""
        if self._empty:
            block = self._empty.pop()
        elif self._cached:
            block, _ = self._cached.popitem(last=False)
            key = self._keys[block]
            self._keys[block] = None
            if key is not None:
                del self._by_key[key]
        else:
            raise RuntimeError("no free KV cache block; check free first")
        self._refs[block] = 1
        return block

    def lookup(self, key: bytes) -> int | None:
        """The block cached under ``key``, if any (held or not)."""
        return self._by_key.get(key)

    def share(self, block: int) -> None:
        """Hold a cached block once more (taking it off the LRU when nobody held it)."""
        if self._keys[block] is None:
            raise ValueError(f"block {block} holds no prefix key and cannot be shared")
        if self._refs[block] == 0:
            del self._cached[block]
        self._refs[block] += 1

    def register(self, block: int, key: bytes) -> bool:
        """Record that held ``block`` is full and holds the prefix named ``key``; False when the key is already
        cached in another block (this one then stays private) or prefix caching is off."""
        if not self.prefix_cache or key in self._by_key or self._keys[block] is not None:
            return False
        if self._refs[block] < 1:
            raise ValueError(f"block {block} is not held")
        self._keys[block] = key
        self._by_key[key] = block
        return True

    def release(self, block: int) -> None:
        """Drop one hold; at zero a keyed block joins the LRU's recent end, an unkeyed one is empty again."""
        if self._refs[block] < 1:
            raise ValueError(f"block {block} is not held")
        self._refs[block] -= 1
        if self._refs[block] == 0:
            if self._keys[block] is not None:
                self._cached[block] = None
            else:
                self._empty.append(block)
