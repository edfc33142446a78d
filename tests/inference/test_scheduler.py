"""The scheduler's status transitions, on a tiny real KV cache: no model, no engine thread, no processes."""

from __future__ import annotations

import pytest
import torch

from genmesh.errors import DeadlineExceeded, ResourceExhausted
from services.inference.engine.config import EngineConfig
from services.inference.engine.kv_cache import SlotKVCache
from services.inference.engine.scheduler import Scheduler
from services.inference.engine.sequence import Sequence, SequenceStatus
from services.inference.engine.types import FinishReason
from services.inference.models.config import LlamaConfig
from services.inference.models.kv_cache import KVCache

W, P, D, F = SequenceStatus.WAITING, SequenceStatus.PREFILLING, SequenceStatus.DECODING, SequenceStatus.FINISHED


def make_cache(rows: int, row_length: int = 16) -> SlotKVCache:
    config = LlamaConfig(
        vocab_size=8,
        hidden_size=4,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        max_position_embeddings=row_length,
    )
    return SlotKVCache(KVCache(config, rows, row_length, "cpu", torch.float32))


def make_scheduler(running: int = 2, waiting: int = 2, chunk: int = 4, batched: int = 0, rows: int = 0) -> Scheduler:
    config = EngineConfig(running, waiting, batched or running + chunk, chunk)
    return Scheduler(config, make_cache(rows or running))


def make_seq(name: str, prompt: int = 3, max_new: int = 4, deadline: float | None = None) -> Sequence:
    return Sequence(name, list(range(1, prompt + 1)), max_new, deadline)


def add(scheduler: Scheduler, *seqs: Sequence) -> None:
    for seq in seqs:
        scheduler.add(seq, retry_after_s=0.5)


def step_prefill(scheduler: Scheduler, now: float = 0.0) -> list[Sequence]:
    """One step's scheduling and prefill, no sequence ending; the sequences it admitted."""
    batch = scheduler.schedule(now)
    scheduler.postprocess([], batch.prefill)
    return batch.admitted


def test_admission_is_oldest_first_within_max_running() -> None:
    scheduler = make_scheduler(running=2, waiting=4, rows=4)  # spare rows: max_running is the bound
    a, b, c = make_seq("a"), make_seq("b"), make_seq("c")
    add(scheduler, a, b, c)
    assert (a.status, scheduler.waiting_count, scheduler.running_count) == (W, 3, 0)
    batch = scheduler.schedule(0.0)
    assert batch.admitted == [a, b]
    assert [a.status, b.status, c.status] == [P, P, W]
    assert (a.row, b.row, c.row) == (0, 1, -1)
    assert (scheduler.running_count, scheduler.waiting_count) == (2, 1)
    assert scheduler.schedule(0.0).admitted == []
    scheduler.postprocess([(a, FinishReason.LENGTH)], [])
    assert scheduler.schedule(0.0).admitted == [c]


def test_full_waiting_queue_raises_resource_exhausted() -> None:
    scheduler = make_scheduler(running=1, waiting=1)
    a, b = make_seq("a"), make_seq("b")
    add(scheduler, a, b)  # before the first step the free row counts as room
    with pytest.raises(ResourceExhausted) as info:
        add(scheduler, make_seq("c"))
    assert info.value.retry_after_s == 0.5
    assert step_prefill(scheduler) == [a]
    with pytest.raises(ResourceExhausted):
        add(scheduler, make_seq("d"))
    assert scheduler.waiting_count == 1


def test_no_waiting_room_refuses_as_soon_as_the_rows_are_taken() -> None:
    scheduler = make_scheduler(running=1, waiting=0)
    a = make_seq("a")
    add(scheduler, a)
    with pytest.raises(ResourceExhausted):
        add(scheduler, make_seq("b"))
    step_prefill(scheduler)
    with pytest.raises(ResourceExhausted):
        add(scheduler, make_seq("c"))
    scheduler.postprocess([(a, FinishReason.STOP)])
    add(scheduler, make_seq("d"))


def test_a_scheduled_sequence_cannot_be_added_again() -> None:
    scheduler = make_scheduler()
    a = make_seq("a")
    add(scheduler, a)
    step_prefill(scheduler)
    with pytest.raises(ValueError, match="already scheduled"):
        add(scheduler, a)


def test_prompt_is_fed_in_chunks_then_the_sequence_decodes() -> None:
    scheduler = make_scheduler(running=2, chunk=4)
    a = make_seq("a", prompt=10)
    add(scheduler, a)
    plans = []
    for _ in range(3):
        batch = scheduler.schedule(0.0)
        plans.append([(c.start, c.count, c.completes) for c in batch.prefill])
        assert a.status is P and scheduler.decode_batch() == []
        scheduler.postprocess([], batch.prefill)
    assert plans == [[(0, 4, False)], [(4, 4, False)], [(8, 2, True)]]
    assert a.status is D and a.prompt_done and a.row == 0
    assert scheduler.decode_batch() == [a]
    assert scheduler.schedule(0.0).prefill == []


