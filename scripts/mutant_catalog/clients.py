"""Mutants of the Python client, chat messages and templates, the command line (#15)."""

from __future__ import annotations

from mutant_catalog.mutant import Mutant

MUTANTS: tuple[Mutant, ...] = (
    # --- the Python client (genmesh/client/): retries honour RetryInfo, and never once an event arrived ---
    Mutant(
        "client-retries-after-the-first-event",
        "genmesh/client/aio.py",
        "delay = None if received else self.retry.delay_s(error, attempt, deadline)",
        "delay = self.retry.delay_s(error, attempt, deadline)",
        ("tests/client/test_client_generate.py::test_no_retry_once_a_token_was_received",),
    ),
    Mutant(
        "client-ignores-retry-info",
        "genmesh/client/retry.py",
        "delay = told if told is not None else self.backoff_s * 2 ** (attempt - 1)",
        "delay = self.backoff_s * 2 ** (attempt - 1)",
        ("tests/client/test_client_generate.py::test_a_full_queue_is_retried_after_its_retry_info_delay_then_answers",),
    ),
    Mutant(
        "client-retries-grpcs-own-resource-exhausted",
        "genmesh/client/retry.py",
        "if code == grpc.StatusCode.RESOURCE_EXHAUSTED and told is None and not _from_genmesh(error):",
        "if False:",
        ("tests/client/test_client_generate.py::test_grpcs_own_resource_exhausted_is_not_retried",),
    ),
    Mutant(
        "up-a-failed-restart-ends-the-keeper",
        "genmesh/cli/supervise.py",
        "except Exception as failed:  # e.g. OSError: its log cannot be opened; the other services go on",
        "except ZeroDivisionError as failed:",
        ("tests/cli/test_cli_supervise.py::test_a_restart_that_fails_is_told_and_tried_again_after_a_backoff",),
    ),
    Mutant(
        "inference-serves-with-a-broken-chat-template",
        "services/inference/server.py",
        'raise StartupFailed(f"{loaded.chat_template_file}: {error}") from None',
        "pass",
        (
            "tests/inference/test_chat_messages.py::test_a_template_that_does_not_compile_fails_start_up_naming_its_file",
        ),
    ),
    Mutant(
        "client-errors-lose-quota-failure-and-invent-a-retry-delay",
        "genmesh/status.py",
        "rebuilt = errors.ResourceExhausted(message, retry_delay_s(error), quota_violations=quota_violations(error))",
        "rebuilt = errors.ResourceExhausted(message, retry_delay_s(error) or 1.0)",
        (
            "tests/client/test_client_keys.py",
            "tests/client/test_client_generate.py::test_grpcs_own_resource_exhausted_is_not_retried",
        ),
    ),
    Mutant(
        "chat-template-keeps-a-refused-system-role",
        "services/inference/chat_template.py",
        "self.folds_system = not self._renders(_SYSTEM_TRIAL) and self._renders(_SYSTEM_TRIAL[1:])",
        "self.folds_system = False",
        ("tests/inference/test_chat_template_tokens.py",),
    ),
    Mutant(
        "chat-template-sees-only-bos-and-eos",
        "services/inference/chat_template.py",
        "self._special = {**(special_tokens or {}), **{k: v for k, v in given.items() if v is not None}}",
        "self._special = {k: v for k, v in given.items() if v is not None}",
        ("tests/inference/test_chat_template_tokens.py",),
    ),
    Mutant(
        "loader-prefers-the-tokenizer-config-template",
        "services/inference/models/loader.py",
        "if jinja.is_file():",
        "if False:",
        (
            "tests/inference/test_llama_model.py::test_chat_template_jinja_overrides_the_tokenizer_config_like_transformers",
        ),
    ),
    Mutant(
        "blocking-client-leaves-the-call-running-on-ctrl-c",
        "genmesh/client/sync.py",
        "self.loop.call_soon_threadsafe(lambda: started[0].cancel())",
        "pass",
        ("tests/client/test_client_interrupt.py::test_ctrl_c_cancels_the_blocking_call_and_the_client_goes_on",),
    ),
    Mutant(
        "messages-call-ids-may-repeat",
        "genmesh/messages.py",
        "return bad + _repeated_call_ids(messages, field)",
        "return bad",
        ("tests/genmesh/test_messages.py",),
    ),
    Mutant(
        "messages-an-empty-text-part-is-content",
        "genmesh/messages.py",
        "elif not message.tool_calls and not _has_content(message):",
        "elif not message.content and not message.tool_calls:",
        ("tests/genmesh/test_messages.py",),
    ),
    # --- chat messages and the model's chat template (issue #15) ---
    Mutant(
        "chat-template-without-trim-blocks",
        "services/inference/chat_template.py",
        "trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]",
        "extensions=[_Generation, jinja2.ext.loopcontrols]",
        ("tests/inference/test_chat_template.py",),
    ),
    Mutant(
        "chat-template-with-jinjas-html-escaping-tojson",
        "services/inference/chat_template.py",
        'env.filters["tojson"] = _tojson',
        "pass",
        ("tests/inference/test_chat_template.py::test_tojson_and_strftime_now_are_hugging_faces",),
    ),
    Mutant(
        "chat-template-failures-escape-as-internal-errors",
        "services/inference/chat_template.py",
        "except Exception as error:  # a template is a program: any failure is its verdict on these messages",
        "except jinja2.exceptions.SecurityError as error:",
        ("tests/inference/test_chat_template.py",),
    ),
    Mutant(
        "rendered-chat-prompt-gets-a-second-bos",
        "services/inference/engine/engine.py",
        "ids = loaded.encode_rendered(request.prompt) if request.rendered else loaded.encode_prompt(request.prompt)",
        "ids = loaded.encode_prompt(request.prompt)",
        (
            "tests/inference/test_chat_messages.py::test_a_question_as_messages_is_the_prompt_the_model_was_always_given",
        ),
    ),
    Mutant(
        "question-and-messages-both-accepted",
        "gateway/request.py",
        'bad.append(FieldViolation("messages", "set either question or messages, not both"))',
        "pass",
        ("tests/gateway/test_request_messages.py::test_both_question_and_messages_names_messages",),
    ),
    # --- the CLI's rough edges (#15): genmesh/cli/ ---
    Mutant(
        "cli-ctrl-c-raises",
        "genmesh/cli/ask_command.py",
        "except KeyboardInterrupt:",
        "except ZeroDivisionError:",
        ("tests/gateway/test_cli_ask.py::test_ctrl_c_mid_answer_exits_130_with_one_line",),
    ),
    Mutant(
        "cli-validation-error-told-twice",
        "genmesh/cli/rpc_errors.py",
        'if violations and (details == joined or all(f"{v.field}: {v.description}" in details for v in violations)):',
        "if False:",
        ("tests/gateway/test_cli_ask.py::test_a_validation_error_is_told_once_with_each_field",),
    ),
    Mutant(
        "cli-sources-repeat-a-document",
        "genmesh/cli/ask_output.py",
        "key = passage.document_id or passage.chunk_id",
        "key = passage.chunk_id",
        ("tests/cli/test_cli_output.py",),
    ),
    Mutant(
        "cli-empty-folder-ingested",
        "genmesh/cli/ingest_command.py",
        "if not documents:",
        "if False:",
        ("tests/cli/test_cli_commands.py::test_ingesting_a_folder_without_text_files_makes_no_collection",),
    ),
    Mutant(
        "up-port-check-skipped",
        "genmesh/cli/ports.py",
        "problem = port_problem(host, port)",
        "problem = None",
        ("tests/cli/test_cli_commands.py::test_a_taken_port_is_named_before_anything_starts",),
    ),
    Mutant(
        "up-restart-forgotten",
        "genmesh/cli/supervise.py",
        "running.services[name] = restarted  # at once: Mesh.stop must find the new process",
        "pass",
        ("tests/cli/test_cli_supervise.py",),
    ),
    Mutant(
        "up-restart-during-stop",
        "genmesh/cli/supervise.py",
        "if await _stopped_within(stop, delay):",
        "if await _stopped_within(asyncio.Event(), 0.1):",
        ("tests/cli/test_cli_supervise.py::test_stop_during_the_backoff_restarts_nothing",),
    ),
    Mutant(
        "client-misspelt-option-ignored",
        "genmesh/client/requests.py",
        "if unknown := options.keys() - RequestOptions.__optional_keys__:",
        "if unknown := set():",
        ("tests/client/test_client_messages.py::test_a_misspelt_option_is_refused_naming_it_not_ignored",),
    ),
)
