"""What `genmesh up` shows while the retrieval service embeds the demo corpus on its first start (a minute or more
on CPUs, before the service reports SERVING, so before GetIngestProgress can be asked): it follows the service's
log, whose "seeding the demo collection" lines count the documents and passages stored so far (logfmt or JSON)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

SEEDING = "seeding the demo collection"
SEEDED = "demo collection seeded"
_LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_log_line(line: str) -> dict[str, Any]:
    """The fields of one log line, JSON or logfmt (genmesh.logs); empty for anything else."""
    line = line.strip()
    if line.startswith("{"):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}
    fields: dict[str, Any] = {}
    for key, raw in _LOGFMT.findall(line):
        fields[key] = json.loads(raw) if raw.startswith('"') else raw
    return fields


def demo_document_count() -> int:
    """How many documents the demo corpus has (the topics of pydoc_data, one document each)."""
    from pydoc_data.topics import topics

    return len(topics)


class SeedProgress:
    """Turns the retrieval log's seeding lines into progress lines on ``out``: at most one every ``every_s``
    seconds on a pipe, and the same line rewritten in place on a terminal."""

    def __init__(self, out: TextIO, total: int, every_s: float = 5.0) -> None:
        self.out = out
        self.total = total
        self.every_s = every_s
        self.started = False
        self._last = -float("inf")
        self._tty = out.isatty()

    def line(self, fields: dict[str, Any]) -> None:
        """Show what one log line says, if it is about seeding."""
        message = fields.get("msg")
        if message == SEEDING:
            if not self.started:
                self.started = True
                self._write(f"first start: embedding the demo corpus ({self.total} documents) into the retrieval "
                            "store; later starts reuse it", end="\n")  # fmt: skip
            now = time.monotonic()
            documents = int(fields.get("documents", 0))
            if self._tty or now - self._last >= self.every_s or documents >= self.total:
                self._last = now
                chunks = int(fields.get("chunks", 0))
                text = f"  embedded {documents}/{self.total} documents" + (f", {chunks} passages" if chunks else "")
                self._write(text, end="\r" if self._tty else "\n")
        elif message == SEEDED and self.started:
            try:
                took = f" in {float(fields.get('duration_s', '')):.1f} s"
            except ValueError:
                took = ""
            self._write(f"  demo corpus embedded{took}", end="\n")

    def _write(self, text: str, end: str) -> None:
        prefix = "\r\033[K" if self._tty else ""
        self.out.write(prefix + text + end)
        self.out.flush()


async def follow_seeding(
    log_path: Path, offset: int, out: TextIO = sys.stdout, total: int | None = None, poll_s: float = 0.25
) -> None:
    """Show the demo corpus's seeding progress from ``log_path``'s lines after ``offset`` bytes, until cancelled."""
    progress = SeedProgress(out, demo_document_count() if total is None else total)
    pending = b""

    def read() -> None:
        nonlocal offset, pending
        try:
            with log_path.open("rb") as log:
                log.seek(offset)
                chunk = log.read()
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            progress.line(parse_log_line(line.decode(errors="replace")))

    try:
        while True:
            read()
            await asyncio.sleep(poll_s)
    finally:  # cancelled once the mesh is ready: show what was logged since the last look
        read()


def log_size(path: Path) -> int:
    """Where new lines of ``path`` will start: its size, 0 when it does not exist yet."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
