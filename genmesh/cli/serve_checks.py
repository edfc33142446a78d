"""Checks `genmesh serve NAME` makes before it imports and starts the service, so that a mistake a user can fix
is one line and exit status 1 before any port is bound, not a traceback after start-up."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from services.inference.shipped_model import shipped_model

MODEL_ENV = "GENMESH_INFERENCE_MODEL"
"""The environment variable behind `serve inference --model`."""

MODEL_LAYOUT = "a model directory in Hugging Face layout (config.json, tokenizer.json, *.safetensors)"
"""What --model must name."""


def given_model(argv: Sequence[str]) -> str | None:
    """The model directory `serve inference` was given: ``--model DIR`` or ``--model=DIR`` (the last wins), else
    GENMESH_INFERENCE_MODEL; None when neither (the service's default model applies)."""
    found: str | None = None
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith("--model="):
            found = arg.removeprefix("--model=")
    return found if found is not None else (os.environ.get(MODEL_ENV) or None)


def model_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as a model directory; None when it has what a model needs."""
    if not path.exists():
        return "no such directory"
    if not path.is_dir():
        return "not a directory"
    missing = [name for name in ("config.json", "tokenizer.json") if not (path / name).is_file()]
    if not any(path.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    return f"missing {', '.join(missing)}" if missing else None


def check_serve(name: str, argv: Sequence[str]) -> str | None:
    """The one-line error that stops `genmesh serve NAME argv...` before it starts; None when nothing is wrong
    (or help was asked for)."""
    if name != "inference" or "-h" in argv or "--help" in argv:
        return None
    model = given_model(argv)
    if model is None:
        shipped = shipped_model()
        problem = model_problem(shipped)
        if problem is None:
            return None
        return f"error: the shipped model {shipped}: {problem}; pass --model DIR (or set {MODEL_ENV}), {MODEL_LAYOUT}"
    problem = model_problem(Path(model))
    if problem is None:
        return None
    return f"error: --model {model}: {problem}; pass --model DIR (or set {MODEL_ENV}), {MODEL_LAYOUT}"
