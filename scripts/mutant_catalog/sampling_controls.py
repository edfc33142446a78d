"""Mutants of the sampling controls (min_p, penalties, logit_bias, min_tokens, ignore_eos), the stream interval
and the transport of n > 1 samples."""

from __future__ import annotations

from mutant_catalog.mutant import Mutant

SC = "tests/inference/test_sampler_controls.py"
ES = "tests/inference/test_engine_sampling.py"
SI = "tests/inference/test_stream_interval.py"
SS = "tests/inference/test_server_sampling.py"
MAP = "tests/http_front/test_openai_mapping.py"
CLIENT = "tests/http_front/test_openai_client.py"

MUTANTS: tuple[Mutant, ...] = (
    # --- the sampler's processors ---
    Mutant(
        "sampler-ignores-logit-bias",
        "services/inference/sampler.py",
        "scores[ids] += torch.tensor([b for _, b in pairs], dtype=torch.float32, device=scores.device)",
        "pass",
        (
            f"{SC}::test_logit_bias_is_added_exactly_and_forces_or_bans_a_token",
            f"{ES}::test_logit_bias_forces_and_bans_tokens",
        ),
    ),
    Mutant(
        "sampler-min-tokens-masks-one-token-too-many",
        "services/inference/sampler.py",
        "if self._eos and len(history) - num_prompt < p.min_tokens:",
        "if self._eos and len(history) - num_prompt <= p.min_tokens:",
        (f"{SC}::test_min_tokens_masks_eos_only_until_the_output_holds_min_tokens",),
    ),
    Mutant(
        "sampler-penalises-prompt-tokens-too",
        "services/inference/sampler.py",
        "out = torch.as_tensor(history[num_prompt:], dtype=torch.long, device=scores.device)",
        "out = torch.as_tensor(history, dtype=torch.long, device=scores.device)",
        (f"{SC}::test_presence_and_frequency_penalties_count_output_tokens_only",),
    ),
    Mutant(
        "sampler-presence-penalty-per-occurrence",
        "services/inference/sampler.py",
        "scores -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(torch.float32)",
        "scores -= p.frequency_penalty * counts + p.presence_penalty * counts",
        (f"{SC}::test_presence_and_frequency_penalties_count_output_tokens_only",),
    ),
    Mutant(
        "sampler-min-p-absolute-threshold",
        "services/inference/sampler.py",
        'scores = scores.masked_fill(probs < p.min_p * probs.max(), float("-inf"))',
        'scores = scores.masked_fill(probs < p.min_p, float("-inf"))',
        (f"{SC}::test_min_p_drops_exactly_the_tokens_below_the_threshold",),
    ),
    Mutant(
        "plain-greedy-despite-logit-bias",
        "genmesh/sampling.py",
        "and not self.logit_bias",
        "and True",
        (f"{SC}::test_keeps_argmax_only_without_processors", f"{ES}::test_logit_bias_forces_and_bans_tokens"),
    ),
    # --- EOS, min_tokens and stop sequences on the output side ---
    Mutant(
        "output-ignore-eos-ignored",
        "services/inference/engine/output.py",
        "self._eos = frozenset() if params.ignore_eos else eos_token_ids",
        "self._eos = eos_token_ids",
        (f"{ES}::test_eos_forced_ends_at_once_unless_min_tokens_or_ignore_eos",),
    ),
    Mutant(
        "output-stops-before-min-tokens",
        "services/inference/engine/output.py",
        "return text if self._count < self._min_tokens else self._stops.feed(text)",
        "return self._stops.feed(text)",
        (f"{ES}::test_min_tokens_streams_early_stop_sequences_as_text",),
    ),
    # --- validation ---
    Mutant(
        "sampling-min-p-unchecked",
        "genmesh/sampling.py",
        'check(_finite_in(min_p, 0.0, 1.0), "min_p", "must be between 0 and 1")',
        'check(True, "min_p", "must be between 0 and 1")',
        (f"{SC}::test_bad_values_name_the_field",),
    ),
    Mutant(
        "sampling-n-unbounded",
        "genmesh/sampling.py",
        'check(1 <= n <= MAX_N, "n", f"must be between 1 and {MAX_N}")',
        'check(1 <= n, "n", f"must be between 1 and {MAX_N}")',
        (f"{SC}::test_bad_values_name_the_field",),
    ),
    Mutant(
        "logit-bias-vocab-off-by-one",
        "genmesh/sampling.py",
        "if token_id >= vocab_size",
        "if token_id > vocab_size",
        (f"{SS}::test_bad_values_are_invalid_argument_naming_the_field",),
    ),
    # --- the stream interval ---
    Mutant(
        "outbox-never-holds",
        "services/inference/engine/stream.py",
        "self._holding = interval_tokens > 1 or interval_ms > 0",
        "self._holding = False",
        (
            f"{SI}::test_token_interval_holds_until_enough_tokens_and_the_first_is_at_once",
            f"{SI}::test_engine_sends_fewer_chunks_with_the_same_text",
        ),
    ),
    Mutant(
        "outbox-finish-drops-held-tokens",
        "services/inference/engine/stream.py",
        "keys = [key] if isinstance(item, Finished) else [k for k in self._held if k[0] is stream]",
        "keys: list[tuple[Stream, int]] = []",
        (
            f"{SI}::test_token_interval_holds_until_enough_tokens_and_the_first_is_at_once",
            f"{SI}::test_engine_sends_the_first_token_and_the_finish_at_once",
        ),
    ),
    # --- n > 1 transport ---
    Mutant(
        "stage-drops-sample-index",
        "gateway/stages/inference.py",
        "yield gateway_pb2.GatewayEvent(delta=message.delta, index=message.index)",
        "yield gateway_pb2.GatewayEvent(delta=message.delta)",
        (f"{CLIENT}::test_n_samples_are_choices_by_index_whole_and_streamed",),
    ),
    Mutant(
        "http-usage-of-one-sample",
        "gateway/http/openai_stream.py",
        "completion_tokens = sum(c.completion_tokens for c in self.choices.values())",
        "completion_tokens = state.completion_tokens",
        (
            f"{MAP}::test_samples_become_choices_with_their_index_and_summed_usage",
            f"{CLIENT}::test_n_samples_are_choices_by_index_whole_and_streamed",
        ),
    ),
    Mutant(
        "http-usage-before-the-last-sample",
        "gateway/http/openai_stream.py",
        "if self._completed < max(1, self.parsed.request.sampling.n):",
        "if False:",
        (f"{MAP}::test_samples_become_choices_with_their_index_and_summed_usage",),
    ),
    Mutant(
        "http-logit-bias-keys-lost",
        "gateway/http/openai_chat.py",
        "bias[int(key)] = number",
        "bias[0] = number",
        (f"{MAP}::test_sampling_controls_map_to_the_gateway_request",),
    ),
    Mutant(
        "server-drops-sample-index",
        "services/inference/server.py",
        "response.index = item.index  # the sample (n > 1)",
        "pass",
        (f"{SS}::test_n_samples_each_end_with_their_own_completion",),
    ),
    Mutant(
        "jobs-reserve-one-sample",
        "gateway/jobs/service.py",
        "self._key_limits.admit_request(caller, reserve_tokens=plan.sampling.max_tokens * plan.sampling.n)",
        "self._key_limits.admit_request(caller, reserve_tokens=plan.sampling.max_tokens)",
        (
            "tests/gateway/test_key_limits_jobs.py::test_a_job_of_n_samples_reserves_max_tokens_per_sample_and_answers_sample_zero",
        ),
    ),
    Mutant(
        "jobs-answer-mixes-samples",
        "gateway/jobs/result.py",
        "if event.index == 0:",
        "if True:",
        (
            "tests/gateway/test_key_limits_jobs.py::test_a_job_of_n_samples_reserves_max_tokens_per_sample_and_answers_sample_zero",
        ),
    ),
    Mutant(
        "gateway-vocab-refusal-unnamed",
        "services/inference/server.py",
        "check_logit_bias_vocab(sampling, engine.info().vocab_size)",
        "pass",
        (
            f"{SS}::test_bad_values_are_invalid_argument_naming_the_field",
            "tests/http_front/test_samples_front.py::test_logit_bias_past_the_vocabulary_is_named",
        ),
    ),
    Mutant(
        "relay-merges-samples",
        "gateway/relay.py",
        "at = self._open.get(message.index)",
        "at = max(self._open.values(), default=None)",
        (
            "tests/gateway/test_relay_coalescing.py::test_deltas_of_different_samples_are_never_merged",
            "tests/gateway/test_relay_coalescing.py::test_interleaved_samples_merge_each_into_its_own_run",
        ),
    ),
    Mutant(
        "relay-merges-past-the-completion",
        "gateway/relay.py",
        "self._open.pop(message.index, None)",
        "pass",
        ("tests/gateway/test_relay_coalescing.py::test_a_sample_keeps_its_order_around_its_completion",),
    ),
)
