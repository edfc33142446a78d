"""Where the shipped model (genmesh-tiny-llama, 11 MB) is: inside the installed package, where a wheel carries it
(setup.py), else in the source tree's models/. Imports nothing heavy: `genmesh serve inference` checks it before
it loads torch."""

from __future__ import annotations

from pathlib import Path

NAME = "genmesh-tiny-llama"
INSTALLED = Path(__file__).resolve().parent / "shipped" / NAME
"""The model inside an installed wheel (package data)."""
IN_TREE = Path(__file__).resolve().parents[2] / "models" / NAME
"""The model in a source checkout (and an editable install)."""


def shipped_model() -> Path:
    """The shipped model's directory: INSTALLED when it is there, else IN_TREE (which may be missing too: the caller
    checks it and says to pass --model)."""
    return INSTALLED if INSTALLED.is_dir() else IN_TREE
