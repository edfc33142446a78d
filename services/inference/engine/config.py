"""The engine's knobs, checked when they are built."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Knobs of the engine; a bad value raises ValueError at construction.

    - ``max_running``: sequences generating at once (the KV cache holds one row per sequence);
    - ``max_waiting``: admitted requests waiting for a row; past it, RESOURCE_EXHAUSTED;
    - ``max_batched_tokens``: tokens one step may feed (one per decoding sequence plus prefill chunks);
    - ``prefill_chunk``: most prompt tokens fed for one sequence in one step. Chunk boundaries do not
      depend on load, so a request computes the same numbers alone or in a batch.
    """

    max_running: int = 32
    max_waiting: int = 64
    max_batched_tokens: int = 2048
    prefill_chunk: int = 256

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{spec.name} must be an integer, got {value!r}")
        for name in ("max_running", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must not be negative, got {self.max_waiting}")
        if self.max_batched_tokens < self.max_running + self.prefill_chunk:
            raise ValueError(
                f"max_batched_tokens ({self.max_batched_tokens}) must cover a full decode batch plus one prefill "
                f"chunk ({self.max_running} + {self.prefill_chunk})"
            )
