"""Mutants of constrained decoding: response_format compiled, masked, enforced and exposed."""

from __future__ import annotations

from mutant_catalog.mutant import Mutant

SO = "tests/inference/test_structured_output.py"
SC = "tests/inference/test_structured_compile.py"
SF = "tests/http_front/test_structured_front.py"

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "structured-masks-not-applied",
        "services/inference/engine/output.py",
        "self._constrain(seqs, logits)",
        "pass",
        (f"{SO}::test_json_schema_outputs_always_validate",),
    ),
    Mutant(
        "structured-matcher-never-advances",
        "services/inference/engine/output.py",
        "if out.constraint is not None and not out.constraint.advance(token.token_id):",
        "if False:",
        (f"{SO}::test_regex_choice_and_grammar_outputs_match",),
    ),
    Mutant(
        "structured-broken-matcher-not-failed",
        "services/inference/engine/output.py",
        "if constraint.error is not None or none_allowed:",
        "if False:",
        (f"{SO}::test_a_broken_matcher_ends_its_stream_with_an_error",),
    ),
    Mutant(
        "structured-masks-not-prefetched",
        "services/inference/engine/engine.py",
        "self._outputs.prefetch_masks(decoding)  # filled on a worker while the forward pass runs",
        "pass",
        (f"{SO}::test_decode_masks_are_filled_on_the_worker_during_the_forward_pass",),
    ),
    Mutant(
        "structured-json-free-whitespace",
        "services/inference/constraints/compiler.py",
        '"whitespace_flexible": False,',
        '"whitespace_flexible": True,',
        (f"{SO}::test_json_schema_outputs_always_validate",),
    ),
    Mutant(
        "structured-invalid-grammar-accepted",
        "services/inference/constraints/compiler.py",
        "if matcher.is_error():",
        "if False:",
        (f"{SC}::test_a_definition_that_does_not_parse_is_refused_with_the_parser_s_reason",),
    ),
    Mutant(
        "structured-empty-language-accepted",
        "services/inference/constraints/compiler.py",
        "if probe.is_error():",
        "if False:",
        (f"{SC}::test_an_invalid_definition_names_its_field",),
    ),
    Mutant(
        "structured-requests-share-one-matcher",
        "services/inference/constraints/compiler.py",
        "return TokenConstraint(pristine.deep_copy(), self.vocab_size)",
        "return TokenConstraint(pristine, self.vocab_size)",
        (f"{SC}::test_requests_sharing_a_format_share_its_compiled_grammar",),
    ),
    Mutant(
        "structured-lm-head-extra-ids-allowed",
        "services/inference/constraints/bitmask.py",
        "pad = torch.zeros((bits.shape[0], width - allowed.shape[1]), dtype=torch.bool, device=device)",
        "pad = torch.ones((bits.shape[0], width - allowed.shape[1]), dtype=torch.bool, device=device)",
        (f"{SC}::test_a_complete_format_allows_only_eos_and_ids_past_the_tokenizer_never",),
    ),
    Mutant(
        "structured-prefetch-given-to-another-batch",
        "services/inference/constraints/bitmask.py",
        "return result if started == key else None",
        "return result",
        (f"{SC}::test_the_prefetcher_hands_a_fill_only_to_its_batch",),
    ),
    Mutant(
        "structured-lru-unbounded",
        "services/inference/constraints/compiler.py",
        "while len(self._cache) > self._size:",
        "while False:",
        (f"{SC}::test_requests_sharing_a_format_share_its_compiled_grammar",),
    ),
    Mutant(
        "structured-duplicate-choices-accepted",
        "genmesh/response_format.py",
        "if len(set(choices)) != len(choices):",
        "if False:",
        (f"{SC}::test_bounds_name_the_field",),
    ),
    Mutant(
        "structured-inference-drops-the-format",
        "services/inference/server.py",
        "response_format=output_format,",
        "response_format=None,",
        (f"{SF}::test_a_json_schema_answer_over_grpc_validates",),
    ),
    Mutant(
        "structured-gateway-drops-the-format",
        "gateway/stages/inference.py",
        "response_format=context.plan.response_format,",
        "response_format=None,",
        (f"{SF}::test_a_json_schema_answer_over_grpc_validates",),
    ),
    Mutant(
        "structured-gateway-plan-drops-the-format",
        "gateway/request.py",
        "response_format=request.response_format if response_format is not None else None,",
        "response_format=None,",
        ("tests/gateway/test_request_response_format.py::test_a_format_is_passed_on_as_sent_and_none_when_unset",),
    ),
    Mutant(
        "structured-http-drops-the-format",
        "gateway/http/openai_chat.py",
        "request.response_format.CopyFrom(response_format)",
        "pass",
        (f"{SF}::test_the_body_field_maps_to_the_response_format",),
    ),
    Mutant(
        "structured-http-names-the-proto-field",
        "gateway/http/response_format.py",
        '"response_format.json_schema.schema_json": "response_format.json_schema.schema",',
        '"x": "y",',
        (f"{SF}::test_a_bad_format_over_http_is_a_400_naming_the_field",),
    ),
    Mutant(
        "structured-min-tokens-with-a-format",
        "services/inference/engine/types.py",
        "if getattr(self.sampling, name, 0):",
        "if False:",
        (f"{SO}::test_knobs_that_hold_eos_back_are_refused_with_a_format",),
    ),
)
