"""Mutants of tools in the HTTP front (OpenAI tools/tool_calls) and the Python client."""

from __future__ import annotations

from mutant_catalog.mutant import Mutant

HTTP_TOOLS = "tests/http_front/test_openai_tools.py"
CLIENT_TOOLS = "tests/client/test_client_tools.py"

CLIENT_UNIT = f"{CLIENT_TOOLS}::test_loop_events_are_typed_and_the_answer_continues_with_every_step"
CLIENT_MIXED = f"{CLIENT_TOOLS}::test_a_mixed_step_continues_with_the_server_call_and_its_result"
HTTP_CHUNKS = f"{HTTP_TOOLS}::test_client_calls_are_chunk_tool_calls_and_server_calls_stay_genmesh_events"
HTTP_WHOLE = f"{HTTP_TOOLS}::test_a_whole_answer_carries_message_tool_calls_and_null_content_without_text"
HTTP_STEPS = f"{HTTP_TOOLS}::test_steps_texts_are_one_content_a_blank_line_apart_and_their_own_turns"
HTTP_MIXED = f"{HTTP_TOOLS}::test_a_mixed_step_continues_with_genmesh_output_messages"

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "http-tool-calls-finish-reason-is-stop",
        "gateway/http/openai_stream.py",
        '"tool_calls": "tool_calls",',
        '"tool_calls": "stop",',
        (
            f"{HTTP_TOOLS}::test_client_calls_are_chunk_tool_calls_and_server_calls_stay_genmesh_events",
            f"{HTTP_TOOLS}::test_client_side_execution_round_trip_whole",
        ),
    ),
    Mutant(
        "http-server-calls-leak-into-chunk-tool-calls",
        "gateway/http/openai_stream.py",
        'if call.executor != "client" or not self.parsed.chat:',
        "if not self.parsed.chat:",
        (
            f"{HTTP_TOOLS}::test_client_calls_are_chunk_tool_calls_and_server_calls_stay_genmesh_events",
            f"{HTTP_TOOLS}::test_a_server_tool_step_stays_inside_the_mesh",
        ),
    ),
    Mutant(
        "http-tool-call-index-always-0",
        "gateway/http/openai_stream.py",
        'delta: dict[str, Any] = {"tool_calls": [{"index": len(state.tool_calls), **entry}]}',
        'delta: dict[str, Any] = {"tool_calls": [{"index": 0, **entry}]}',
        (f"{HTTP_TOOLS}::test_client_calls_are_chunk_tool_calls_and_server_calls_stay_genmesh_events",),
    ),
    Mutant(
        "http-whole-answer-drops-tool-calls",
        "gateway/http/openai_stream.py",
        "state.tool_calls.append(entry)",
        "pass",
        (
            f"{HTTP_TOOLS}::test_a_whole_answer_carries_message_tool_calls_and_null_content_without_text",
            f"{HTTP_TOOLS}::test_client_side_execution_round_trip_whole",
        ),
    ),
    Mutant(
        "http-content-empty-string-with-calls",
        "gateway/http/openai_stream.py",
        'choice["message"].update(content=text or None, tool_calls=state.tool_calls)',
        'choice["message"].update(tool_calls=state.tool_calls)',
        (f"{HTTP_TOOLS}::test_a_whole_answer_carries_message_tool_calls_and_null_content_without_text",),
    ),
    Mutant(
        "http-tools-not-sent",
        "gateway/http/openai_tools.py",
        'request.tools.extend(tool_declarations(body["tools"]))',
        'tool_declarations(body["tools"])',
        (f"{HTTP_TOOLS}::test_tools_and_tool_choice_map_to_the_gateway_request",),
    ),
    Mutant(
        "http-tool-choice-not-sent",
        "gateway/http/openai_tools.py",
        'request.tool_choice.CopyFrom(tool_choice(body["tool_choice"]))',
        'tool_choice(body["tool_choice"])',
        (
            f"{HTTP_TOOLS}::test_tools_and_tool_choice_map_to_the_gateway_request",
            f"{HTTP_TOOLS}::test_a_bad_tool_choice_is_a_400_naming_the_param",
        ),
    ),
    Mutant(
        "http-parameters-error-keeps-the-proto-name",
        "gateway/http/openai_tools.py",
        'names[f"tools[{i}].function.parameters_json_schema"] = f"tools[{i}].function.parameters"',
        "pass",
        (f"{HTTP_TOOLS}::test_tools_and_tool_choice_map_to_the_gateway_request",),
    ),
    Mutant(
        "http-max-steps-ignored",
        "gateway/http/openai_chat.py",
        "request.max_steps = max_steps",
        "pass",
        (f"{HTTP_TOOLS}::test_tools_and_tool_choice_map_to_the_gateway_request",),
    ),
    Mutant(
        "client-tool-call-events-dropped",
        "genmesh/client/events.py",
        'if kind == "tool_call":',
        'if kind == "tool_call_":',
        (
            f"{CLIENT_TOOLS}::test_loop_events_are_typed_and_the_answer_continues_with_every_step",
            f"{CLIENT_TOOLS}::test_client_side_execution_round_trip_over_grpc",
        ),
    ),
    Mutant(
        "client-assistant-message-holds-every-step",
        "genmesh/client/events.py",
        "last_step = events[ends[-2] + 1 :] if len(ends) > 1 else events",
        "last_step = events",
        (f"{CLIENT_TOOLS}::test_loop_events_are_typed_and_the_answer_continues_with_every_step",),
    ),
    Mutant(
        "client-parallel-tool-calls-not-sent",
        "genmesh/client/requests.py",
        'parallel_tool_calls=options.get("parallel_tool_calls"),',
        "parallel_tool_calls=None,",
        (f"{CLIENT_TOOLS}::test_tool_arguments_map_to_the_gateway_request",),
    ),
    Mutant(
        "client-tool-name-is-a-function",
        "genmesh/client/requests.py",
        "return gateway_pb2.ToolDeclaration(server_tool=tool)",
        "return gateway_pb2.ToolDeclaration(function=common_pb2.FunctionDeclaration(name=tool))",
        (f"{CLIENT_TOOLS}::test_tool_arguments_map_to_the_gateway_request",),
    ),
    Mutant(
        "tool-choice-allowed-tools-read-as-named",
        "genmesh/client/tool_specs.py",
        'if choice.get("type") != "allowed_tools":',
        "if True:",
        (f"{HTTP_TOOLS}::test_tools_and_tool_choice_map_to_the_gateway_request",),
    ),
    Mutant(
        "continuation-drops-the-gateways-results",
        "genmesh/tool_messages.py",
        "out.extend(tool_turn(c.call_id, self._results[c.call_id]) for c in step.calls if c.call_id in self._results)",
        "pass",
        (CLIENT_UNIT, HTTP_WHOLE, HTTP_MIXED),
    ),
    Mutant(
        "continuation-keeps-an-unreadable-name",
        "genmesh/tool_messages.py",
        "name = call.name if NAME.fullmatch(call.name) else UNREADABLE_NAME",
        "name = call.name",
        (CLIENT_UNIT,),
    ),
    Mutant(
        "continuation-keeps-unreadable-arguments",
        "genmesh/tool_messages.py",
        'return name, "{}"',
        "return name, call.arguments_json",
        (CLIENT_UNIT,),
    ),
    Mutant(
        "continuation-drops-the-final-answer-turn",
        "genmesh/tool_messages.py",
        "if not step.text and not step.calls:",
        "if not step.calls:",
        (HTTP_STEPS,),
    ),
    Mutant(
        "tool-result-content-loses-the-error-code",
        "genmesh/tool_messages.py",
        "code = code_of_value(result.error.status.code).name",
        'code = "UNKNOWN"',
        (CLIENT_UNIT, "tests/gateway/test_agent_calls.py"),
    ),
    Mutant(
        "client-continuation-drops-the-calls",
        "genmesh/client/events.py",
        "turns.call(event)",
        "pass",
        (CLIENT_UNIT, CLIENT_MIXED),
    ),
    Mutant(
        "client-continuation-keeps-only-the-last-step",
        "genmesh/client/events.py",
        "turns.end_step()",
        "turns = StepTurns()",
        (CLIENT_UNIT,),
    ),
    Mutant(
        "job-calls-all-called-by-the-client",
        "genmesh/client/jobs.py",
        '"gateway" if call.call_id in answered else "client",',
        '"client",',
        (CLIENT_MIXED,),
    ),
    Mutant(
        "job-answer-without-output-messages",
        "genmesh/client/jobs.py",
        "output_messages=[cast(MessageDict, openai_message(m)) for m in result.output_messages],",
        "output_messages=[],",
        (CLIENT_MIXED,),
    ),
    Mutant(
        "http-empty-content-chunk-per-withheld-token",
        "gateway/http/openai_stream.py",
        "if not delta.text and not logprobs and state.started:",
        "if False:",
        (HTTP_CHUNKS,),
    ),
    Mutant(
        "http-steps-texts-run-together",
        "gateway/http/openai_stream.py",
        "text = STEP_SEPARATOR + text",
        "pass",
        (HTTP_STEPS,),
    ),
    Mutant(
        "http-no-output-messages",
        "gateway/http/openai_stream.py",
        "if index == 0 and self.turns.answered:",
        "if False:",
        (HTTP_CHUNKS, HTTP_WHOLE, HTTP_MIXED),
    ),
    Mutant(
        "http-output-messages-not-streamed",
        "gateway/http/openai_stream.py",
        'chunk["genmesh"] = {"output_messages": self.extras["output_messages"]}',
        "pass",
        (HTTP_CHUNKS, HTTP_MIXED),
    ),
    Mutant(
        "http-output-messages-lose-the-server-calls",
        "gateway/http/openai_stream.py",
        "self.turns.call(call)",
        "pass",
        (HTTP_CHUNKS, HTTP_WHOLE, HTTP_MIXED),
    ),
)
