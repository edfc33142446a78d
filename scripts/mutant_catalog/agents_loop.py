"""Mutants of the gateway's agent loop: steps, model calls checked and run, results fed back."""

from __future__ import annotations

from mutant_catalog.mutant import Mutant

LOOP = "tests/gateway/test_agent_loop.py::"

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "agent-last-step-not-forced-to-answer",
        "gateway/agent/plan.py",
        "return common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_NONE)",
        "return self.tool_choice",
        ("tests/gateway/test_agent_loop.py::test_max_steps_ends_the_loop_with_an_answer",),
    ),
    Mutant(
        "agent-max-steps-unbounded",
        "gateway/agent/plan.py",
        "if not 1 <= max_steps <= MAX_STEPS:",
        "if False:",
        ("tests/gateway/test_agent_plan.py::test_bounds_of_tools_max_steps_and_tool_choice",),
    ),
    Mutant(
        "agent-function-schema-unchecked",
        "genmesh/function_declarations.py",
        'check_schema(_with_type(schema), "")',
        "pass",
        ("tests/gateway/test_agent_plan.py::test_a_bad_function_is_refused_naming_its_field",),
    ),
    Mutant(
        "agent-arguments-not-validated",
        "gateway/agent/calls.py",
        'validate_arguments(tool.schema, call.arguments_json, "arguments_json")',
        "pass",
        (
            "tests/gateway/test_agent_loop.py::test_a_call_the_model_got_wrong_is_an_error_result_it_reads",
            "tests/gateway/test_agent_calls.py::test_a_call_is_checked_against_its_tool_s_schema",
        ),
    ),
    Mutant(
        "agent-call-ids-from-the-model",
        "gateway/agent/loop.py",
        "event.tool_call.call.call_id = new_call_id()",
        "pass",
        ("tests/gateway/test_agent_loop.py::test_calls_run_and_their_results_feed_the_next_step",),
    ),
    Mutant(
        "agent-client-calls-do-not-end-the-stream",
        "gateway/agent/loop.py",
        "if any(c.by_client for c in calls):",
        "if False:",
        ("tests/gateway/test_agent_loop.py::test_a_client_function_call_ends_the_stream_after_the_server_calls",),
    ),
    Mutant(
        "agent-results-not-fed-back",
        "gateway/agent/loop.py",
        "messages.extend(tool_turn(i, tool_result_content(results[i])) for i in answered)",
        "pass",
        ("tests/gateway/test_agent_loop.py::test_calls_run_and_their_results_feed_the_next_step",),
    ),
    Mutant(
        "agent-usage-not-summed",
        "gateway/agent/loop.py",
        "_add(usage, last.usage)",
        "usage.CopyFrom(last.usage)",
        ("tests/gateway/test_agent_loop.py::test_calls_run_and_their_results_feed_the_next_step",),
    ),
    Mutant(
        "agent-model-refusal-fails-the-request",
        "gateway/stages/tools.py",
        "if not run.step:",
        "if True:",
        (
            "tests/gateway/test_agent_loop.py::"
            "test_a_call_the_tools_service_refuses_is_the_model_s_error_not_the_request_s",
        ),
    ),
    Mutant(
        "agent-step-lost-from-timings",
        "gateway/orchestrator.py",
        "timings.stages.add(stage=stage, start_ms=start, end_ms=end, step=clock.steps.get(key, 0), call_id=call_id)",
        "timings.stages.add(stage=stage, start_ms=start, end_ms=end, call_id=call_id)",
        ("tests/gateway/test_agent_loop.py::test_calls_run_and_their_results_feed_the_next_step",),
    ),
    Mutant(
        "agent-long-results-not-cut",
        "gateway/agent/fit.py",
        "messages[newest + offset] = tool_turn(message.tool_call_id, cut)",
        "pass",
        ("tests/e2e/test_agents_mesh.py::test_a_result_too_long_for_the_context_is_cut_and_the_prefix_kept",),
    ),
    Mutant(
        "job-loop-results-not-kept",
        "gateway/jobs/result.py",
        "self._turns.result(event.tool_result.call_id, tool_result_content(event.tool_result))",
        "pass",
        ("tests/gateway/test_agent_calls.py::test_a_job_s_result_holds_the_loop_s_messages_and_steps",),
    ),
    Mutant(
        "agent-step-span-untagged",
        "gateway/stages/inference.py",
        "span.step(step)",
        "pass",
        ("tests/gateway/test_agent_spans.py",),
    ),
    Mutant(
        "tools-star-relisted-every-request",
        "gateway/upstreams.py",
        'return self._tools_fetched_at != float("-inf")',
        "return False",
        (LOOP + "test_a_star_lists_the_tools_once_within_the_cache_s_lifetime",),
    ),
    Mutant(
        "tools-listing-not-single-flight",
        "gateway/upstreams.py",
        "if self._fresh(wanted):  # another request refreshed it while this one waited",
        "if False:",
        (LOOP + "test_a_star_lists_the_tools_once_within_the_cache_s_lifetime",),
    ),
    Mutant(
        "agent-step-without-completion-accepted",
        "gateway/agent/loop.py",
        "if completed is None:",
        "if False:",
        (LOOP + "test_a_step_ending_without_a_completion_fails_the_request",),
    ),
    Mutant(
        "agent-model-mistake-fails-as-the-client-s",
        "gateway/agent/loop.py",
        'failure = FailedPrecondition(f"{fault.stage} failed: {fault.status.message}")',
        "pass",
        (LOOP + "test_with_require_all_stages_the_model_s_mistake_fails_the_request_as_a_failed_precondition",),
    ),
    Mutant(
        "agent-refused-declaration-not-renamed",
        "gateway/agent/loop.py",
        (
            "return InvalidArgument([FieldViolation(agent.client_field(v.field), v.description)"
            " for v in refused.violations])"
        ),
        "return refused",
        (LOOP + "test_inference_s_refusal_of_a_declaration_names_the_request_s_tool",),
    ),
    Mutant(
        "agent-refused-server-tool-blamed-on-the-client",
        "gateway/agent/loop.py",
        "if tool.server:",
        "if False:",
        (LOOP + "test_inference_s_refusal_of_a_declaration_names_the_request_s_tool",),
    ),
    Mutant(
        "agent-queue-time-of-the-last-step-only",
        "gateway/agent/loop.py",
        "queue_ms += last.timings.queue_ms",
        "queue_ms = last.timings.queue_ms",
        (LOOP + "test_queue_time_is_summed_over_the_steps_and_every_call_has_a_span",),
    ),
    Mutant(
        "agent-unrun-calls-untimed",
        "gateway/agent/loop.py",
        "context.clock.spans[key] = (now, now)",
        "pass",
        (LOOP + "test_queue_time_is_summed_over_the_steps_and_every_call_has_a_span",),
    ),
    Mutant(
        "tools-ms-spans-the-loop-s-generations",
        "gateway/orchestrator.py",
        "timings.tools_ms = clock.union_ms(\"tool:\")  # the time some call ran: a loop's steps' calls, not the gaps",
        'timings.tools_ms = clock.span_ms("tool:")',
        (LOOP + "test_queue_time_is_summed_over_the_steps_and_every_call_has_a_span",),
    ),
    Mutant(
        "tools-ms-overlaps-counted-twice",
        "gateway/clock.py",
        "total += end - max(start, reached)",
        "total += end - start",
        ("tests/e2e/test_agents_mesh.py::test_parallel_calls_run_at_once",),
    ),
    Mutant(
        "request-s-failed-call-in-another-form",
        "gateway/stages/inference.py",
        "PromptToolResult(r.name, calls[r.call_id].arguments_json, tool_result_content(r))  # as the loop's",
        'PromptToolResult(r.name, calls[r.call_id].arguments_json, r.result_json or f"error: {r.error.message}")',
        (LOOP + "test_the_request_s_own_failed_call_reaches_the_prompt_as_the_loop_s_do",),
    ),
)
