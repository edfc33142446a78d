"""The engine's knobs, checked when they are built."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Knobs of the engine; a bad value raises ValueError at construction.

    - ``max_running``: sequences generating at once;
    - ``max_waiting``: admitted requests waiting to run; past it, RESOURCE_EXHAUSTED;
    - ``max_batched_tokens``: tokens one step may feed (one per decoding sequence plus prefill chunks);
    - ``prefill_chunk``: most prompt tokens fed for one sequence in one step. Chunk boundaries do not
      depend on load, except that with the prefix cache prefill starts at the cached prefix's block boundary:
      greedy tokens stay the same, the last bits of logits and logprobs may differ;
    - ``stream_interval_tokens`` / ``stream_interval_ms``: a stream's chunks after its first are held until
      this many tokens (when > 1) or milliseconds since its last send (when > 0); default off (``stream.Outbox``);
    - ``kv_cache_tokens``: KV-cache positions in all, rounded up to whole blocks (None: ``max_running`` times
      the context length, room for every running sequence's full context);
    - ``block_size``: positions per cache block (the unit of allocation and of prefix sharing);
    - ``prefix_cache``: reuse the cached blocks of a prompt's longest cached prefix;
    - ``decode_rows``: keep the decode batch's keys and values also in rows of the context of their own, up to
      ``max_running`` of them and never more positions than the cache (with the default cache: as much memory
      again), so that a decode step reads them as views instead of gathering every row's blocks in every
      layer; a batch larger than the rows gathers (``engine.decode_rows``). None: on when the model runs on
      the CPU, where the gather costs a fifth of a decode step and memory is plentiful; off on an accelerator,
      whose memory the rows would take from the pool's sequences.
    """

    max_running: int = 32
    max_waiting: int = 64
    max_batched_tokens: int = 2048
    prefill_chunk: int = 256
    stream_interval_tokens: int = 1
    stream_interval_ms: int = 0
    kv_cache_tokens: int | None = None
    block_size: int = 16
    prefix_cache: bool = True
    decode_rows: bool | None = None

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name in ("prefix_cache", "decode_rows"):
                if not isinstance(value, bool) and not (spec.name == "decode_rows" and value is None):
                    raise ValueError(f"{spec.name} must be a bool, got {value!r}")
            elif spec.name == "kv_cache_tokens" and value is None:
                continue
            elif isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{spec.name} must be an integer, got {value!r}")
        for name in ("max_running", "prefill_chunk", "stream_interval_tokens", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_waiting", "stream_interval_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.max_batched_tokens < self.max_running + self.prefill_chunk:
            raise ValueError(
                f"max_batched_tokens ({self.max_batched_tokens}) must cover a full decode batch plus one prefill "
                f"chunk ({self.max_running} + {self.prefill_chunk})"
            )
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < 2 * self.block_size:
            raise ValueError(f"kv_cache_tokens must hold at least two blocks, got {self.kv_cache_tokens}")

    def uses_decode_rows(self, device: str) -> bool:
        """Whether decode rows are kept for a model on a ``device`` of this type (``cpu``, ``cuda``)."""
        return self.decode_rows if self.decode_rows is not None else device == "cpu"

    def num_blocks(self, context_length: int) -> int:
        """Blocks of the KV cache for a model of ``context_length`` positions."""
        tokens = self.kv_cache_tokens if self.kv_cache_tokens is not None else self.max_running * context_length
        return -(-tokens // self.block_size)
