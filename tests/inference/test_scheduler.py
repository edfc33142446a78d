"""The scheduler's status transitions and preemption, on a tiny real paged KV cache: no model, no engine thread."""

from __future__ import annotations

import pytest
import torch

from genmesh.errors import DeadlineExceeded, ResourceExhausted
from services.inference.engine.config import EngineConfig
from services.inference.engine.kv_cache import PagedKVCache
from services.inference.engine.scheduler import Scheduler
from services.inference.engine.sequence import Sequence, SequenceStatus
from services.inference.engine.types import FinishReason
from services.inference.models.config import LlamaConfig
from services.inference.models.kv_cache import KVCache

W, P, D, F = SequenceStatus.WAITING, SequenceStatus.PREFILLING, SequenceStatus.DECODING, SequenceStatus.FINISHED


BLOCK = 4


def make_cache(blocks: int, prefix_cache: bool = True) -> PagedKVCache:
    config = LlamaConfig(
        vocab_size=8,
        hidden_size=4,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        max_position_embeddings=64,
    )
    return PagedKVCache(KVCache(config, blocks, BLOCK, "cpu", torch.float32), prefix_cache)


def make_scheduler(
    running: int = 2, waiting: int = 2, chunk: int = 4, batched: int = 0, blocks: int = 0, prefix_cache: bool = True
) -> Scheduler:
    """A scheduler whose cache holds ``blocks`` blocks of 4 positions (default: 16 positions per running place)."""
    config = EngineConfig(running, waiting, batched or running + chunk, chunk)
    return Scheduler(config, make_cache(blocks or 4 * running, prefix_cache))


def make_seq(name: str, prompt: int = 3, max_new: int = 4, deadline: float | None = None) -> Sequence:
    """A sequence whose prompt tokens are its own (no prefix shared with another name's)."""
    return Sequence(name, [100 * ord(name[0]) + i for i in range(prompt)], max_new, deadline)


def run_step(scheduler: Scheduler, ending: tuple[Sequence, ...] = ()) -> list[Sequence]:
    """One engine step as the engine runs it: prefill, a first token for each completed prompt, then one decode
    token per decoding sequence; ``ending`` end after it. Returns the decode batch."""
    batch = scheduler.schedule(0.0)
    for seq in batch.completing:
        seq.append_token(7)
    scheduler.postprocess([], batch.prefill)
    decoding = scheduler.decode_batch()
    for seq in decoding:
        seq.append_token(8)
    scheduler.postprocess([(seq, FinishReason.LENGTH) for seq in ending])
    return decoding


def add(scheduler: Scheduler, *seqs: Sequence) -> None:
    for seq in seqs:
        scheduler.add(seq, retry_after_s=0.5)


def step_prefill(scheduler: Scheduler, now: float = 0.0) -> list[Sequence]:
    """One step's scheduling and prefill, no sequence ending; the sequences it admitted."""
    batch = scheduler.schedule(now)
    scheduler.postprocess([], batch.prefill)
    return batch.admitted


def test_admission_is_oldest_first_within_max_running() -> None:
    scheduler = make_scheduler(running=2, waiting=4, blocks=16)  # spare blocks: max_running is the bound
    a, b, c = make_seq("a"), make_seq("b"), make_seq("c")
    add(scheduler, a, b, c)
    assert (a.status, scheduler.waiting_count, scheduler.running_count) == (W, 3, 0)
    batch = scheduler.schedule(0.0)
    assert batch.admitted == [a, b]
    assert [a.status, b.status, c.status] == [P, P, W]
    assert (a.block_table, b.block_table, c.block_table) == ([0], [1], []), "prompt + first decode: one block"
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
    assert a.status is D and a.prompt_done and len(a.block_table) == 3
    assert scheduler.decode_batch() == [a]
    assert scheduler.schedule(0.0).prefill == []


def test_promotion_appends_to_the_decode_batch_and_moves_no_block() -> None:
    scheduler = make_scheduler(running=3, chunk=4, batched=10)
    a, b, c = make_seq("a", prompt=8), make_seq("b", prompt=2), make_seq("c", prompt=2)
    add(scheduler, a, b, c)
    step_prefill(scheduler)  # b and c complete ahead of a, which is still prefilling
    assert [s.status for s in (a, b, c)] == [P, D, D]
    assert scheduler.decode_batch() == [b, c]
    tables = [list(s.block_table) for s in (a, b, c)]
    assert tables == [[0, 1, 2], [3], [4]]
    step_prefill(scheduler)
    assert scheduler.decode_batch() == [b, c, a] and [s.block_table for s in (a, b, c)] == tables


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
    assert a.status is D and scheduler.cache.blocks_used == 1
    assert scheduler.postprocess([(a, reason)]) == [a]
    assert (a.status, a.finish_reason, a.error, a.block_table) == (F, reason, None, [])
    assert scheduler.decode_batch() == [] and scheduler.running_count == 0
    assert (scheduler.cache.blocks_used, scheduler.cache.blocks_free) == (0, 4)
    assert step_prefill(scheduler) == [b] and len(b.block_table) == 1
    with pytest.raises(RuntimeError, match="already finished"):
        scheduler.postprocess([(a, reason)])


