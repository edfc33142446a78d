"""Mutants of the paged KV cache, the prefix cache, preemption and n > 1 samples."""

from __future__ import annotations

from mutant_catalog.mutant import Mutant

S = "tests/inference/test_scheduler.py"
A = "tests/inference/test_block_allocator.py"
PA = "tests/inference/test_paged_attention.py"
PE = "tests/inference/test_paged_engine.py"
PS = "tests/inference/test_paged_server.py"
SA = "tests/inference/test_scheduler_admission.py"
SI = "tests/inference/test_stream_interval.py"

_DECODE_ROWS = "tests/inference/test_decode_rows.py"
_ROWS_ENGINE = f"{_DECODE_ROWS}::test_decode_rows_give_the_tokens_and_logprobs_of_the_block_gather"
_ROWS_UNIT = f"{_DECODE_ROWS}::test_a_sequence_is_loaded_when_it_joins_or_moves_and_its_row_then_holds_its_blocks"

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "prefix-key-python-hash",
        "services/inference/engine/prefix_cache.py",
        "digest.update(ids.tobytes())",
        "digest.update(str(hash(tuple(tokens))).encode())",
        (f"{A}::test_block_keys_chain_the_whole_prefix_with_a_cryptographic_hash",),
    ),
    Mutant(
        "prefix-key-ignores-its-parent",
        "services/inference/engine/prefix_cache.py",
        "digest = hashlib.blake2b(parent, digest_size=16)",
        "digest = hashlib.blake2b(digest_size=16)",
        (f"{A}::test_block_keys_chain_the_whole_prefix_with_a_cryptographic_hash",),
    ),
    Mutant(
        "lru-evicts-the-most-recently-freed",
        "services/inference/engine/block_allocator.py",
        "block, _ = self._cached.popitem(last=False)",
        "block, _ = self._cached.popitem(last=True)",
        (f"{A}::test_cached_blocks_are_evicted_only_when_no_empty_block_is_left_least_recently_freed_first",),
    ),
    Mutant(
        "evicted-block-keeps-its-key",
        "services/inference/engine/block_allocator.py",
        "del self._by_key[key]",
        "pass",
        (f"{A}::test_cached_blocks_are_evicted_only_when_no_empty_block_is_left_least_recently_freed_first",),
    ),
    Mutant(
        "cached-block-evicted-before-an-empty-one",
        "services/inference/engine/block_allocator.py",
        "if self._empty:",
        "if self._empty and not self._cached:",
        (f"{A}::test_an_unregistered_block_is_reused_before_any_cached_one",),
    ),
    Mutant(
        "share-takes-no-reference",
        "services/inference/engine/block_allocator.py",
        "self._refs[block] += 1",
        "pass",
        (f"{A}::test_a_registered_block_is_shared_by_refcount_and_cached_when_released",),
    ),
    Mutant(
        "prefix-hit-leaves-no-token-to-compute",
        "services/inference/engine/kv_cache.py",
        "keys = self._prompt_keys(seq, target - 1)",
        "keys = self._prompt_keys(seq, target)",
        (f"{S}::test_a_prompt_shares_the_cached_blocks_of_its_longest_cached_prefix",),
    ),
    Mutant(
        "admission-ignores-free-blocks",
        "services/inference/engine/kv_cache.py",
        "if fresh_needed + unheld_shared > self.allocator.free:",
        "if False:",
        (f"{S}::test_preemption_puts_the_victims_at_the_front_of_the_queue_oldest_first",),
    ),
    Mutant(
        "decode-never-grows-a-block",
        "services/inference/engine/kv_cache.py",
        "if self.blocks_for(seq.next_position + 1) <= len(seq.block_table):",
        "if True:",
        (f"{S}::test_a_decoding_sequence_grows_block_by_block",),
    ),
    Mutant(
        "preemption-takes-the-needy-sequence-not-the-newest",
        "services/inference/engine/scheduler.py",
        "victim = self._admitted[-1]",
        "victim = seq",
        (f"{S}::test_decode_without_a_free_block_preempts_the_newest_running_sequence_which_resumes_later",),
    ),
    Mutant(
        "preempted-to-the-back-of-the-queue",
        "services/inference/engine/scheduler.py",
        "self._waiting.appendleft(seq)",
        "self._waiting.append(seq)",
        (f"{S}::test_preemption_puts_the_victims_at_the_front_of_the_queue_oldest_first",),
    ),
    Mutant(
        "recompute-samples-again",
        "services/inference/engine/scheduler.py",
        "return self.completes and not self.seq.resuming",
        "return self.completes",
        (
            f"{S}::test_decode_without_a_free_block_preempts_the_newest_running_sequence_which_resumes_later",
            f"{PE}::test_preemption_under_a_tiny_cache_finishes_every_request_with_the_tokens_it_gets_alone",
        ),
    ),
    Mutant(
        "later-samples-not-held-for-the-first",
        "services/inference/engine/scheduler.py",
        "and first.status in (SequenceStatus.WAITING, SequenceStatus.PREFILLING)",
        "and False",
        (f"{S}::test_a_later_sample_waits_for_the_first_samples_prompt_then_shares_its_blocks",),
    ),
    Mutant(
        "load-reports-no-free-blocks",
        "services/inference/engine/scheduler.py",
        "blocks_free=cache.blocks_free,",
        "blocks_free=0,",
        (f"{PS}::test_get_load_watch_load_usage_and_metrics_report_the_paged_cache",),
    ),
    Mutant(
        "paged-mask-hides-the-own-position",
        "services/inference/models/kv_cache.py",
        "mask = (span.view(1, 1, -1) <= positions.unsqueeze(-1)).unsqueeze(1)",
        "mask = (span.view(1, 1, -1) < positions.unsqueeze(-1)).unsqueeze(1)",
        (f"{PA}::test_scattered_blocks_chunked_prefill_and_batched_decode_equal_a_full_forward",),
    ),
    Mutant(
        "slots-ignore-the-block-table",
        "services/inference/models/kv_cache.py",
        "slots = torch.gather(tables, 1, positions // size) * size + positions % size",
        "slots = positions",
        (f"{PA}::test_scattered_blocks_chunked_prefill_and_batched_decode_equal_a_full_forward",),
    ),
    Mutant(
        "usage-drops-cached-tokens",
        "services/inference/server.py",
        "cached_tokens=done.cached_tokens,",
        "cached_tokens=0,",
        (f"{PS}::test_get_load_watch_load_usage_and_metrics_report_the_paged_cache",),
    ),
    Mutant(
        "max-new-not-clipped-to-the-cache",
        "services/inference/engine/engine.py",
        "max_new = min(request.sampling.max_tokens, context - len(ids), capacity - len(ids))",
        "max_new = min(request.sampling.max_tokens, context - len(ids))",
        (f"{PE}::test_a_prompt_larger_than_the_cache_is_refused_and_max_tokens_is_clipped_to_it",),
    ),
    Mutant(
        "n-samples-share-one-seed",
        "services/inference/engine/engine.py",
        "if index == 0 or seed is None:",
        "if True:",
        (f"{PE}::test_n_samples_are_seeded_apart_share_the_prompt_blocks_and_end_after_the_last",),
    ),
    Mutant(
        "outbox-flush-ignores-the-ms-interval",
        "services/inference/engine/stream.py",
        "if self._seconds > 0:",
        "if False:",
        (f"{SI}::test_a_flush_sends_a_chunk_held_for_the_interval_without_a_next_token",),
    ),
    Mutant(
        "preempted-held-tokens-wait-for-the-recompute",
        "services/inference/engine/engine.py",
        "self._release_held(batch.preempted)",
        "pass",
        (f"{SI}::test_a_preempted_sequence_sends_its_held_tokens_before_it_is_recomputed",),
    ),
    Mutant(
        "queue-bound-counts-a-group-as-one",
        "services/inference/engine/scheduler.py",
        "if waiting + len(group) - max(0, self.config.max_running - running) > self.config.max_waiting:",
        "if waiting >= self.config.max_waiting and running >= self.config.max_running:",
        (f"{SA}::test_a_group_is_refused_when_all_of_it_would_overshoot_the_waiting_queue",),
    ),
    Mutant(
        "gated-sample-blocks-the-queue",
        "services/inference/engine/scheduler.py",
        "skipped += 1",
        "break",
        (f"{SA}::test_a_gated_later_sample_lets_the_requests_behind_it_in_keeping_their_order",),
    ),
    Mutant(
        "samples-gated-without-the-prefix-cache",
        "services/inference/engine/scheduler.py",
        "self.cache.prefix_cache",
        "True",
        (f"{SA}::test_without_the_prefix_cache_later_samples_are_not_gated",),
    ),
    Mutant(
        "expired-waiting-sequence-not-retired",
        "services/inference/engine/scheduler.py",
        "for seq in [*self._waiting, *self._prefilling, *self._decoding]:",
        "for seq in [*self._prefilling, *self._decoding]:",
        (f"{SA}::test_a_waiting_sequence_past_its_deadline_ends_without_running",),
    ),
    Mutant(
        "prompt-keys-rehashed-every-step",
        "services/inference/engine/kv_cache.py",
        "keys = self._prompt_keys(seq, target - 1)",
        "keys = prefix_keys(seq.token_ids[: target - 1], self.block_size)",
        (f"{SA}::test_prompt_keys_are_hashed_once_while_a_sequence_waits_for_blocks",),
    ),
    Mutant(
        "truncation-ignores-a-smaller-cache",
        "services/inference/engine/engine.py",
        "ids = keep_prompt_tail(ids, min(context, capacity), request.sampling.max_tokens, loaded.bos_token_id)",
        "ids = keep_prompt_tail(ids, context, request.sampling.max_tokens, loaded.bos_token_id)",
        (
            "tests/inference/test_paged_engine.py"
            "::test_a_truncated_prompt_is_cut_to_the_cache_when_it_is_smaller_than_the_context",
        ),
    ),
    Mutant(
        "constrained-logprobs-of-the-masked-logits",
        "services/inference/engine/output.py",
        "token = out.sampler.sample(logits[i], seq.token_ids, seq.num_prompt_tokens, unmasked.get(i))",
        "token = out.sampler.sample(logits[i], seq.token_ids, seq.num_prompt_tokens)",
        ("tests/inference/test_structured_output.py::test_logprobs_under_a_format_are_the_models_raw_ones",),
    ),
    Mutant(
        "decode-row-moved-into-a-hole-is-not-reloaded",
        "services/inference/engine/decode_rows.py",
        "self._seated[row], self._held[row] = last, -1  # moved: loaded again below",
        "self._seated[row] = last",
        (_ROWS_ENGINE, _ROWS_UNIT),
    ),
    Mutant(
        "decode-rows-never-take-the-new-token",
        "services/inference/models/kv_cache.py",
        "mirror_keys.view(-1, dim).index_copy_(0, index, keys.reshape(-1, dim).to(mirror_keys.dtype))",
        "pass",
        (_ROWS_ENGINE,),
    ),
    Mutant(
        "decode-rows-loaded-every-step",
        "services/inference/engine/decode_rows.py",
        "if self._held[row] != position:",
        "if True:",
        (_ROWS_UNIT,),
    ),
    Mutant(
        "decode-row-loads-one-block-short",
        "services/inference/engine/decode_rows.py",
        "self.rows.load(row, seq.block_table[: -(-position // self.rows.cache.block_size)])",
        "self.rows.load(row, seq.block_table[: position // self.rows.cache.block_size])",
        (_ROWS_ENGINE, _ROWS_UNIT),
    ),
    Mutant(
        "decode-rows-logits-not-put-back-in-batch-order",
        "services/inference/engine/runner.py",
        "if seated == seqs:  # sequences compare by identity",
        "if True:",
        (_ROWS_ENGINE,),
    ),
    Mutant(
        "decode-rows-on-every-device-by-default",
        "services/inference/engine/config.py",
        'return self.decode_rows if self.decode_rows is not None else device == "cpu"',
        "return self.decode_rows if self.decode_rows is not None else True",
        ("tests/inference/test_decode_rows.py::test_decode_rows_are_kept_by_default_on_the_cpu_only",),
    ),
)
