"""The bounds of an Embed request, checked alike by the gateway (before a key pays for it) and by retrieval."""

from __future__ import annotations

from collections.abc import Sequence

from genmesh.errors import FieldViolation

MAX_INPUTS = 256
MAX_INPUT_CHARS = 8192
"""256 inputs of 8192 characters are at most 8 MiB of UTF-8: within the 16 MiB message limit."""


def embed_violations(inputs: Sequence[str], dimensions: int | None, dim: int) -> list[FieldViolation]:
    """What is wrong with an Embed request's ``inputs`` and ``dimensions`` for an embedder of ``dim`` dimensions
    (the model's own length is the only one: its vectors cannot be shortened)."""
    bad: list[FieldViolation] = []
    if not inputs:
        bad.append(FieldViolation("inputs", "must hold at least one text"))
    elif len(inputs) > MAX_INPUTS:
        bad.append(FieldViolation("inputs", f"at most {MAX_INPUTS} texts, got {len(inputs)}"))
    else:
        for i, text in enumerate(inputs):
            if not text:
                bad.append(FieldViolation(f"inputs[{i}]", "must not be empty"))
            elif len(text) > MAX_INPUT_CHARS:
                bad.append(FieldViolation(f"inputs[{i}]", f"at most {MAX_INPUT_CHARS} characters, got {len(text)}"))
    if dimensions is not None and dimensions != dim:
        what = "must be positive" if dimensions < 1 else "is not supported"
        bad.append(FieldViolation("dimensions", f"{what}: this model's vectors have {dim} dimensions (leave it unset)"))
    return bad