def test_promotion_moves_a_sequence_to_the_end_of_the_decode_block() -> None:
    scheduler = make_scheduler(running=3, chunk=4, batched=10)
    a, b, c = make_seq("a", prompt=8), make_seq("b", prompt=2), make_seq("c", prompt=2)
    add(scheduler, a, b, c)
    scheduler.cache.storage.values[0][0, :, :4] = 3.0  # a's first chunk, about to be fed into row 0
    step_prefill(scheduler)  # b and c complete and swap ahead of a, which is still prefilling
    assert [s.status for s in (a, b, c)] == [P, D, D]
    assert scheduler.decode_batch() == [b, c]
    assert [s.row for s in scheduler.decode_batch()] == [0, 1] and a.row == 2
    assert torch.all(scheduler.cache.storage.values[0][2, :, :4] == 3.0), "a's cached chunk moved with it"
    step_prefill(scheduler)
    assert scheduler.decode_batch() == [b, c, a] and a.row == 2


def test_decoding_sequences_count_against_the_prefill_budget() -> None:
    scheduler = make_scheduler(running=3, chunk=4, batched=7)
    a, b, c = make_seq("a", prompt=1), make_seq("b", prompt=8), make_seq("c", prompt=3)
    add(scheduler, a, b, c)
    first = scheduler.schedule(0.0)
    assert [(x.seq, x.count) for x in first.prefill] == [(a, 1), (b, 4)]  # c's 3 tokens exceed the 2 left
    scheduler.postprocess([], first.prefill)
    assert scheduler.decode_batch() == [a]
    second = scheduler.schedule(0.0)  # 7 - 1 decoding = 6: b's 4 fit, c's 3 do not
    assert [(x.seq, x.count) for x in second.prefill] == [(b, 4)]


def test_a_chunk_that_does_not_fit_ends_the_plan() -> None:
    scheduler = make_scheduler(running=3, chunk=4, batched=7)
    a, b, c = make_seq("a", prompt=8), make_seq("b", prompt=8), make_seq("c", prompt=1)
    add(scheduler, a, b, c)
    batch = scheduler.schedule(0.0)
    assert [x.seq for x in batch.prefill] == [a], "c fits the budget but must not overtake b"


@pytest.mark.parametrize("reason", [FinishReason.LENGTH, FinishReason.STOP, FinishReason.STOP_SEQUENCE])
def test_finishing_frees_the_row_for_the_next_waiting_sequence(reason: FinishReason) -> None:
    scheduler = make_scheduler(running=1, waiting=1)
    a, b = make_seq("a"), make_seq("b")
    add(scheduler, a, b)
    step_prefill(scheduler)
    assert a.status is D and not scheduler.cache.can_allocate()
    assert scheduler.postprocess([(a, reason)]) == [a]
    assert (a.status, a.finish_reason, a.error, a.row) == (F, reason, None, -1)
    assert scheduler.decode_batch() == [] and scheduler.running_count == 0
    assert scheduler.cache.free_rows == 1 and scheduler.cache.holder(0) is None
    assert step_prefill(scheduler) == [b] and b.row == 0
    with pytest.raises(RuntimeError, match="already finished"):
        scheduler.postprocess([(a, reason)])


def test_a_first_token_that_ends_the_sequence_skips_decoding() -> None:
    scheduler = make_scheduler(running=2)
    a = make_seq("a", prompt=2)
    add(scheduler, a)
    batch = scheduler.schedule(0.0)
    assert batch.completing == [a]
    assert scheduler.postprocess([(a, FinishReason.STOP)], batch.prefill) == [a]
    assert (a.status, a.row, a.prefilled) == (F, -1, 2)
    assert scheduler.decode_batch() == [] and scheduler.cache.free_rows == 2


def test_the_decode_block_stays_contiguous_when_a_decoder_finishes() -> None:
    scheduler = make_scheduler(running=3)
    a, b, c = make_seq("a", prompt=2), make_seq("b", prompt=2), make_seq("c", prompt=2)
    add(scheduler, a, b, c)
    step_prefill(scheduler)
    keys = scheduler.cache.storage.keys[0]
    keys[2, :, :2] = 7.0  # c's cached prompt
    scheduler.postprocess([(b, FinishReason.LENGTH)])
    assert scheduler.decode_batch() == [a, c]
    assert (a.row, c.row, b.row) == (0, 1, -1)
    assert torch.all(keys[1, :, :2] == 7.0), "c's keys moved with it"
    assert scheduler.cache.holder(2) is None and scheduler.cache.free_rows == 1


