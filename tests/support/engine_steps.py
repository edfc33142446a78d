"""Counting and holding the model's forward passes, so engine tests measure in steps rather than seconds."""

from __future__ import annotations

import threading
from types import TracebackType

import torch

HOLD_LIMIT_S = 120.0
"""Longest a held forward pass waits for ``release`` (a failed test must not hang the engine thread forever)."""


class ForwardGate:
    """A forward pre-hook on ``model``: counts the passes and, while held, blocks the engine thread before one.

    ``count`` is the number of passes begun (prefill chunks and decode batches). ``hold()`` makes the next pass
    wait until ``release()``; ``blocked`` is set while a pass waits, so a test knows the engine is frozen.
    Use it as a context manager: leaving releases the engine and removes the hook.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        self.blocked = threading.Event()
        self._open = threading.Event()
        self._open.set()
        self._handle = model.register_forward_pre_hook(self._before_forward)

    def _before_forward(self, *_: object) -> None:
        if not self._open.is_set():
            self.blocked.set()
            self._open.wait(HOLD_LIMIT_S)
            self.blocked.clear()
        self.count += 1

    def hold(self) -> None:
        """Block the engine thread before its next forward pass."""
        self._open.clear()

    def release(self) -> None:
        """Let the engine run again."""
        self._open.set()

    def __enter__(self) -> ForwardGate:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()
        self._handle.remove()
