"""Mutants of the prompt budget, ListModels/Embed/CountTokens, the HTTP front, the web page, packaging (#15)."""

from __future__ import annotations

from mutant_catalog.mutant import Mutant

_REFUSALS = "tests/http_front/test_refusals.py"
_MAPPING = "tests/http_front/test_openai_mapping.py::test_bad_bodies_name_the_field"

MUTANTS: tuple[Mutant, ...] = (
    # --- the prompt budget counted by the tokenizer, ListModels, Embed, CountTokens and their HTTP routes (#15) ---
    Mutant(
        "prompt-budget-ignores-token-counts",
        "gateway/prompt.py",
        "if cost <= tokens and size + len(SEPARATOR) <= chars:",
        "if size + len(SEPARATOR) <= chars:",
        (
            "tests/gateway/test_prompt_budget.py::test_a_passage_too_long_in_tokens_is_dropped_where_the_3_char_guess_kept_it",
        ),
    ),
    Mutant(
        "prompt-budget-keeps-every-passage",
        "gateway/prompt_budget.py",
        "return with_context(turns, join_context([blocks[counted_blocks[i]] for i in kept], tools))",
        "return with_context(turns, join_context(blocks, tools))",
        (
            "tests/gateway/test_models_and_embeddings.py::test_generate_puts_passages_in_the_prompt_by_their_token_counts",
        ),
    ),
    Mutant(
        "prompt-budget-leaves-no-room-for-the-answer",
        "gateway/prompt.py",
        "return context_length - min(max_tokens, context_length // 2)",
        "return context_length",
        ("tests/gateway/test_prompt_budget.py::test_a_question_too_long_in_tokens_is_refused_naming_it",),
    ),
    Mutant(
        "prompt-budget-sends-a-conversation-too-long",
        "gateway/prompt_budget.py",
        "if counted.prompt_tokens > room:",
        "if False:",
        ("tests/gateway/test_prompt_budget.py::test_a_question_too_long_in_tokens_is_refused_naming_it",),
    ),
    Mutant(
        "prompt-budget-fails-on-an-old-replica",
        "gateway/prompt_budget.py",
        "if error.code() == grpc.StatusCode.UNIMPLEMENTED:",
        "if False:",
        (
            "tests/gateway/test_prompt_budget.py::test_an_inference_service_that_cannot_count_gets_the_guess_logged_once",
        ),
    ),
    Mutant(
        "count-tokens-without-the-generation-prompt",
        "services/inference/counting.py",
        "rendered = template().render(template_messages(request.messages))",
        "rendered = template().render(template_messages(request.messages), add_generation_prompt=False)",
        (
            "tests/gateway/test_models_and_embeddings.py::test_count_tokens_counts_the_prompt_generate_feeds_and_each_text",
        ),
    ),
    Mutant(
        "embed-queue-unbounded",
        "services/retrieval/embedding.py",
        "if self.queued + len(inputs) > self._max_queued:",
        "if False:",
        (
            "tests/gateway/test_models_and_embeddings.py::test_a_full_embedder_queue_is_resource_exhausted_with_a_retry_hint",
        ),
    ),
    Mutant(
        "embed-dimensions-unchecked",
        "genmesh/embeddings.py",
        "if dimensions is not None and dimensions != dim:",
        "if False:",
        ("tests/gateway/test_models_and_embeddings.py::test_bad_embed_input_is_refused_naming_the_field",),
    ),
    Mutant(
        "embed-any-model-name",
        "gateway/embeddings.py",
        "if request.model and request.model != info.model:",
        "if False:",
        ("tests/gateway/test_models_and_embeddings.py::test_an_unknown_embedding_model_is_not_found",),
    ),
    Mutant(
        "embed-free-for-limited-keys",
        "gateway/embeddings.py",
        "with self._key_limits.stream(current_caller()) as meter:",
        "with self._key_limits.stream(None) as meter:",
        (
            "tests/gateway/test_models_and_embeddings.py::test_both_services_need_the_generate_scope_and_embed_counts_against_the_key_s_limits",
        ),
    ),
    Mutant(
        "model-list-needs-admin",
        "gateway/auth/interceptor.py",
        '"/genmesh.v1.ModelService/": Scope.GENERATE,',
        '"/genmesh.v1.ModelService/": Scope.ADMIN,',
        (
            "tests/gateway/test_models_and_embeddings.py::test_both_services_need_the_generate_scope_and_embed_counts_against_the_key_s_limits",
        ),
    ),
    Mutant(
        "http-embeddings-base64-of-float64",
        "gateway/http/openai_embeddings.py",
        'values = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()  # little-endian float32',
        'values = base64.b64encode(struct.pack(f"<{len(values)}d", *values)).decode()',
        (
            "tests/http_front/test_openai_embeddings_models.py::test_embeddings_base64_and_float_agree_and_are_unit_vectors",
        ),
    ),
    Mutant(
        "http-embeddings-fields-keep-gateway-names",
        "gateway/http/openai_embeddings.py",
        "failure.param = renamed",
        "pass",
        ("tests/http_front/test_openai_embeddings_models.py::test_bad_embedding_requests_are_400s_naming_the_field",),
    ),
    Mutant(
        "http-models-list-the-upstream-name",
        "gateway/http/openai_models.py",
        '"id": (served_name or model.id) if language else model.id,',
        '"id": model.id,',
        ("tests/http_front/test_openai_embeddings_models.py::test_models_lists_the_served_name_and_the_embedder",),
    ),
    Mutant(
        "prompt-budget-refuses-long-tool-results",
        "gateway/prompt_budget.py",
        "if tokens <= room:",
        "if True:",
        ("tests/gateway/test_prompt_budget.py::test_tool_results_too_long_for_the_context_are_cut_to_fit_not_refused",),
    ),
    Mutant(
        "prompt-keeps-a-huge-tool-result-whole",
        "gateway/prompt.py",
        "return text if len(text) <= limit else text[: max(0, limit - len(CUT_MARK))] + CUT_MARK",
        "return text",
        ("tests/gateway/test_prompt.py::test_a_huge_tool_result_is_cut_to_one_message_and_says_so",),
    ),
    Mutant(
        "retrieval-searches-a-long-message-whole",
        "gateway/request.py",
        "return question[-MAX_QUESTION_CHARS:]  # what retrieval searches for: a long message's tail, in its bound",
        "return question",
        ("tests/gateway/test_request.py::test_retrieval_searches_a_long_last_message_s_tail_within_its_bound",),
    ),
    # --- the OpenAI-compatible HTTP front (gateway/http/): SSE, WebSocket, statuses, disconnects (#15) ---
    Mutant(
        "http-disconnect-not-watched",
        "gateway/http/openai_routes.py",
        "await until_disconnect(receive, self._pump(send))",
        "await self._pump(send)",
        ("tests/http_front/test_streams.py::test_an_sse_client_that_disconnects_mid_answer_cancels_upstream_at_once",),
    ),
    Mutant(
        "http-named-events-always",
        "gateway/http/openai_routes.py",
        "if parsed.named_events or not isinstance(output, Extra):",
        "if True:",
        ("tests/http_front/test_streams.py::test_curl_sees_named_events_only_when_asked_and_done_last",),
    ),
    Mutant(
        "http-fields-keep-gateway-names",
        "gateway/http/errors.py",
        "base = from_rpc_error(error, lambda path: openai_name(path, names))",
        "base = from_rpc_error(error)",
        ("tests/http_front/test_openai_client.py::test_bad_input_is_a_bad_request_naming_the_field",),
    ),
    Mutant(
        "http-429-without-retry-after",
        "gateway/http/errors.py",
        'headers["Retry-After"] = "1" if delay is None else str(max(1, math.ceil(delay)))',
        "pass",
        (
            "tests/http_front/test_status.py::test_resource_exhausted_is_429_with_retry_after_rounded_up_or_one_without_retry_info",
        ),
    ),
    Mutant(
        "http-bearer-not-passed-on",
        "gateway/http/gateway_call.py",
        'PASSED_HEADERS = ("authorization", "x-request-id")',
        'PASSED_HEADERS = ("x-request-id",)',
        ("tests/http_front/test_status.py::test_keys_pass_through_and_refusals_have_their_http_status",),
    ),
    Mutant(
        "http-accepts-n-above-1",
        "gateway/http/openai_chat.py",
        "if n is not None and n != 1:",
        "if False:",
        ("tests/http_front/test_openai_mapping.py",),
    ),
    Mutant(
        "http-sigterm-cuts-running-answers",
        "gateway/http/server.py",
        "self.should_exit = True",
        "self.should_exit = self.force_exit = True",
        ("tests/http_front/test_serve_http.py",),
    ),
    Mutant(
        "http-ws-cancel-ignored",
        "gateway/http/websocket.py",
        "if self.running is not None and self.running[0] == rid:",
        "if False:",
        ("tests/http_front/test_streams.py::test_websocket_answers_refuses_and_cancels",),
    ),
    # --- the web page (gateway/http/static/) in headless Chromium: Cancel stops the server; the tools picker ---
    Mutant(
        "web-page-cancel-only-on-screen",
        "gateway/http/static/app.js",
        "running.controller.abort();",
        "void running.controller;",
        ("tests/http_front/test_web_page.py::test_cancel_stops_the_generation_on_the_server",),
    ),
    Mutant(
        "web-tools-route-drops-the-schema",
        "gateway/http/tools_route.py",
        '"parameters": parameters_of(tool),',
        '"parameters": {},',
        ("tests/http_front/test_web_page.py::test_a_picked_tool_is_run_and_its_result_shown",),
    ),
    # --- packaging (setup.py, MANIFEST.in): the wheel carries stubs and model; the installed model is found ---
    Mutant(
        "wheel-without-generated-stubs",
        "setup.py",
        "self._generated = generate_stubs(lib)",
        "self._generated = []",
        ("tests/built_wheel/test_wheel.py::test_the_wheel_has_the_stubs_protos_markers_and_model",),
    ),
    Mutant(
        "wheel-without-the-model",
        "setup.py",
        'self._generated += _copy_tree(ROOT / MODEL, lib / SHIPPED_MODEL, "*")',
        "self._generated += []",
        ("tests/built_wheel/test_wheel.py::test_the_wheel_has_the_stubs_protos_markers_and_model",),
    ),
    Mutant(
        "sdist-without-imported-protos",
        "MANIFEST.in",
        "graft protos/google",
        "# graft protos/google",
        ("tests/built_wheel/test_wheel.py::test_the_sdist_carries_what_the_wheel_is_built_from",),
    ),
    Mutant(
        "installed-model-not-looked-for",
        "services/inference/shipped_model.py",
        "return INSTALLED if INSTALLED.is_dir() else IN_TREE",
        "return IN_TREE",
        (
            "tests/built_wheel/test_model_lookup.py::test_the_installed_model_comes_before_the_source_trees",
            "tests/built_wheel/test_wheel.py::test_the_installed_wheel_runs_from_outside_the_repository",
        ),
    ),
    Mutant(
        "missing-default-model-not-checked",
        "genmesh/cli/serve_checks.py",
        "problem = model_problem(shipped)",
        "problem = None",
        ("tests/built_wheel/test_model_lookup.py::test_a_missing_default_model_is_one_line_saying_to_pass_model",),
    ),
    # --- HTTP front review fixes: refusals after the sources, bounds, headers, bodies, origins, logprobs ---
    Mutant(
        "http-refusal-after-sources-is-a-200",
        "gateway/http/gateway_call.py",
        'if event.WhichOneof("event") not in HELD_EVENTS:',
        "if True:",
        (f"{_REFUSALS}::test_inference_full_after_the_sources_is_a_429",),
    ),
    Mutant(
        "http-ints-beyond-the-proto-range",
        "gateway/http/openai_chat.py",
        "if isinstance(value, int) and not bounds[0] <= value <= bounds[1]:",
        "if False:",
        (_MAPPING,),
    ),
    Mutant(
        "http-numbers-not-finite",
        "gateway/http/openai_chat.py",
        "if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX):",
        "if False:",
        (_MAPPING,),
    ),
    Mutant(
        "http-role-not-checked-a-string",
        "genmesh/client/requests.py",
        "if not isinstance(role, str) or role not in ROLES:",
        "if role not in ROLES:",
        (_MAPPING,),
    ),
    Mutant(
        "http-null-message-key-refused",
        "gateway/http/openai_chat.py",
        "value = {key: item for key, item in value.items() if item is not None}",
        "pass",
        ("tests/http_front/test_openai_mapping.py::test_unions_and_the_extension_map_to_the_gateway_request",),
    ),
    Mutant(
        "http-forced-call-unknown-keys",
        "gateway/http/openai_chat.py",
        "unknown = sorted(set(value) - _FORCED_CALL_FIELDS)",
        "unknown = []",
        (_MAPPING,),
    ),
    Mutant(
        "http-header-not-ascii-to-grpc",
        "gateway/http/gateway_call.py",
        "if not _PRINTABLE.fullmatch(value):",
        "if False:",
        (f"{_REFUSALS}::test_a_header_grpc_cannot_carry_is_a_400_naming_it",),
    ),
    Mutant(
        "http-request-id-unchecked",
        "gateway/http/gateway_call.py",
        'if name == "x-request-id" and not valid_request_id(value):',
        "if False:",
        (f"{_REFUSALS}::test_a_header_grpc_cannot_carry_is_a_400_naming_it",),
    ),
    Mutant(
        "http-any-content-type",
        "gateway/http/bodies.py",
        'if not is_json_type(request.headers.get("content-type", "")):',
        "if False:",
        (f"{_REFUSALS}::test_bodies_that_are_not_json_are_refused",),
    ),
    Mutant(
        "http-body-unbounded",
        "gateway/http/bodies.py",
        "MAX_BODY_BYTES = 16 * 2**20",
        "MAX_BODY_BYTES = 2**40",
        (f"{_REFUSALS}::test_bodies_that_are_not_json_are_refused",),
    ),
    Mutant(
        "http-ws-any-origin",
        "gateway/http/websocket.py",
        "if not origin_allowed(ctx, ws):",
        "if False:",
        (f"{_REFUSALS}::test_a_cross_site_websocket_is_refused",),
    ),
    Mutant(
        "http-ws-answer-bug-kills-the-task-silently",
        "gateway/http/websocket.py",
        'await self.error(rid, HttpError(500, "the answer failed", "server_error", code="internal_error"))',
        "pass",
        (f"{_REFUSALS}::test_a_websocket_answer_that_breaks_is_a_500_and_the_socket_goes_on",),
    ),
    Mutant(
        "http-ws-answers-share-the-request-id",
        "gateway/http/websocket.py",
        'headers["x-request-id"] = headers["x-request-id"][: MAX_REQUEST_ID_CHARS - len(suffix)] + suffix',
        "pass",
        ("tests/http_front/test_streams.py::test_each_websocket_answer_has_its_own_request_id",),
    ),
    Mutant(
        "http-event-stream-cancel-only-in-the-generator",
        "gateway/http/openai_routes.py",
        "self.generation.cancel()",
        "pass",
        ("tests/http_front/test_streams.py::test_an_event_stream_whose_client_is_gone_at_the_start_cancels_the_call",),
    ),
    Mutant(
        "http-whole-answer-disconnect-not-watched",
        "gateway/http/openai_routes.py",
        "return JSONResponse(await until_disconnect(request.receive, _whole(generation, parsed)))",
        "return JSONResponse(await _whole(generation, parsed))",
        ("tests/http_front/test_streams.py::test_a_client_that_disconnects_without_a_write_cancels_upstream_at_once",),
    ),
    Mutant(
        "http-sigterm-cuts-websocket-answers",
        "gateway/http/server.py",
        "while ctx.answers and not self.force_exit and loop.time() < until:",
        "while False:",
        ("tests/http_front/test_serve_http.py",),
    ),
)