def test_a_first_token_that_ends_the_sequence_skips_decoding() -> None:
    scheduler = make_scheduler(running=2)
    a = make_seq("a", prompt=2)
    add(scheduler, a)
    batch = scheduler.schedule(0.0)
    assert batch.completing == [a]
    assert scheduler.postprocess([(a, FinishReason.STOP)], batch.prefill) == [a]
    assert (a.status, a.block_table, a.prefilled) == (F, [], 2)
    assert scheduler.decode_batch() == [] and scheduler.cache.blocks_free == 8


def test_a_decoding_sequence_grows_block_by_block() -> None:
    scheduler = make_scheduler(running=1, blocks=4)
    a = make_seq("a", prompt=3, max_new=20)
    add(scheduler, a)
    sizes = []
    for _ in range(7):
        run_step(scheduler)
        sizes.append((len(a.token_ids), len(a.block_table)))
    # the block for position p is taken in the step that decodes p (prompt + first decode at admission)
    assert sizes == [(5, 1), (6, 2), (7, 2), (8, 2), (9, 2), (10, 3), (11, 3)]
    assert scheduler.cache.used_tokens() == 12 and a.cached_tokens == 10


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
    assert (a.status, a.finish_reason, a.block_table) == (F, FinishReason.CANCELLED, [])
    assert scheduler.decode_batch() == [b] and b.block_table
    assert scheduler.running_count == 1 and scheduler.cache.blocks_used == len(b.block_table)


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
    assert (b.status, b.finish_reason, b.block_table, b.prefilled) == (F, FinishReason.CANCELLED, [], 0)
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
    assert a.block_table == [] and scheduler.decode_batch() == [b]


def test_finish_running_ends_every_row_and_leaves_the_queue() -> None:
    scheduler = make_scheduler(running=2, waiting=2)
    a, b, c = make_seq("a", prompt=9), make_seq("b", prompt=2), make_seq("c")
    add(scheduler, a, b, c)
    step_prefill(scheduler)
    error = RuntimeError("device lost")
    assert scheduler.finish_running(None, error) == [a, b]
    assert all(s.status is F and s.error is error and s.block_table == [] for s in (a, b))
    assert c.status is W and scheduler.cache.blocks_used == 0
    assert step_prefill(scheduler) == [c]


def test_close_cancels_the_waiting_and_refuses_new_work() -> None:
    scheduler = make_scheduler(running=1, waiting=2)
    a, b = make_seq("a"), make_seq("b")
    add(scheduler, a, b)
    step_prefill(scheduler)
    assert scheduler.close() == [b]
    assert (b.status, b.finish_reason, b.block_table) == (F, FinishReason.CANCELLED, [])
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
    assert a.status is D and a.block_table == [0]


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


def test_decode_without_a_free_block_preempts_the_newest_running_sequence_which_resumes_later() -> None:
    scheduler = make_scheduler(running=3, waiting=2, batched=16, blocks=4, prefix_cache=False)
    a, b, c = (make_seq(name, prompt=3, max_new=20) for name in "abc")
    add(scheduler, a, b, c)
    run_step(scheduler)  # all three admitted with one block each, prefilled, a first and a decoded token
    assert [len(s.block_table) for s in (a, b, c)] == [1, 1, 1] and scheduler.cache.blocks_free == 1
    assert run_step(scheduler) == [a, b], "a took the last block; b needed one: c, the newest, gave its back"
    assert (c.status, c.block_table, c.prefilled, c.prefill_target, c.num_generated) == (W, [], 0, 4, 2)
    assert (scheduler.waiting_count, scheduler.preemptions, scheduler.load().blocks_free) == (1, 1, 0)
    generated = list(c.token_ids)
    run_step(scheduler, ending=(a, b))  # no room for c (5 positions) until a and b end
    assert c.status is W and c.token_ids == generated
    batch = scheduler.schedule(0.0)
    assert (batch.admitted, batch.resumed) == ([], [c])
    assert [(x.start, x.count, x.completes, x.samples) for x in batch.prefill] == [(0, 4, True, False)]
    assert batch.completing == [], "a recomputed sequence samples nothing at the end of its prefill"
    scheduler.postprocess([], batch.prefill)
    assert c.status is D and c.token_ids == generated and c.next_position == 4 and c.cached_tokens == 4


