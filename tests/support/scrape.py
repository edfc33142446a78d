"""Prometheus scrapes for tests: GET a real /metrics page over HTTP and parse it with prometheus_client's parser;
what changed between two scrapes; and the process registry's lines, to show that metrics off record nothing."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from genmesh.metrics import process_metrics

Key = TypeVar("Key")
Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]
"""Every sample of a page by (sample name, its labels); a series' ``_created`` timestamp left out."""


def parse(text: str) -> Samples:
    """The samples of a Prometheus text page."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def scrape(url: str) -> Samples:
    """The samples served at ``url`` now (blocking: from async code use ``scrape_async``)."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        return parse(answer.read().decode())


async def scrape_async(url: str) -> Samples:
    """``scrape`` in a thread, so that the event loop serving the page (and reading its gauges) goes on."""
    return await asyncio.to_thread(scrape, url)


async def scrape_until(url: str, done: Callable[[Samples], bool], timeout_s: float = 10.0) -> Samples:
    """The first scrape of ``url`` for which ``done`` holds (gauges may be read, or change, a while later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await scrape_async(url)
        if done(samples):
            return samples
        shown = {k: v for k, v in samples.items() if k[0].startswith("genmesh_") and not k[0].endswith("_bucket")}
        assert time.monotonic() < deadline, f"not done after {timeout_s} s: {shown}"
        await asyncio.sleep(0.05)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` (0 when there is none: a series not yet created)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    """How much the sample ``name{labels}`` grew from ``before`` to ``after``."""
    return value(after, name, **labels) - value(before, name, **labels)


def changed(after: dict[Key, float], before: dict[Key, float]) -> dict[Key, float]:
    """Every sample that changed from ``before`` to ``after``, by how much it grew."""
    return {key: v - before.get(key, 0.0) for key, v in after.items() if v != before.get(key, 0.0)}


def series(samples: Samples, name: str) -> dict[Labels, float]:
    """Every sample called ``name``, by its labels."""
    return {labels: v for (sample, labels), v in samples.items() if sample == name}


def recorded(prefix: str) -> list[bytes]:
    """The lines of the process's registry (where a server with metrics on records) for the metrics named
    ``prefix...``: unchanged by traffic when metrics are off."""
    return [
        line for line in generate_latest(process_metrics().registry).splitlines() if line.startswith(prefix.encode())
    ]
