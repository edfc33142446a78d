"""`genmesh up`'s progress while the demo corpus is embedded: read from the retrieval service's log lines as
genmesh.logs writes them (logfmt or JSON), followed as the file grows, throttled on a pipe."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import pytest

from genmesh.cli.seed_progress import SEEDED, SEEDING, SeedProgress, demo_document_count, follow_seeding, parse_log_line
from genmesh.logs import JsonFormatter, LogfmtFormatter


def log_line(formatter: logging.Formatter, message: str, **fields: object) -> str:
    record = logging.LogRecord("services.retrieval.server", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(fields)
    return formatter.format(record)


@pytest.mark.parametrize("formatter", [LogfmtFormatter(), JsonFormatter()], ids=["logfmt", "json"])
def test_both_log_formats_are_read(formatter: logging.Formatter) -> None:
    fields = parse_log_line(log_line(formatter, SEEDING, documents=16, chunks=250))
    assert fields["msg"] == SEEDING and int(fields["documents"]) == 16 and int(fields["chunks"]) == 250
    assert parse_log_line("Traceback (most recent call last):") == {}
    assert parse_log_line("{not json") == {}


async def test_progress_follows_the_growing_log_until_the_corpus_is_embedded(tmp_path: Path) -> None:
    log = tmp_path / "retrieval.log"
    log.write_text(log_line(LogfmtFormatter(), "a line of an earlier start", documents=1) + "\n")
    offset = log.stat().st_size
    out = io.StringIO()
    follower = asyncio.create_task(follow_seeding(log, offset, out, total=24, poll_s=0.01))
    try:
        with log.open("a") as writer:
            for documents in (8, 16, 24):
                writer.write(log_line(LogfmtFormatter(), SEEDING, documents=documents, chunks=documents * 10) + "\n")
                writer.flush()
            writer.write(log_line(LogfmtFormatter(), SEEDED, collection="python-reference", duration_s=12.5))
            writer.flush()
            await asyncio.sleep(0.2)
            assert "demo corpus embedded" not in out.getvalue(), "a line is read only once it is whole"
            writer.write("\n")
        for _ in range(200):
            if "demo corpus embedded" in out.getvalue():
                break
            await asyncio.sleep(0.01)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    assert out.getvalue().splitlines() == [
        "first start: embedding the demo corpus (24 documents) into the retrieval store; later starts reuse it",
        "  embedded 8/24 documents, 80 passages",  # then throttled: one line every 5 s on a pipe
        "  embedded 24/24 documents, 240 passages",
        "  demo corpus embedded in 12.5 s",
    ]


def test_nothing_is_shown_when_the_store_was_seeded_before() -> None:
    out = io.StringIO()
    progress = SeedProgress(out, total=demo_document_count())
    progress.line(parse_log_line(log_line(LogfmtFormatter(), "store open", data_dir="/tmp/x")))
    progress.line(parse_log_line(log_line(LogfmtFormatter(), SEEDED, duration_s=1.0)))
    assert out.getvalue() == ""
    assert demo_document_count() > 10


async def test_lines_logged_just_before_the_mesh_was_ready_are_still_shown(tmp_path: Path) -> None:
    log = tmp_path / "retrieval.log"
    out = io.StringIO()
    follower = asyncio.create_task(follow_seeding(log, 0, out, total=8, poll_s=3600))  # one look, then a long wait
    await asyncio.sleep(0.05)
    log.write_text(
        log_line(LogfmtFormatter(), SEEDING, documents=8, chunks=0) + "\n"
        + log_line(LogfmtFormatter(), SEEDED, duration_s=2.0) + "\n"
    )  # fmt: skip
    follower.cancel()  # as when start_mesh returns
    await asyncio.gather(follower, return_exceptions=True)
    assert out.getvalue().splitlines()[1:] == ["  embedded 8/8 documents", "  demo corpus embedded in 2.0 s"]
