"""Admission details of the scheduler: a group's room in the waiting queue, gated later samples, expired waiting
sequences, and prompt keys hashed once per sequence. A tiny real paged KV cache: no model, no engine thread."""

from __future__ import annotations

from collections.abc import Sequence as Tokens

import pytest

from genmesh.errors import DeadlineExceeded, ResourceExhausted
from inference.test_scheduler import D, F, P, W, add, make_scheduler, make_seq, run_step
from services.inference.engine import kv_cache as kv_cache_module
from services.inference.engine.prefix_cache import prefix_keys
from services.inference.engine.sequence import Sequence


def group(name: str, n: int) -> list[Sequence]:
    """The ``n`` samples of one request: every later one after the first."""
    first = make_seq(name)
    return [first] + [Sequence(name, list(first.prompt_ids), 4, after=first) for _ in range(n - 1)]


def test_a_group_is_refused_when_all_of_it_would_overshoot_the_waiting_queue() -> None:
    scheduler = make_scheduler(running=2, waiting=2)
    with pytest.raises(ResourceExhausted):
        scheduler.add(group("a", 5), retry_after_s=0.5)  # 2 running places + 2 waiting: 5 do not fit
    assert scheduler.waiting_count == 0, "all or none"
    scheduler.add(group("b", 4), retry_after_s=0.5)
    assert (scheduler.load().running, scheduler.load().waiting) == (2, 2)
    with pytest.raises(ResourceExhausted):
        add(scheduler, make_seq("c"))


def test_a_group_counts_the_free_running_places_once() -> None:
    scheduler = make_scheduler(running=2, waiting=2)
    add(scheduler, make_seq("a"))  # takes one of the two free running places
    with pytest.raises(ResourceExhausted):
        scheduler.add(group("b", 4), retry_after_s=0.5)
    scheduler.add(group("c", 3), retry_after_s=0.5)
    assert (scheduler.load().running, scheduler.load().waiting) == (2, 2)


def test_a_gated_later_sample_lets_the_requests_behind_it_in_keeping_their_order() -> None:
    scheduler = make_scheduler(running=4, waiting=4, chunk=2, batched=8, blocks=16)
    first, second = group("r", 2)
    scheduler.add([first, second], retry_after_s=0.5)
    other, last = make_seq("o"), make_seq("x")
    add(scheduler, other, last)
    batch = scheduler.schedule(0.0)
    assert batch.admitted == [first, other, last], "second waits for first's prompt; the others go on, in order"
    assert second.status is W
    scheduler.postprocess([], batch.prefill)
    run_step(scheduler)  # first's last prompt chunk: it decodes, second is let in at the next step
    assert (first.status, second.status) == (D, W)
    assert scheduler.schedule(0.0).admitted == [second]


def test_a_sequence_that_does_not_fit_still_blocks_the_newer_ones() -> None:
    scheduler = make_scheduler(running=4, waiting=4, blocks=2)
    first, second = group("r", 2)
    big, small = make_seq("b", prompt=6), make_seq("s")
    scheduler.add([first, second], retry_after_s=0.5)
    add(scheduler, big, small)
    assert scheduler.schedule(0.0).admitted == [first], "big needs two blocks, one is free: small waits behind it"


def test_without_the_prefix_cache_later_samples_are_not_gated() -> None:
    scheduler = make_scheduler(running=4, waiting=4, blocks=16, prefix_cache=False)
    samples = group("r", 3)
    scheduler.add(samples, retry_after_s=0.5)
    assert scheduler.schedule(0.0).admitted == samples, "nothing to share: all at once"


@pytest.mark.parametrize("preempted", [False, True])
def test_a_waiting_sequence_past_its_deadline_ends_without_running(preempted: bool) -> None:
    scheduler = make_scheduler(running=2, waiting=2, batched=16, blocks=2, prefix_cache=False)
    a, b = make_seq("a", max_new=20), make_seq("b", max_new=20, deadline=5.0)
    add(scheduler, a, b)
    if preempted:
        for _ in range(3):  # a grows into b's block at its fifth position: b goes back to the queue
            run_step(scheduler)
    assert b.status is W and b.preemptions == (1 if preempted else 0)
    batch = scheduler.schedule(5.0)
    assert batch.finished == [b] and b not in batch.resumed + batch.admitted
    assert (b.status, b.finish_reason, b.block_table) == (F, None, []) and isinstance(b.error, DeadlineExceeded)
    assert scheduler.waiting_count == 0 and a.status in (P, D)


def test_prompt_keys_are_hashed_once_while_a_sequence_waits_for_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[int] = []

    def counting(tokens: Tokens[int], block_size: int, parent: bytes = b"") -> list[bytes]:
        hashed.append(len(tokens))
        return prefix_keys(tokens, block_size, parent)

    monkeypatch.setattr(kv_cache_module, "prefix_keys", counting)
    scheduler = make_scheduler(running=2, waiting=2, chunk=8, batched=16, blocks=4)
    a, b = make_seq("a", prompt=13), make_seq("b", prompt=13)
    add(scheduler, a, b)
    for _ in range(3):
        run_step(scheduler)  # a holds the whole cache; b cannot be admitted
    assert (a.status, b.status) == (D, W)
    assert hashed == [12, 12], "each prompt's full blocks hashed at its first try only"
    assert b.block_keys == prefix_keys(b.token_ids[:12], 4)
