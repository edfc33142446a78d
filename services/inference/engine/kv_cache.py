"""The engine's paged KV cache: the model's block pool, the allocator, and each sequence's block table.

A sequence holds blocks of ``block_size`` positions, in position order, and grows block by block: at
admission it takes (or, with the prefix cache, shares) blocks for its prefill plus the first decode
position; afterwards ``reserve`` adds one block whenever a decode step crosses into a new one. Full
blocks are registered under their prefix key (``prefix_cache.block_key``) as soon as they are computed,
so a later prompt sharing the prefix reuses them. Which sequence runs, waits or is preempted is the
scheduler's decision. Only the engine thread calls in, except for the counts read by ``Engine.load``.
"""

from __future__ import annotations

from services.inference.engine.block_allocator import BlockAllocator
from services.inference.engine.prefix_cache import ROOT, prefix_keys
from services.inference.engine.sequence import Sequence
from services.inference.models.kv_cache import KVCache


class PagedKVCache:
    """Blocks of keys and values handed to sequences, with prefix sharing when ``prefix_cache`` is on."""

    def __init__(self, storage: KVCache, prefix_cache: bool = True) -> None:
        self.storage = storage
        self.block_size = storage.block_size
        self.allocator = BlockAllocator(storage.num_blocks, prefix_cache)
        self.prompt_tokens = 0
        """Prompt tokens of every first admission so far."""
        self.hit_tokens = 0
        """Of those, tokens found in the prefix cache."""

    @property
    def capacity_tokens(self) -> int:
        """Positions the cache holds in all."""
        return self.storage.capacity_tokens

    @property
    def prefix_cache(self) -> bool:
        """Whether cached prefixes are shared."""
        return self.allocator.prefix_cache

    @property
    def blocks_free(self) -> int:
        """Blocks that can be handed out (empty, or cached and unheld)."""
        return self.allocator.free

    @property
    def blocks_used(self) -> int:
        """Blocks held by sequences."""
        return self.allocator.used

    @property
    def hit_rate(self) -> float:
        """Prefix-cache hit tokens over prompt tokens since start (0 before any prompt)."""
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold ``tokens`` positions."""
        return -(-tokens // self.block_size)

    def allocate(self, seq: Sequence) -> bool:
        """Give ``seq`` blocks for its prefill and first decode position, sharing its longest cached prefix;
        False (nothing taken) when too few blocks are free. ``seq.prefilled`` starts past the shared prefix,
        which always leaves at least one token to compute (its logits are needed)."""
        if seq.block_table:
            raise ValueError(f"sequence {seq.request_id} already holds cache blocks")
        target = seq.prefill_target
        shared: list[int] = []
        keys: list[bytes] = []
        if self.allocator.prefix_cache:
            keys = self._prompt_keys(seq, target - 1)
            for key in keys:
                block = self.allocator.lookup(key)
                if block is None:
                    break
                shared.append(block)
        fresh_needed = self.blocks_for(target + 1) - len(shared)
        unheld_shared = sum(1 for block in shared if self.allocator.refcount(block) == 0)
        if fresh_needed + unheld_shared > self.allocator.free:
            return False
        for block in shared:
            self.allocator.share(block)
        seq.block_table = shared + [self.allocator.allocate() for _ in range(fresh_needed)]
        seq.hashed = len(shared)
        seq.prefilled = len(shared) * self.block_size
        if not seq.resuming and not seq.preemptions:
            seq.prefix_hit_tokens = seq.prefilled
            self.prompt_tokens += seq.num_prompt_tokens
            self.hit_tokens += seq.prefilled
        return True

    def _prompt_keys(self, seq: Sequence, tokens: int) -> list[bytes]:
        """The prefix keys of the full blocks of ``seq``'s first ``tokens`` tokens (for lookup and registration alike).

        Kept on the sequence (``block_keys``) and extended when more are needed: its token ids only ever grow, so
        a key once computed stays valid, and a sequence that waits for blocks step after step is hashed once.
        """
        size = self.block_size
        keys = seq.block_keys
        full = tokens // size
        if len(keys) < full:
            keys += prefix_keys(seq.token_ids[len(keys) * size : full * size], size, keys[-1] if keys else ROOT)
        return keys[:full]

    def reserve(self, seq: Sequence) -> bool:
        """Make sure ``seq`` has a block for its next decode position; False when none is free."""
        if self.blocks_for(seq.next_position + 1) <= len(seq.block_table):
            return True
        if not self.allocator.free:
            return False
        seq.block_table.append(self.allocator.allocate())
        return True

    def register_full(self, seq: Sequence) -> None:
        """Register the blocks ``seq`` has filled since the last call under their prefix keys."""
        if not self.allocator.prefix_cache:
            return
        full = seq.cached_tokens // self.block_size
        if seq.hashed < full:
            keys = self._prompt_keys(seq, full * self.block_size)
            for index in range(seq.hashed, full):
                self.allocator.register(seq.block_table[index], keys[index])
            seq.hashed = full

    def free(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks, last first so that a prefix's tail is evicted before its head."""
        for block in reversed(seq.block_table):
            self.allocator.release(block)
        seq.block_table = []
        seq.hashed = 0

    def used_tokens(self) -> int:
        """Positions in held blocks (shared blocks counted once per block, i.e. ``blocks_used * block_size``)."""
        return self.allocator.used * self.block_size
