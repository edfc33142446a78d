"""One mutant: a line of a production file, its replacement, and the tests that must fail."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mutant:
    """Replace ``original`` (one whole line, stripped) in ``path`` by ``replacement``; ``tests`` must fail."""

    name: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]
