"""Mutants of the inference side of agents: tools rendered, calls parsed, constrained and sent as tool_call events."""

from __future__ import annotations

from mutant_catalog.mutant import Mutant

TP = "tests/inference/test_tool_parsers.py"
TG = "tests/inference/test_tool_grammar.py"
TT = "tests/inference/test_tool_templates.py"
TS = "tests/inference/test_tool_calls_server.py"

FD = "tests/genmesh/test_function_declarations.py"
AP = "tests/gateway/test_agent_plan.py"

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "hermes-leaks-a-partial-call-marker",
        "services/inference/tool_calls/hermes.py",
        "keep = held_suffix(self._buffer, OPEN)",
        "keep = 0",
        (f"{TP}::test_hermes_holds_a_partial_marker_until_it_is_decided",),
    ),
    Mutant(
        "tool-call-text-stays-in-the-deltas",
        "services/inference/tool_calls/stream.py",
        'response.delta.text = "".join(head)',
        "pass",
        (f"{TS}::test_required_calls_parse_and_validate_on_every_seed",),
    ),
    Mutant(
        "tool-calls-finish-as-stop",
        "services/inference/tool_calls/stream.py",
        "response.complete.finish_reason = common_pb2.FINISH_REASON_TOOL_CALLS",
        "pass",
        (f"{TS}::test_required_calls_parse_and_validate_on_every_seed",),
    ),
    Mutant(
        "parallel-false-still-allows-several-calls",
        "services/inference/constraints/tool_grammar.py",
        "if request.parallel and max_calls > 1:",
        "if True:",
        (f"{TG}::test_named_and_not_parallel_allow_one_call_of_that_tool",),
    ),
    Mutant(
        "auto-text-may-hold-a-call-marker",
        "services/inference/constraints/tool_grammar.py",
        'return ["text: TEXT", f"TEXT: /(?s:.+)/ & ~({held})"]',
        'return ["text: TEXT", "TEXT: /(?s:.+)/"]',
        (f"{TG}::test_auto_allows_text_or_calls_but_no_text_the_parser_would_read_as_a_call",),
    ),
    Mutant(
        "named-and-allowed-tools-ignored",
        "services/inference/tool_calls/request.py",
        "names = [named] if choice is Choice.NAMED else allowed or list(seen)",
        "names = list(seen)",
        (
            f"{TG}::test_named_and_not_parallel_allow_one_call_of_that_tool",
            f"{TS}::test_allowed_tool_names_bound_the_calls",
        ),
    ),
    Mutant(
        "repeated-tool-names-accepted",
        "services/inference/tool_calls/request.py",
        "if tool.name in seen:",
        "if False:",
        (f"{TS}::test_bad_tools_are_invalid_argument_naming_the_field",),
    ),
    Mutant(
        "tool-call-arguments-not-compact",
        "services/inference/tool_calls/base.py",
        'return ParsedCall(value["name"], compact(arguments))',
        'return ParsedCall(value["name"], json.dumps(arguments))',
        (f"{TP}::test_hermes_reads_qwen_outputs_however_they_are_split",),
    ),
    Mutant(
        "tools-not-rendered-into-the-prompt",
        "services/inference/server.py",
        "template_messages(request.messages), tools=None if tools is None else tools.template_tools()",
        "template_messages(request.messages), tools=None",
        (f"{TS}::test_auto_answers_with_text_or_valid_calls_and_none_never_calls",),
    ),
    Mutant(
        "default-template-drops-assistant-tool-calls",
        "services/inference/chat_template.py",
        "\"    {%- elif message['role'] == 'assistant' and message['tool_calls'] %}\\n\"",
        '"    {%- elif false %}\\n"',
        (f"{TT}::test_the_default_template_renders_a_call_as_the_model_wrote_it_so_the_next_prompt_extends_the_last",),
    ),
    Mutant(
        "llama3-reads-a-json-answer-as-a-call",
        "services/inference/tool_calls/llama3.py",
        "if not self._calls and not done and isinstance(value, dict) and not _looks_like_call(value):",
        "if False:",
        (f"{TP}::test_llama3_json_reads_llama_outputs_however_they_are_split",),
    ),
    Mutant(
        "mistral-templates-detected-as-hermes",
        "services/inference/tool_calls/formats.py",
        "if MARKER in template_source:",
        "if False:",
        (f"{TT}::test_the_call_format_follows_from_the_template",),
    ),
    Mutant(
        "tools-accepted-without-messages",
        "services/inference/tool_calls/request.py",
        "if not request.messages:",
        "if False:",
        (f"{TS}::test_bad_tools_are_invalid_argument_naming_the_field",),
    ),
    Mutant(
        "tool-schemas-compiled-strictly",
        "services/inference/constraints/compiler.py",
        'options: dict[str, Any] = {**JSON_OPTIONS, "lenient": True} if lenient else dict(JSON_OPTIONS)',
        "options: dict[str, Any] = dict(JSON_OPTIONS)",
        (
            f"{TG}::test_a_schema_with_keywords_llguidance_does_not_implement_is_compiled_leniently",
            f"{TS}::test_a_schema_with_keywords_llguidance_does_not_implement_is_served",
        ),
    ),
    Mutant(
        "tool-grammar-ignores-max-calls",
        "services/inference/constraints/tool_grammar.py",
        'more = f" ({separator}call){{0,{max_calls - 1}}}"',
        'more = f" ({separator}call){{0,{DEFAULT_MAX_CALLS - 1}}}"',
        (f"{TG}::test_max_tool_calls_bounds_the_calls_of_a_turn",),
    ),
    Mutant(
        "server-ignores-max-tool-calls",
        "services/inference/server.py",
        "output_format = tool_grammar(tools, self._service.tool_format(), asked_format, self._service.max_tool_calls)",
        "output_format = tool_grammar(tools, self._service.tool_format(), asked_format)",
        (f"{TS}::test_required_calls_parse_and_validate_on_every_seed",),
    ),
    Mutant(
        "max-tool-calls-flag-unbounded",
        "services/inference/server.py",
        "if not 1 <= value <= MAX_CALLS_LIMIT:",
        "if False:",
        (f"{TS}::test_max_tool_calls_out_of_its_range_is_refused",),
    ),
    Mutant(
        "schema-verdict-not-cached",
        "genmesh/function_declarations.py",
        "@lru_cache(maxsize=SCHEMA_VERDICTS)",
        "@lru_cache(maxsize=0)",
        (
            f"{FD}::test_the_schema_check_is_cached_by_the_schema_text",
            f"{TG}::test_the_same_tools_on_every_step_are_checked_once",
        ),
    ),
    Mutant(
        "schema-without-type-refused",
        "genmesh/function_declarations.py",
        'return schema if "type" in schema else {"type": "object", **schema}',
        "return schema",
        (
            f"{FD}::test_a_good_declaration_gives_its_schema_with_type_object",
            f"{AP}::test_an_empty_schema_is_any_object_and_a_missing_type_is_object",
        ),
    ),
    Mutant(
        "declaration-name-unchecked",
        "genmesh/function_declarations.py",
        'return None if NAME.fullmatch(name) else FieldViolation(field, "must match [A-Za-z0-9_-]{1,64}")',
        "return None",
        (
            f"{FD}::test_a_bad_declaration_names_each_bad_field",
            f"{AP}::test_a_bad_function_is_refused_naming_its_field",
        ),
    ),
    Mutant(
        "star-hides-a-function-s-clash",
        "gateway/agent/plan.py",
        "if clashes:",
        "if False:",
        (f"{AP}::test_a_star_clashing_with_a_function_is_refused_in_either_order",),
    ),
    Mutant(
        "star-declarations-lose-their-entry",
        "gateway/agent/plan.py",
        "tools.setdefault(each, _server_tool(specs[each], field))",
        "tools.setdefault(each, _server_tool(specs[each], at))",
        (f"{AP}::test_each_declaration_maps_back_to_the_client_s_tool_entry",),
    ),
    Mutant(
        "server-tool-field-keeps-inference-s-suffix",
        "gateway/agent/plan.py",
        'return origin if origin.endswith(".server_tool") else origin + field[found.end() :]',
        "return origin + field[found.end() :]",
        (f"{AP}::test_each_declaration_maps_back_to_the_client_s_tool_entry",),
    ),
    Mutant(
        "max-steps-may-grow-past-max-messages",
        "gateway/agent/plan.py",
        "elif (given := max(len(request.messages), 1)) <= MAX_MESSAGES < given + 2 * max_steps:",
        "elif False:",
        (f"{AP}::test_max_steps_that_would_grow_the_conversation_past_its_bound_is_refused",),
    ),
    Mutant(
        "plan-ignores-the-key-s-tools",
        "gateway/agent/plan.py",
        "callable_ = sorted(n for n in specs if may_call_tool(may_call, n))",
        "callable_ = sorted(specs)",
        (f"{AP}::test_a_star_offers_every_tool_the_key_may_call",),
    ),
)