@pytest.mark.parametrize("stage", ["prefilling", "decoding"])
def test_abort_of_a_running_sequence_cancels_it_and_frees_its_row(stage: str) -> None:
    scheduler = make_scheduler(running=2)
    a, b = make_seq("a", prompt=2 if stage == "decoding" else 9), make_seq("b", prompt=2)
    add(scheduler, a, b)
    step_prefill(scheduler)
    assert a.status is (D if stage == "decoding" else P)
    assert scheduler.abort(a) and not scheduler.abort(a)
    batch = scheduler.schedule(0.0)
    assert batch.finished == [a] and batch.prefill == []
    assert (a.status, a.finish_reason, a.row) == (F, FinishReason.CANCELLED, -1)
    assert scheduler.decode_batch() == [b] and b.row == 0
    assert scheduler.running_count == 1 and scheduler.cache.free_rows == 1


@pytest.mark.parametrize("row_free", [False, True])
def test_a_cancelled_waiting_sequence_never_runs(row_free: bool) -> None:
    scheduler = make_scheduler(running=1, waiting=1)
    a, b = make_seq("a"), make_seq("b")
    add(scheduler, a)
    if not row_free:
        step_prefill(scheduler)
    add(scheduler, b)
    scheduler.abort(b)
    if row_free:
        scheduler.abort(a)
    batch = scheduler.schedule(0.0)
    assert b in batch.finished and b not in batch.admitted
    assert all(chunk.seq is not b for chunk in batch.prefill)
    assert (b.status, b.finish_reason, b.row, b.prefilled) == (F, FinishReason.CANCELLED, -1, 0)
    assert scheduler.waiting_count == 0
    assert scheduler.running_count == (0 if row_free else 1)


def test_a_running_sequence_past_its_deadline_ends_with_an_error() -> None:
    scheduler = make_scheduler(running=2)
    a, b = make_seq("a", deadline=5.0), make_seq("b", deadline=50.0)
    add(scheduler, a, b)
    step_prefill(scheduler, now=1.0)
    assert scheduler.schedule(4.999).finished == []
    batch = scheduler.schedule(5.0)
    assert batch.finished == [a]
    assert a.status is F and a.finish_reason is None and isinstance(a.error, DeadlineExceeded)
    assert a.row == -1 and scheduler.decode_batch() == [b]


def test_finish_running_ends_every_row_and_leaves_the_queue() -> None:
    scheduler = make_scheduler(running=2, waiting=2)
    a, b, c = make_seq("a", prompt=9), make_seq("b", prompt=2), make_seq("c")
    add(scheduler, a, b, c)
    step_prefill(scheduler)
    error = RuntimeError("device lost")
    assert scheduler.finish_running(None, error) == [a, b]
    assert all(s.status is F and s.error is error and s.row == -1 for s in (a, b))
    assert c.status is W and scheduler.cache.free_rows == 2
    assert step_prefill(scheduler) == [c]


def test_close_cancels_the_waiting_and_refuses_new_work() -> None:
    scheduler = make_scheduler(running=1, waiting=2)
    a, b = make_seq("a"), make_seq("b")
    add(scheduler, a, b)
    step_prefill(scheduler)
    assert scheduler.close() == [b]
    assert (b.status, b.finish_reason, b.row) == (F, FinishReason.CANCELLED, -1)
    assert a.status is D and not scheduler.wait_for_work()
    with pytest.raises(RuntimeError, match="closed"):
        add(scheduler, make_seq("c"))
    assert scheduler.finish_running(FinishReason.CANCELLED) == [a]


def test_wait_for_work_returns_at_once_when_there_is_work() -> None:
    scheduler = make_scheduler()
    add(scheduler, make_seq("a"))
    assert scheduler.wait_for_work()


def test_a_finish_needs_exactly_one_of_reason_and_error() -> None:
    scheduler = make_scheduler()
    a = make_seq("a")
    add(scheduler, a)
    step_prefill(scheduler)
    with pytest.raises(ValueError, match="either a reason or an error"):
        scheduler.finish_running(None)
    with pytest.raises(ValueError, match="either a reason or an error"):
        scheduler.finish_running(FinishReason.CANCELLED, RuntimeError("both"))
    assert a.status is D and a.row == 0


def test_load_counts_a_queued_sequence_with_a_free_row_as_running_so_waiting_stays_in_bounds() -> None:
    scheduler = make_scheduler(running=2, waiting=1)
    a, b, c = make_seq("a"), make_seq("b"), make_seq("c")
    add(scheduler, a, b, c)  # before the first step: rows are free for a and b, only c waits for one
    assert (scheduler.load().running, scheduler.load().waiting) == (2, 1)
    assert scheduler.waiting_count == 3, "all three are still queued"
    with pytest.raises(ResourceExhausted) as info:
        add(scheduler, make_seq("d"))
    assert "(2 running, 1 waiting)" in info.value.message
    assert step_prefill(scheduler) == [a, b]
    load = scheduler.load()
    assert (load.running, load.waiting, load.kv_capacity_tokens) == (2, 1, 2 * 16), "admission moves no count"
    scheduler.postprocess([(a, FinishReason.LENGTH)], [])
    assert (scheduler.load().running, scheduler.load().waiting) == (2, 0), "a row is free for c now"
