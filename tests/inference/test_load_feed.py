"""The replica's load feed: a snapshot at once, on every change, and at least every interval."""

from __future__ import annotations

import asyncio
import itertools

from google.protobuf import duration_pb2

from services.inference.engine.types import LoadStats
from services.inference.load_feed import LoadFeed, report_interval_s


def _stats(running: int = 0, waiting: int = 0) -> LoadStats:
    return LoadStats(running, waiting, kv_used_tokens=0, kv_capacity_tokens=100)


async def test_the_feed_reports_at_once_then_on_change_then_each_interval() -> None:
    feed = LoadFeed("replica-a", max_running=4, max_waiting=8)
    current = [_stats()]
    seen: list[tuple[float, LoadStats, bool]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def follow() -> None:
        async for snapshot in feed.watch(lambda: current[0], interval_s=0.5):
            seen.append((loop.time() - start, snapshot.stats, snapshot.accepting))

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    current[0] = _stats(running=3, waiting=1)
    await asyncio.sleep(1.2)
    assert not task.done()
    feed.drain()
    await asyncio.wait_for(task, 1.0)  # the stream ends once it said so: it must not hold the grace period
    assert seen[0][0] < 0.1 and seen[0][1] == _stats(), "the first snapshot comes at once"
    assert any(s == _stats(3, 1) and t < 0.45 for t, s, _ in seen), "a change is reported before the interval is up"
    assert len(seen) >= 4, "a steady load is still reported every interval"
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    assert max(gaps) < 2 * 0.5, "no gap as long as two intervals"
    assert [accepting for _, _, accepting in seen].index(False) == len(seen) - 1, "draining is the last report"


async def test_a_stream_opened_while_draining_says_so_and_ends() -> None:
    feed = LoadFeed("replica-a", max_running=4, max_waiting=8)
    feed.drain()

    async def follow() -> list[bool]:
        return [snapshot.accepting async for snapshot in feed.watch(_stats, interval_s=1.0)]

    assert await asyncio.wait_for(follow(), 2.0) == [False]


def test_the_queue_estimate_grows_with_the_backlog_and_the_mean_duration() -> None:
    feed = LoadFeed("replica-a", max_running=2, max_waiting=8)
    assert feed.snapshot(_stats(2, 4)).queue_estimate_s == 0.0, "no request has finished yet"
    feed.finished(1.0)
    assert feed.snapshot(_stats(2, 4)).queue_estimate_s == 2.0
    assert feed.snapshot(_stats(2, 0)).queue_estimate_s == 0.0
    assert feed.named_metrics(feed.snapshot(_stats()))["max_running"] == 2.0


def test_the_report_interval_defaults_to_a_second_and_is_at_least_100_ms() -> None:
    assert report_interval_s(duration_pb2.Duration(), was_set=False) == 1.0
    assert report_interval_s(duration_pb2.Duration(nanos=1_000_000), was_set=True) == 0.1
    assert report_interval_s(duration_pb2.Duration(seconds=5), was_set=True) == 5.0
    assert report_interval_s(duration_pb2.Duration(seconds=-3), was_set=True) == 0.1
    assert report_interval_s(duration_pb2.Duration(seconds=315_576_000_000), was_set=True) == 315_576_000_000