def test_preemption_puts_the_victims_at_the_front_of_the_queue_oldest_first() -> None:
    scheduler = make_scheduler(running=3, waiting=2, chunk=8, batched=16, blocks=4, prefix_cache=False)
    a, b, c, d = make_seq("a", prompt=7, max_new=20), make_seq("b"), make_seq("c"), make_seq("d")
    add(scheduler, a, b, c, d)
    run_step(scheduler)  # a holds two blocks, b and c one each (the whole cache); d waits for a running place
    assert (len(a.token_ids), len(b.token_ids), d.status) == (9, 5, W)
    assert run_step(scheduler) == [a], "a needed a block: c, the newest, gave its; then b needed one, the newest"
    assert list(scheduler._waiting) == [b, c, d] and scheduler.preemptions == 2, "victims first, oldest first"
    run_step(scheduler)
    assert b.status is W, "b needs two blocks for its 4 tokens and the next position; none is free"


def test_a_prompt_shares_the_cached_blocks_of_its_longest_cached_prefix() -> None:
    scheduler = make_scheduler(running=3, waiting=3, chunk=16, blocks=16)
    a = Sequence("a", list(range(10, 21)), 4)  # 11 tokens: two full blocks
    add(scheduler, a)
    run_step(scheduler)
    b = Sequence("b", [*range(10, 19), 99, 98, 97], 4)  # shares 9 tokens with a: two blocks
    c = Sequence("c", list(range(10, 18)), 4)  # two blocks, but its last token is always computed: one is shared
    add(scheduler, b, c)
    batch = scheduler.schedule(0.0)
    assert batch.admitted == [b, c]
    assert b.block_table[:2] == a.block_table[:2] and c.block_table[:1] == a.block_table[:1]
    private = [a.block_table[2:], b.block_table[2:], c.block_table[1:]]  # a has grown a block for position 12
    assert [len(t) for t in private] == [2, 2, 2] and len({block for t in private for block in t}) == 6
    assert [(x.seq, x.start, x.count) for x in batch.prefill] == [(b, 8, 4), (c, 4, 4)]
    assert (b.prefix_hit_tokens, c.prefix_hit_tokens, a.prefix_hit_tokens) == (8, 4, 0)
    assert scheduler.cache.allocator.refcount(a.block_table[0]) == 3
    assert scheduler.load().prefix_hit_rate == pytest.approx(12 / 31)
    scheduler.postprocess([], batch.prefill)
    shared = a.block_table[:2]
    scheduler.finish_running(FinishReason.CANCELLED)
    assert scheduler.cache.blocks_used == 0 and scheduler.cache.allocator.cached >= 3, "full blocks stay cached"
    again = Sequence("again", list(range(10, 21)), 4)
    add(scheduler, again)
    scheduler.schedule(0.0)
    assert again.block_table[:2] == shared and again.prefilled == 8


def test_without_the_prefix_cache_nothing_is_shared() -> None:
    scheduler = make_scheduler(running=2, chunk=16, blocks=16, prefix_cache=False)
    a, b = Sequence("a", list(range(10, 21)), 4), Sequence("b", list(range(10, 21)), 4)
    add(scheduler, a)
    run_step(scheduler)
    add(scheduler, b)
    scheduler.schedule(0.0)
    assert (b.prefilled, set(a.block_table) & set(b.block_table), scheduler.load().prefix_hit_rate) == (0, set(), 0)


def test_a_later_sample_waits_for_the_first_samples_prompt_then_shares_its_blocks() -> None:
    scheduler = make_scheduler(running=3, waiting=3, chunk=4, batched=16, blocks=16)
    first = Sequence("r", list(range(10, 20)), 4)
    second = Sequence("r", list(range(10, 20)), 4, after=first)
    scheduler.add([first, second], retry_after_s=0.5)
    add(scheduler, other := make_seq("o"))
    run_step(scheduler)
    assert (first.status, second.status, other.status) == (P, W, D), "second waits for first's prompt, other not"
    for _ in range(2):  # the second and last chunks of first's prompt: it decodes from then on
        run_step(scheduler)
    assert (first.status, second.status) == (D, W)
    run_step(scheduler)
    assert second.status is not W and other.status is not W
    assert second.block_table[:2] == first.block_table[:2] and second.prefix_hit_tokens == 8
