"""The permanent mutant check: one-line mutants of load-bearing code, each of which its tests must kill.

Each mutant replaces one exact line of a production file, runs only the tests that guard it, and puts the
file back (always, also on Ctrl-C). A mutant survives when those tests still pass: the behaviour it breaks is
then unproven, and the check fails. A mutant whose original line is gone fails too, so the list is kept up
to date with the code.

    .venv/bin/python scripts/mutants.py            # all of them (CI)
    .venv/bin/python scripts/mutants.py --list
    .venv/bin/python scripts/mutants.py --only relay-never-merges --only fan-out-sequential
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 900


@dataclass(frozen=True, slots=True)
class Mutant:
    """Replace ``original`` (one whole line, stripped) in ``path`` by ``replacement``; ``tests`` must fail."""

    name: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]


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
    # --- the operator files: alerts (their promtool unit tests), dashboard, scrape targets (deploy/) ---
    Mutant(
        "alert-on-a-half-open-breaker",
        "deploy/prometheus/alerts.yml",
        "expr: genmesh_gateway_circuit_state == 2",
        "expr: genmesh_gateway_circuit_state >= 1",
        ("tests/test_operator_files.py",),
    ),
    Mutant(
        "alert-blind-to-a-vanished-service",
        "deploy/prometheus/alerts.yml",
        'or absent(up{service="inference"})',
        'or absent(up{service="inference", job="none"})',
        ("tests/test_operator_files.py",),
    ),
    Mutant(
        "grafana-published-on-every-interface",
        "docker-compose.observability.yml",
        '- "127.0.0.1:3000:3000"',
        '- "3000:3000"',
        ("tests/test_operator_files.py::test_the_observability_overlay_wires_prometheus_grafana_and_jaeger",),
    ),
    Mutant(
        "queue-alert-threshold-off",
        "deploy/prometheus/alerts.yml",
        "expr: genmesh_inference_num_requests_waiting / genmesh_inference_max_num_requests_waiting > 0.9",
        "expr: genmesh_inference_num_requests_waiting / genmesh_inference_max_num_requests_waiting > 0.99",
        ("tests/test_operator_files.py",),
    ),
    Mutant(
        "jobs-alert-on-a-state-label-never-set",
        "deploy/prometheus/alerts.yml",
        'expr: sum by (namespace) (increase(genmesh_gateway_jobs_finished_total{state="failed"}[15m])) > 0',
        'expr: sum by (namespace) (increase(genmesh_gateway_jobs_finished_total{state="FAILED"}[15m])) > 0',
        ("tests/test_operator_files.py",),
    ),
    Mutant(
        "target-down-alert-on-every-job",
        "deploy/prometheus/alerts.yml",
        'expr: up{service=~"gateway|retrieval|tools|inference"} == 0',
        "expr: up == 0",
        ("tests/test_operator_files.py",),
    ),
    Mutant(
        "dashboard-misspells-a-metric",
        "deploy/grafana/genmesh-dashboard.json",
        '"expr": "sum(rate(genmesh_gateway_generated_tokens_total[$__rate_interval]))",',
        '"expr": "sum(rate(genmesh_gateway_generated_token_total[$__rate_interval]))",',
        ("tests/test_operator_files.py",),
    ),
    Mutant(
        "prometheus-scrapes-the-wrong-port",
        "deploy/prometheus/prometheus.yml",
        "port: 9464",
        "port: 9090",
        ("tests/test_operator_files.py",),
    ),
    Mutant(
        "compose-gateway-serves-no-metrics",
        "docker-compose.yml",
        'environment: { GENMESH_GATEWAY_METRICS_PORT: "9464" }',
        'environment: { GENMESH_GATEWAY_METRICS_PORT: "-1" }',
        ("tests/test_operator_files.py",),
    ),
    # --- the gateway's guarded upstream call (gateway/resilience.py) ---
    Mutant(
        "probe-retried",
        "gateway/resilience.py",
        "return code in self._guard.rule.retry_codes and not (self.probe or self._committed or self.is_last())",
        "return code in self._guard.rule.retry_codes and not (self._committed or self.is_last())",
        ("tests/gateway/test_resilience.py",),
    ),
    Mutant(
        "retry-after-commit",
        "gateway/resilience.py",
        "return code in self._guard.rule.retry_codes and not (self.probe or self._committed or self.is_last())",
        "return code in self._guard.rule.retry_codes and not (self.probe or self.is_last())",
        ("tests/gateway/test_resilience.py",),
    ),
    Mutant(
        "every-attempt-counts-against-the-circuit",
        "gateway/resilience.py",
        'self._record(Outcome.of(code) if self._guard.several() else Outcome.NEUTRAL, "")',
        'self._record(Outcome.FAILURE, "")',
        ("tests/gateway/test_resilience.py",),
    ),
    Mutant(
        "backoff-not-doubling",
        "gateway/resilience.py",
        "return uniform(0.0, self.first_backoff_s * 2 ** (attempt - 1))",
        "return uniform(0.0, self.first_backoff_s * attempt)",
        ("tests/gateway/test_resilience.py",),
    ),
    Mutant(
        "retry-past-the-deadline",
        "gateway/resilience.py",
        "self.number >= self._guard.rule.attempts or left_s(self._deadline) < self.backoff_s + 2 * DEADLINE_MARGIN_S",
        "self.number >= self._guard.rule.attempts",
        ("tests/gateway/test_resilience.py",),
    ),
    # --- the gateway's stages and orchestrator ---
    Mutant(
        "require-all-stages-ignored",
        "gateway/orchestrator.py",
        'if event.HasField("degraded") and plan.require_all_stages:',
        'if event.HasField("degraded") and False:',
        ("tests/gateway/test_orchestrator.py",),
    ),
    Mutant(
        "budget-miss-not-a-failure",
        "gateway/stages/retrieval.py",
        "attempt.failed(error.code(), missed, counts=True)",
        "attempt.failed(error.code(), missed, counts=False)",
        ("tests/gateway/test_orchestrator.py",),
    ),
    Mutant(
        "non-idempotent-tool-retried",
        "gateway/stages/tools.py",
        "if attempt.may_retry(code) and context.upstreams.is_idempotent(call.name):",
        "if attempt.may_retry(code):",
        ("tests/gateway/test_orchestrator.py",),
    ),
    Mutant(
        "upstream-reason-lost",
        "genmesh/status.py",
        "error.reason = info.reason",
        "pass",
        ("tests/gateway/test_orchestrator.py", "tests/gateway/test_tool_permissions.py"),
    ),
    # --- the inference engine ---
    Mutant(
        "consumer-departure-ignored",
        "services/inference/engine/engine.py",
        "self._scheduler.abort(seq)",
        "pass",
        ("tests/inference/test_engine.py::test_consumer_going_away_frees_the_engine",),
    ),
    Mutant(
        "deadline-ignored-by-the-engine",
        "services/inference/engine/scheduler.py",
        "elif seq.deadline is not None and now >= seq.deadline:",
        "elif False:",
        (
            "tests/inference/test_engine.py"
            "::test_a_deadline_passing_mid_generation_frees_the_row_even_while_the_consumer_waits",
        ),
    ),
    Mutant(
        "inference-queue-bound-off-by-one",
        "services/inference/engine/scheduler.py",
        "if waiting >= self.config.max_waiting and running >= self.config.max_running:",
        "if waiting > self.config.max_waiting and running >= self.config.max_running:",
        (
            "tests/inference/test_engine.py::test_full_waiting_queue_raises_resource_exhausted_at_once",
            "tests/e2e/test_inference_load_bound.py",
        ),
    ),
    Mutant(
        "abort-finds-nothing",
        "services/inference/engine/engine.py",
        "return self._scheduler.abort(found[0])",
        "return True",
        ("tests/inference/test_engine.py::test_abort_cancels_a_running_request",),
    ),
    Mutant(
        "no-joining-a-running-batch",
        "services/inference/engine/scheduler.py",
        "while self._waiting and self.running_count < self.config.max_running and self.cache.can_allocate():",
        "while self._waiting and self.running_count == 0 and self.cache.can_allocate():",
        ("tests/inference/test_batching.py::test_a_new_request_joins_the_running_batch",),
    ),
    Mutant(
        "stop-sequence-split-across-tokens-missed",
        "services/inference/detokenizer.py",
        "buf = self._held + text",
        "buf = text",
        ("tests/inference/test_detokenizer.py",),
    ),
    Mutant(
        "seed-ignored",
        "services/inference/sampler.py",
        "generator.manual_seed(self.params.seed)",
        "generator.seed()",
        ("tests/inference/test_sampler.py::test_same_seed_reproduces_and_other_seeds_differ",),
    ),
    Mutant(
        "rotary-layout-not-hugging-face",
        "services/inference/models/llama.py",
        "emb = torch.cat((freqs, freqs), dim=-1)",
        "emb = torch.stack((freqs, freqs), dim=-1).flatten(-2)",
        ("tests/inference/test_llama_model.py::test_hugging_face_transformers_gives_the_same_logits",),
    ),
    Mutant(
        "gateway-drops-the-retry-hint",
        "genmesh/status.py",
        "rebuilt = errors.ResourceExhausted(message, retry_delay_s(error) or 1.0)",
        "rebuilt = errors.ResourceExhausted(message)",
        ("tests/gateway/test_orchestrator.py",),
    ),
    # --- background jobs ---
    Mutant(
        "recovery-requeues-finished-jobs",
        "gateway/jobs/sqlite_store.py",
        'requeued = db.execute("UPDATE jobs SET state = ? WHERE state = ?", (int(JobState.QUEUED), running)).rowcount',
        'requeued = db.execute("UPDATE jobs SET state = ? WHERE state IN (?, 3)", (int(JobState.QUEUED), running))'
        ".rowcount",
        ("tests/gateway/test_jobs_store.py",),
    ),
    Mutant(
        "idempotency-key-ignores-the-request",
        "gateway/jobs/sqlite_store.py",
        "if existing.request != job.request:",
        "if False:",
        ("tests/gateway/test_jobs_store.py",),
    ),
    Mutant(
        "idempotency-key-not-stored",
        "gateway/jobs/sqlite_store.py",
        "*(job.id, job.idempotency_key or None, int(JobState.QUEUED), job.priority, job.request),",
        "*(job.id, None, int(JobState.QUEUED), job.priority, job.request),",
        ("tests/gateway/test_jobs_store.py",),
    ),
    Mutant(
        "job-queue-bound-off-by-one",
        "gateway/jobs/sqlite_store.py",
        "if queued >= queue_max:",
        "if queued > queue_max:",
        ("tests/gateway/test_jobs_store.py",),
    ),
    Mutant(
        "job-writes-not-committed",
        "gateway/jobs/sqlite_store.py",
        "with self._db:  # one transaction: commit on success, roll back on error",
        'with sqlite3.connect(":memory:"):  # one transaction: commit on success, roll back on error',
        ("tests/gateway/test_jobs_store.py::test_a_store_killed_mid_write_keeps_every_acknowledged_commit",),
    ),
    Mutant(
        "retried-job-restarts-its-sequence",
        "gateway/jobs/sqlite_store.py",
        "(int(JobState.RUNNING), now, last, job_id),",
        "(int(JobState.RUNNING), now, 0, job_id),",
        ("tests/gateway/test_jobs_store.py",),
    ),
    Mutant(
        "postgres-claim-without-skip-locked",
        "gateway/jobs/postgres_store.py",
        '" ORDER BY priority DESC, seq LIMIT 1 FOR UPDATE SKIP LOCKED)"',
        '" ORDER BY priority DESC, seq LIMIT 1)"',
        ("tests/gateway/test_jobs_postgres_store.py::test_concurrent_claims_never_hand_out_a_job_twice",),
    ),
    Mutant(
        "postgres-event-written-without-the-lease",
        "gateway/jobs/postgres_store.py",
        '"WITH mine AS (SELECT id FROM jobs WHERE id = %s AND state = %s AND owner = %s AND attempts = %s"',
        "\"WITH mine AS (SELECT id FROM jobs WHERE id = %s AND state = %s AND %s::text > '' AND %s::int > 0\"",
        ("tests/gateway/test_jobs_postgres_store.py",),
    ),
    Mutant(
        "postgres-finish-without-the-lease",
        "gateway/jobs/postgres_store.py",
        'f" WHERE id = %s AND state = %s AND owner = %s AND attempts = %s RETURNING {COLUMNS}",',
        "f\" WHERE id = %s AND state = %s AND %s::text > '' AND %s::int > 0 RETURNING {COLUMNS}\",",
        ("tests/gateway/test_jobs_postgres_store.py",),
    ),
    Mutant(
        "postgres-heartbeat-does-not-extend-the-lease",
        "gateway/jobs/postgres_store.py",
        'f"UPDATE jobs SET lease_until = {_DB_NOW} + %s FROM unnest(%s::text[], %s::int[]) AS mine (id, attempt)"',
        'f"UPDATE jobs SET lease_until = lease_until + 0 * %s FROM unnest(%s::text[], %s::int[]) AS mine (id, attempt)"'
        "",
        ("tests/gateway/test_jobs_postgres_store.py",),
    ),
    Mutant(
        "job-timeout-flag-ignored",
        "gateway/jobs/config.py",
        "timeout_s=args.job_timeout,",
        "timeout_s=600.0,",
        ("tests/e2e/test_jobs_deadline_and_rewatch.py::test_a_run_past_the_job_timeout_fails_with_deadline_exceeded",),
    ),
    # --- retrieval ---
    Mutant(
        "store-not-synchronous-full",
        "services/retrieval/schema.py",
        'conn.execute("PRAGMA synchronous=FULL")',
        'conn.execute("PRAGMA synchronous=NORMAL")',
        ("tests/retrieval/test_store_promises.py::test_the_store_syncs_every_commit_to_disk",),
    ),
    Mutant(
        "upsert-acknowledged-uncommitted",
        "services/retrieval/indexes.py",
        'conn.execute("COMMIT")',
        'conn.execute("SELECT 1")',
        ("tests/retrieval/test_store_promises.py::test_an_acknowledged_upsert_is_committed",),
    ),
    Mutant(
        "ingest-commit-interval-off-by-one",
        "services/retrieval/ingest.py",
        "if self._pending_chunks >= config.ingest_batch_chunks:",
        "if self._pending_chunks > config.ingest_batch_chunks:",
        ("tests/retrieval/test_store_promises.py::test_ingest_commits_every_64_passages",),
    ),
    Mutant(
        "upsert-document-bound-off-by-one",
        "services/retrieval/validation.py",
        "if len(documents) > MAX_DOCUMENTS:",
        "if len(documents) >= MAX_DOCUMENTS:",
        ("tests/retrieval/test_store_promises.py::test_at_most_1000_documents_per_upsert",),
    ),
    Mutant(
        "stale-index-content-accepted",
        "services/retrieval/vectors.py",
        "if len(np.setdiff1d(live, stored)) or (len(extra) and options.kind is IndexKind.FLAT):",
        "if False:",
        ("tests/retrieval/test_store_promises.py::test_an_index_file_with_stale_content_is_rebuilt",),
    ),
    Mutant(
        "new-embedder-not-re-embedded",
        "services/retrieval/retriever.py",
        "if collection.embedder != self.embedder.name or collection.dim != self.embedder.dim:",
        "if collection.dim != self.embedder.dim:",
        ("tests/retrieval/test_store_promises.py::test_a_new_embedder_re_embeds_the_store",),
    ),
    # --- tools ---
    Mutant(
        "calculator-any-unary-operator",
        "services/tools/builtin/calculator.py",
        "if not isinstance(node.op, ast.UAdd | ast.USub):",
        "if False:",
        ("tests/tools/test_calculator.py::test_hostile_input_is_refused_or_computed_exactly",),
    ),
    Mutant(
        "calculator-any-binary-operator",
        "services/tools/builtin/calculator.py",
        "if type(node.op) not in _BINARY:",
        "if False:",
        ("tests/tools/test_calculator.py::test_hostile_input_is_refused_or_computed_exactly",),
    ),
    Mutant(
        "calculator-any-node",
        "services/tools/builtin/calculator.py",
        "_check_node(node, field)",
        "pass",
        ("tests/tools/test_calculator.py::test_rejections_name_the_expression_field",),
    ),
    # --- shared kit and command line ---
    Mutant(
        "documented-max-tokens-default",
        "genmesh/sampling.py",
        "DEFAULT_MAX_TOKENS = 128",
        "DEFAULT_MAX_TOKENS = 256",
        ("tests/genmesh/test_sampling_params.py",),
    ),
    Mutant(
        "faults-from-flags-and-environment-ignored",
        "genmesh/server.py",
        "config = ServerConfig(args.host, args.port, args.grace, args.faults, args.drain_delay, tls, args.reflection)",
        'config = ServerConfig(args.host, args.port, args.grace, "", args.drain_delay, tls, args.reflection)',
        ("tests/e2e/test_faults_and_health.py::test_the_environment_configures_faults",),
    ),
    Mutant(
        "health-command-always-succeeds",
        "genmesh/cli/main.py",
        'return 0 if status == "SERVING" else 1',
        "return 0",
        ("tests/e2e/test_faults_and_health.py::test_genmesh_health_exit_code",),
    ),
    # --- the gateway's relay, fan-out, admission, deadlines, breaker, request ids ---
    Mutant(
        "relay-never-merges",
        "gateway/relay.py",
        'if last is not None and last.HasField("delta") and message.HasField("delta"):',
        "if False:",
        ("tests/gateway/test_relay_stream.py", "tests/gateway/test_relay_coalescing.py"),
    ),
    Mutant(
        "relay-merges-text-quadratically",
        "gateway/relay.py",
        "self._texts.append(message.delta.text)",
        "last.delta.text += message.delta.text",
        ("tests/gateway/test_relay_stream.py",),
    ),
    Mutant(
        "relay-swallows-the-failure",
        "gateway/relay.py",
        "raise failure[0]",
        "pass",
        ("tests/gateway/test_relay_stream.py",),
    ),
    Mutant(
        "fan-out-sequential",
        "gateway/orchestrator.py",
        "async for event in merge(*(stage.run(context) for stage in fan_out)):",
        "async for event in (event for stage in fan_out async for event in stage.run(context)):",
        ("tests/gateway/test_orchestrator.py::test_retrieval_and_tools_run_concurrently",),
    ),
    Mutant(
        "admission-cap-off-by-one",
        "gateway/admission.py",
        "if self.active >= self.max_streams:",
        "if self.active > self.max_streams:",
        ("tests/gateway/test_admission.py",),
    ),
    Mutant(
        "deadline-margin-not-subtracted",
        "genmesh/deadlines.py",
        "return max(0.001, deadline - time.monotonic() - DEADLINE_MARGIN_S)",
        "return max(0.001, deadline - time.monotonic())",
        ("tests/genmesh/test_deadlines.py",),
    ),
    Mutant(
        "stage-budget-ignores-the-deadline",
        "gateway/deadlines.py",
        "return budget_s if left is None else min(left, budget_s)",
        "return budget_s",
        ("tests/genmesh/test_deadlines.py",),
    ),
    Mutant(
        "retrieval-ignores-the-deadline",
        "gateway/stages/retrieval.py",
        "call = stub.Query(query, timeout=budget_timeout(context.stage_deadline, budget_s))",
        "call = stub.Query(query, timeout=budget_s)",
        ("tests/gateway/test_guarded_calls.py",),
    ),
    Mutant(
        "circuit-never-opens",
        "gateway/circuit.py",
        "if self._probe_since is not None or self._failures >= self.config.failures:",
        "if self._probe_since is not None:",
        ("tests/gateway/test_circuit.py",),
    ),
    Mutant(
        "half-open-lets-every-call-through",
        "gateway/circuit.py",
        "if self._probe_since is not None and now - self._probe_since < self.config.cooldown_s:",
        "if False:",
        ("tests/gateway/test_circuit.py",),
    ),
    Mutant(
        "request-id-prefix-match",
        "genmesh/interceptor.py",
        "if self.request_id and not _VALID_REQUEST_ID.fullmatch(self.request_id):",
        "if self.request_id and not _VALID_REQUEST_ID.match(self.request_id):",
        ("tests/genmesh/test_request_id_rules.py",),
    ),
    Mutant(
        "request-id-field-ignored",
        "genmesh/interceptor.py",
        'rid = getattr(request, "request_id", "") if request is not None else ""',
        'rid = ""',
        ("tests/genmesh/test_request_id_rules.py",),
    ),
    Mutant(
        "generated-request-id-not-sent",
        "genmesh/interceptor.py",
        "if self.generated_id:",
        "if False:",
        ("tests/genmesh/test_request_id_rules.py",),
    ),
    Mutant(
        "sigterm-does-not-drain",
        "genmesh/server.py",
        "await asyncio.wait_for(admission.idle(), config.grace_s)",
        "await asyncio.wait_for(admission.idle(), 0)",
        ("tests/e2e/test_lifecycle.py::test_sigterm_lets_an_inflight_stream_finish",),
    ),
    Mutant(
        "retry-and-circuit-flags-ignored",
        "gateway/policy.py",
        "circuit=CircuitConfig(args.circuit_failures, args.circuit_cooldown),",
        "circuit=CircuitConfig(),",
        ("tests/e2e/test_resilience_circuit.py",),
    ),
    Mutant(
        "up-stops-everything-at-once",
        "genmesh/cli/launcher.py",
        "for group in (order[:1], order[1:]):",
        "for group in (order,):",
        ("tests/e2e/test_cli_up.py",),
    ),
    # --- draining on SIGTERM (genmesh/server.py, genmesh/interceptor.py) ---
    Mutant(
        "drain-delay-skipped",
        "genmesh/server.py",
        "await asyncio.wait_for(hurry.wait(), drain_delay_s)",
        "await asyncio.wait_for(hurry.wait(), 0)",
        ("tests/e2e/test_drain.py",),
    ),
    Mutant(
        "draining-admits-new-calls",
        "genmesh/interceptor.py",
        "if self.closed:",
        "if False:",
        ("tests/e2e/test_drain.py",),
    ),
    Mutant(
        "second-signal-does-not-hurry-the-drain",
        "genmesh/server.py",
        "(hurry if stop.is_set() else stop).set()",
        "stop.set()",
        ("tests/e2e/test_drain.py",),
    ),
    # --- inference balancing across hosts (tests/e2e/test_scale_netns.py: network namespaces, needs root) ---
    Mutant(
        "retry-goes-back-to-the-failed-replica",
        "gateway/balancing/pool.py",
        "[r for r in eligible if r.name not in tried],",
        "eligible,",
        ("tests/e2e/test_scale_netns.py::test_netns_a_replica_failing_every_call_is_routed_around",),
    ),
    Mutant(
        "draining-replica-kept-in-rotation",
        "gateway/balancing/pool.py",
        "eligible = [r for r in replicas if r.eligible()]",
        "eligible = replicas",
        ("tests/e2e/test_scale_netns.py::test_netns_drain_of_a_replica_under_load",),
    ),
    Mutant(
        "least-load-takes-the-first-replica",
        "gateway/balancing/choice.py",
        "return self._rng.choice([i for i, score in enumerate(scores) if score == lowest])",
        "return 0",
        ("tests/e2e/test_scale_netns.py::test_netns_least_load_beats_round_robin_on_unequal_replicas",),
    ),
    Mutant(
        "load-stream-outlives-the-drain",
        "services/inference/load_feed.py",
        "if not current.accepting:",
        "if False:",
        ("tests/inference/test_load_feed.py",),
    ),
    Mutant(
        "dns-target-never-re-resolved",
        "gateway/balancing/pool.py",
        "await asyncio.sleep(RESOLVE_EVERY_S)",
        "await asyncio.Event().wait()",
        (
            "tests/gateway/test_inference_balancing.py::test_a_replica_that_joins_the_dns_name_gets_calls_within_seconds",
        ),
    ),
    # --- per-key limits (gateway/auth/limits.py) ---
    Mutant(
        "key-tokens-not-charged-per-delta",
        "gateway/server.py",
        "meter.charge(len(event.delta.token_ids))",
        "meter.charge(1)",
        (
            "tests/gateway/test_key_limits_grpc.py::test_tokens_are_charged_as_they_stream_and_a_long_answer_makes_the_next_request_wait",
        ),
    ),
    Mutant(
        "key-stream-slot-never-released",
        "gateway/auth/limits.py",
        "state.streams -= 1",
        "pass",
        (
            "tests/gateway/test_key_limits.py::test_concurrent_streams_are_counted_and_released_however_they_end",
            "tests/gateway/test_key_limits_grpc.py::test_max_streams_then_refused_then_a_cancel_frees_a_slot_and_nothing_is_lost",
        ),
    ),
    Mutant(
        "key-retry-after-ignores-the-level",
        "gateway/auth/limits.py",
        "return (need - self.level) / self.rate",
        "return need / self.rate",
        ("tests/gateway/test_key_limits.py",),
    ),
    Mutant(
        "job-submit-reserves-no-tokens",
        "gateway/jobs/service.py",
        "self._key_limits.admit_request(caller, reserve_tokens=plan.sampling.max_tokens)",
        "self._key_limits.admit_request(caller)",
        ("tests/gateway/test_key_limits_jobs.py",),
    ),
    Mutant(
        "submit-job-costs-no-request",
        "gateway/jobs/service.py",
        "self._key_limits.admit_request(caller, reserve_tokens=plan.sampling.max_tokens)",
        "pass",
        ("tests/gateway/test_key_limits_jobs.py::test_submit_job_costs_a_request_of_its_key",),
    ),
    Mutant(
        "invalid-generate-costs-a-request",
        "gateway/server.py",
        "plan_request(request, None, allowed_tools=caller.allowed_tools)",
        "pass",
        ("tests/gateway/test_key_limits_grpc.py::test_an_invalid_generate_costs_its_key_nothing",),
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
    # --- issue #13 hardening: stage share of the deadline, the inference queue bound, job sequences ---
    Mutant(
        "stages-take-the-whole-client-deadline",
        "gateway/deadlines.py",
        "return now + max(0.0, deadline - now) * self.deadline_share",
        "return deadline",
        ("tests/genmesh/test_deadlines.py", "tests/e2e/test_resilience_deadline_share.py"),
    ),
    Mutant(
        "load-counts-a-reserved-row-as-waiting",
        "services/inference/engine/scheduler.py",
        "reserved = min(len(self._waiting), max(0, self.config.max_running - holding))",
        "reserved = 0",
        ("tests/inference/test_scheduler.py",),
    ),
    Mutant(
        "retried-job-numbers-from-one",
        "gateway/jobs/workers.py",
        "seq = job.seq_base",
        "seq = 0",
        ("tests/gateway/test_jobs_sequences.py",),
    ),
    Mutant(
        "postgres-retried-job-restarts-its-sequence",
        "gateway/jobs/postgres_store.py",
        '" seq_base = GREATEST(seq_base, (SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = jobs.id))"',
        '" seq_base = 0"',
        ("tests/gateway/test_jobs_sequences.py",),
    ),
    # --- job ownership and tool permissions (#13) ---
    Mutant(
        "jobs-list-ignores-owner",
        "gateway/jobs/sqlite_store.py",
        'where.append("owner_key = ?")',
        'where.append("? IS NOT NULL")',
        ("tests/gateway/test_jobs_owners_store.py", "tests/gateway/test_jobs_ownership.py"),
    ),
    Mutant(
        "postgres-jobs-list-ignores-owner",
        "gateway/jobs/postgres_store.py",
        '" AND (%s::text IS NULL OR owner_key = %s::text) ORDER BY seq DESC LIMIT %s",',
        '" AND (%s::text IS NULL OR %s::text IS NOT NULL) ORDER BY seq DESC LIMIT %s",',
        ("tests/gateway/test_jobs_owners_store.py",),
    ),
    Mutant(
        "idempotency-key-shared-by-owners",
        "gateway/jobs/sqlite_store.py",
        'existing = _one(db, "owner_key = ? AND idempotency_key = ?", (job.owner, job.idempotency_key))',
        'existing = _one(db, "? IS NOT NULL AND idempotency_key = ?", (job.owner, job.idempotency_key))',
        ("tests/gateway/test_jobs_owners_store.py", "tests/gateway/test_jobs_ownership.py"),
    ),
    Mutant(
        "jobs-get-ignores-owner",
        "gateway/jobs/runtime.py",
        "if record is None or (owner is not None and record.owner != owner):",
        "if record is None:",
        ("tests/gateway/test_jobs_ownership.py",),
    ),
    Mutant(
        "jobs-admin-sees-only-its-own",
        "gateway/jobs/service.py",
        "return None if caller is None or caller.admin else caller.key_name",
        "return None if caller is None else caller.key_name",
        ("tests/gateway/test_jobs_ownership.py",),
    ),
    Mutant(
        "tool-permission-unchecked",
        "gateway/request.py",
        "permitted = may_call_tool(allowed_tools, call.name)",
        "permitted = True",
        ("tests/gateway/test_tool_permissions.py",),
    ),
    Mutant(
        "disallowed-tool-call-still-sent",
        "gateway/stages/tools.py",
        "pending = [call for call in context.plan.tool_calls if call.permitted]",
        "pending = list(context.plan.tool_calls)",
        ("tests/gateway/test_tool_permissions.py",),
    ),
    Mutant(
        "job-runs-with-every-tool",
        "gateway/jobs/workers.py",
        "async for event in self._answer(request, self._timeout_s, job.allowed_tools):",
        "async for event in self._answer(request, self._timeout_s, frozenset()):",
        ("tests/gateway/test_tool_permissions.py",),
    ),
    # --- API keys (gateway/auth/keys.py, gateway/auth/interceptor.py) ---
    Mutant(
        "api-key-secret-not-compared",
        "gateway/auth/keys.py",
        "matches = hmac.compare_digest(hash_secret(secret, salt), expected)",
        "matches = True",
        ("tests/security/test_api_key_stores.py",),
    ),
    Mutant(
        "api-key-compared-in-variable-time",
        "gateway/auth/keys.py",
        "matches = hmac.compare_digest(hash_secret(secret, salt), expected)",
        "matches = hash_secret(secret, salt) == expected",
        ("tests/security/test_api_key_stores.py",),
    ),
    Mutant(
        "revoked-api-key-accepted",
        "gateway/auth/keys.py",
        "if record.revoke_time is not None:",
        "if False:",
        ("tests/security/test_api_key_stores.py", "tests/security/test_api_key_service.py"),
    ),
    Mutant(
        "api-key-scope-unchecked",
        "gateway/auth/interceptor.py",
        "if scope not in caller.scopes:",
        "if False:",
        ("tests/security/test_api_key_service.py",),
    ),
    Mutant(
        "api-key-changes-need-a-restart",
        "gateway/auth/file_keys.py",
        "if signature != self._signature:",
        "if self._signature is None:",
        ("tests/security/test_api_key_stores.py",),
    ),
    # --- TLS (genmesh/tls.py, genmesh/server.py, genmesh/channels.py) ---
    Mutant(
        "tls-files-never-reloaded",
        "genmesh/tls.py",
        "if not self._requested and signature == self._signature:",
        "if True:",
        ("tests/security/test_tls_rotation.py",),
    ),
    Mutant(
        "tls-sighup-ignored",
        "genmesh/tls.py",
        "self._requested = True",
        "self._requested = False",
        ("tests/security/test_tls_rotation.py",),
    ),
    Mutant(
        "tls-half-rotation-accepted",
        "genmesh/tls.py",
        "if private.public_key().public_bytes(*_SPKI) != chain[0].public_key().public_bytes(*_SPKI):",
        "if False:",
        ("tests/security/test_tls_rotation.py",),
    ),
    Mutant(
        "tls-client-certificate-not-required",
        "genmesh/tls.py",
        "require_client_authentication=self.tls.client_auth is ClientAuth.REQUIRE,",
        "require_client_authentication=False,",
        ("tests/security/test_tls_handshakes.py",),
    ),
    Mutant(
        "tls-server-name-not-checked",
        "genmesh/channels.py",
        "if tls.server_name:",
        "if False:",
        ("tests/security/test_tls_handshakes.py",),
    ),
    Mutant(
        "plaintext-beyond-loopback-not-warned",
        "genmesh/server.py",
        "if not is_loopback(config.host):",
        "if False:",
        ("tests/security/test_tls_handshakes.py",),
    ),
    # --- input hardening (issue #13): malformed bytes, bounded statuses and logs, call_id, reflection ---
    Mutant(
        "malformed-request-parsed-by-grpc",
        "genmesh/interceptor.py",
        "guarded(handler.request_deserializer),",
        "handler.request_deserializer,",
        ("tests/genmesh/test_interceptor_hardening.py",),
    ),
    Mutant(
        "malformed-request-stream-unchecked",
        "genmesh/interceptor.py",
        "return checked(request)",
        "return request",
        ("tests/genmesh/test_interceptor_hardening.py",),
    ),
    Mutant(
        "rejected-request-id-logged",
        "genmesh/interceptor.py",
        "REQUEST_ID.set(self.request_id)  # and never the rejected one, which may be a megabyte",
        "pass",
        ("tests/genmesh/test_interceptor_hardening.py",),
    ),
    Mutant(
        "status-violations-unbounded",
        "genmesh/status.py",
        "if kept and size > MAX_VIOLATIONS_BYTES:",
        "if False:",
        ("tests/genmesh/test_status_bounds.py",),
    ),
    Mutant(
        "status-message-unbounded",
        "genmesh/status.py",
        "message = bounded(error.message, MAX_MESSAGE_BYTES)",
        "message = error.message",
        ("tests/genmesh/test_status_bounds.py",),
    ),
    Mutant(
        "quote-copies-whole",
        "genmesh/errors.py",
        'return f"{text[:limit]!r}… ({len(text)} characters)"',
        "return repr(text)",
        ("tests/genmesh/test_status_bounds.py",),
    ),
    Mutant(
        "log-values-unbounded",
        "genmesh/logs.py",
        'return f"{text[:limit]}… ({len(text)} characters)"',
        "return value",
        ("tests/security/test_bounded_logs.py::test_the_formatters_bound_messages_and_fields",),
    ),
    Mutant(
        "call-id-unbounded",
        "genmesh/limits.py",
        "if _CALL_ID.fullmatch(call_id):",
        "if True:",
        ("tests/genmesh/test_call_id_bound.py",),
    ),
    Mutant(
        "reflection-v1-not-served",
        "genmesh/reflection.py",
        '(grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1}),)',
        "()",
        ("tests/genmesh/test_interceptor_hardening.py",),
    ),
    Mutant(
        "reflection-not-switchable",
        "genmesh/server.py",
        "if config.reflection:",
        "if True:",
        ("tests/security/test_reflection.py::test_reflection_off",),
    ),
    Mutant(
        "stage-failure-loses-the-tool-reason",
        "gateway/stages/tools.py",
        "return gateway_pb2.GatewayEvent(tool_result=result), degraded(_stage(call), code, message, error.status)",
        "return gateway_pb2.GatewayEvent(tool_result=result), degraded(_stage(call), code, message)",
        ("tests/gateway/test_tool_permissions.py",),
    ),
    # --- the CLI's API key (genmesh/bearer.py, genmesh/cli/rpc_errors.py) ---
    Mutant(
        "cli-api-key-not-sent",
        "genmesh/bearer.py",
        "metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._metadata)",
        "metadata = grpc.aio.Metadata(*(details.metadata or ()))",
        (
            "tests/security/test_cli_security.py::test_ask_streams_an_answer_with_a_key_from_the_flag_or_the_environment",
        ),
    ),
    Mutant(
        "api-key-on-unary-calls-only",
        "genmesh/bearer.py",
        "return [kind(api_key) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]",
        "return [kind(api_key) for kind in (_UnaryUnary,)]",
        ("tests/genmesh/test_bearer.py",),
    ),
    Mutant(
        "cli-unauthenticated-without-a-hint",
        "genmesh/cli/rpc_errors.py",
        "if error.code() == grpc.StatusCode.UNAUTHENTICATED:",
        "if False:",
        ("tests/security/test_cli_security.py::test_ask_without_a_valid_key_fails_and_says_how_to_give_one",),
    ),
    # --- API key review (#13): the Postgres keys in memory, the key file's owner, bounded quota values ---
    Mutant(
        "api-keys-read-on-every-call",
        "gateway/auth/postgres_keys.py",
        "if self._loaded_at is not None and now - self._loaded_at < self._refresh_s:",
        "if False:",
        ("tests/security/test_api_key_postgres_refresh.py",),
    ),
    Mutant(
        "api-key-loads-not-shared",
        "gateway/auth/postgres_keys.py",
        "if self._loading is None:",
        "if True:",
        ("tests/security/test_api_key_postgres_refresh.py",),
    ),
    Mutant(
        "api-key-own-writes-wait-a-second",
        "gateway/auth/postgres_keys.py",
        "self._loading = self._loaded_at = self._failed_at = None",
        "self._loading = self._failed_at = None",
        ("tests/security/test_api_key_postgres_refresh.py",),
    ),
    Mutant(
        "database-error-text-to-the-client",
        "gateway/postgres.py",
        "raise Unavailable(self.unavailable_message) from error",
        'raise Unavailable(f"{self.unavailable_message}: {error}") from error',
        ("tests/security/test_api_key_postgres_refresh.py",),
    ),
    Mutant(
        "api-key-file-rewritten-as-the-writers",
        "gateway/auth/file_keys.py",
        "os.fchown(fd, old.st_uid, old.st_gid)",
        "pass",
        ("tests/security/test_api_key_stores.py::test_a_rewrite_by_root_keeps_the_gateway_users_file",),
    ),
    Mutant(
        "api-key-file-unreadable-is-internal",
        "gateway/auth/file_keys.py",
        "except OSError as error:",
        "except FileNotFoundError as error:",
        ("tests/security/test_api_key_stores.py::test_an_unreadable_file_keeps_the_keys_last_read",),
    ),
    Mutant(
        "api-key-quota-unbounded",
        "gateway/auth/keys.py",
        "if value is not None and not 0 <= value <= largest:",
        "if value is not None and value < 0:",
        ("tests/security/test_api_key_bounds.py",),
    ),
    # --- Prometheus metrics (issue #14): RPC metrics, the /metrics server, the inference engine's metrics ---
    Mutant(
        "rpc-metrics-never-end",
        "genmesh/interceptor.py",
        "self._metrics.end(self.code, duration_s)",
        "pass",
        ("tests/genmesh/test_rpc_metrics.py",),
    ),
    Mutant(
        "rpc-in-flight-never-decremented",
        "genmesh/metrics/rpc.py",
        "self._in_flight.dec()",
        "pass",
        ("tests/genmesh/test_rpc_metrics.py::test_a_cancelled_stream_is_in_flight_until_it_ends_cancelled",),
    ),
    Mutant(
        "metrics-off-still-counted",
        "genmesh/server.py",
        "rpc_metrics = None if metrics is None else RpcMetrics(metrics)",
        "rpc_metrics = RpcMetrics(process_metrics())",
        ("tests/genmesh/test_rpc_metrics.py::test_metrics_off_serve_nothing_and_count_nothing",),
    ),
    Mutant(
        "metrics-not-served",
        "genmesh/server.py",
        "exporter = MetricsServer(metrics, config.host, config.metrics_port)",
        "exporter = None",
        ("tests/genmesh/test_rpc_metrics.py::test_process_metrics_are_served",),
    ),
    Mutant(
        "ttft-observed-at-every-token",
        "services/inference/engine/output.py",
        "first = out.first_token_at is None",
        "first = True",
        ("tests/inference/test_engine_metrics.py",),
    ),
    Mutant(
        "queue-time-not-observed",
        "services/inference/engine/output.py",
        "self._metrics.queued(now - out.arrival)",
        "pass",
        ("tests/inference/test_engine_metrics.py",),
    ),
    Mutant(
        "engine-load-not-reported",
        "services/inference/engine/engine.py",
        "metrics.attach(self._scheduler.load, self.config)",
        "pass",
        ("tests/inference/test_engine_metrics.py::test_occupancy_gauges_read_the_load_snapshot_at_scrape_time",),
    ),
    Mutant(
        "cancelled-counted-as-completed",
        "services/inference/metrics.py",
        "if done.finish_reason is FinishReason.CANCELLED:",
        "if False:",
        ("tests/inference/test_engine_metrics.py",),
    ),
    # --- the retrieval and tools services' metrics (issue #14) ---
    Mutant(
        "retrieval-query-mode-mislabelled",
        "services/retrieval/metrics.py",
        "self._by_mode[mode].observe(seconds)",
        "self._by_mode[SearchMode.HYBRID].observe(seconds)",
        ("tests/retrieval/test_retrieval_metrics.py::test_queries_batches_ingest_rebuilds_and_passages",),
    ),
    Mutant(
        "retrieval-batch-size-not-observed",
        "services/retrieval/batcher.py",
        "self._observe(len(batch))",
        "pass",
        ("tests/retrieval/test_retrieval_metrics.py::test_queries_batches_ingest_rebuilds_and_passages",),
    ),
    Mutant(
        "retrieval-ingested-bytes-are-characters",
        "services/retrieval/retriever.py",
        "self._metrics.ingested(len(vectors), sum(len(p.document.text.encode()) for p in prepared))",
        "self._metrics.ingested(len(vectors), sum(len(p.document.text) for p in prepared))",
        ("tests/retrieval/test_retrieval_metrics.py::test_queries_batches_ingest_rebuilds_and_passages",),
    ),
    Mutant(
        "retrieval-rebuild-not-counted",
        "services/retrieval/indexes.py",
        "self._metrics.rebuilt(seconds)",
        "pass",
        ("tests/retrieval/test_retrieval_metrics.py::test_queries_batches_ingest_rebuilds_and_passages",),
    ),
    Mutant(
        "retrieval-passages-not-reported",
        "services/retrieval/server.py",
        "metrics.watch_store(config.data_dir / DATABASE_FILE)",
        "pass",
        ("tests/retrieval/test_retrieval_metrics.py::test_queries_batches_ingest_rebuilds_and_passages",),
    ),
    Mutant(
        "retrieval-metrics-off-still-recorded",
        "services/retrieval/server.py",
        "metrics = None if registry is None else RetrievalMetrics(registry)",
        'metrics = RetrievalMetrics(__import__("genmesh.metrics").metrics.process_metrics())',
        ("tests/retrieval/test_retrieval_metrics.py::test_with_metrics_off_nothing_is_recorded",),
    ),
    Mutant(
        "tools-unknown-names-become-labels",
        "services/tools/metrics.py",
        "tool = name if self._knows(name) else UNKNOWN",
        "tool = name",
        ("tests/tools/test_tools_metrics.py::test_calls_by_tool_and_code_with_unknown_names_in_one_series",),
    ),
    Mutant(
        "tools-failed-invoke-counted-ok",
        "services/tools/server.py",
        "metrics.called(request.call.name, code_of(error), time.perf_counter() - started)",
        "metrics.called(request.call.name, grpc.StatusCode.OK, time.perf_counter() - started)",
        ("tests/tools/test_tools_metrics.py::test_calls_by_tool_and_code_with_unknown_names_in_one_series",),
    ),
    Mutant(
        "tools-invoke-many-not-counted",
        "services/tools/server.py",
        "self.metrics.called(outcome.call.name, code_of(outcome.error), outcome.duration_ms / 1000.0)",
        "pass",
        ("tests/tools/test_tools_metrics.py::test_calls_by_tool_and_code_with_unknown_names_in_one_series",),
    ),
    Mutant(
        "tools-metrics-off-still-counted",
        "services/tools/server.py",
        "metrics = None if registry is None else ToolsMetrics(registry, self._registry.knows)",
        'metrics = ToolsMetrics(__import__("genmesh.metrics").metrics.process_metrics(), self._registry.knows)',
        ("tests/tools/test_tools_metrics.py::test_with_metrics_off_no_call_is_counted",),
    ),
    Mutant(
        "mcp-server-always-up",
        "services/tools/metrics.py",
        "family.add_metric([provider.config.name], 1.0 if provider.available else 0.0)",
        "family.add_metric([provider.config.name], 1.0)",
        ("tests/tools/test_tools_metrics.py::test_an_mcp_server_that_dies_is_down_until_its_provider_restarts_it",),
    ),
    Mutant(
        "mcp-restarts-not-counted",
        "services/tools/mcp_provider.py",
        "self._restarted(self.config.name)",
        "pass",
        ("tests/tools/test_tools_metrics.py::test_an_mcp_server_that_dies_is_down_until_its_provider_restarts_it",),
    ),
    # --- the gateway's metrics and stage spans (issue #14: gateway/metrics.py, gauges.py, stages/span.py) ---
    Mutant(
        "gateway-ttft-not-observed",
        "gateway/orchestrator.py",
        "metrics.first_token(ttft_ms / 1000.0)",
        "pass",
        ("tests/gateway/test_gateway_metrics.py::test_an_answer_is_timed_per_stage_and_its_tokens_counted",),
    ),
    Mutant(
        "gateway-degraded-answer-not-counted",
        "gateway/orchestrator.py",
        "metrics.degraded(event.degraded)",
        "pass",
        (
            "tests/gateway/test_gateway_metrics.py::test_degraded_stages_are_counted_by_stage_and_code_and_the_breaker_opens",
        ),
    ),
    Mutant(
        "gateway-retry-not-counted",
        "gateway/resilience.py",
        "self._guard.retried()",
        "pass",
        ("tests/gateway/test_gateway_metrics.py::test_retries_are_counted_per_upstream",),
    ),
    Mutant(
        "gateway-refusal-not-counted",
        "gateway/server.py",
        "with counting_refusals(self.metrics):",
        "with counting_refusals(None):",
        ("tests/gateway/test_gateway_metrics.py::test_a_stream_past_the_limit_is_counted_as_refused",),
    ),
    Mutant(
        "gateway-job-outcome-not-recorded",
        "gateway/jobs/workers.py",
        "self.metrics.job_finished(outcome.state, elapsed)",
        "self.metrics.job_finished(JobState.SUCCEEDED, elapsed)",
        ("tests/gateway/test_gateway_metrics.py::test_jobs_are_gauged_by_state_and_timed_when_they_finish",),
    ),
    Mutant(
        "gateway-gauges-never-read-again",
        "gateway/gauges.py",
        "if now - self._read_at < MAX_AGE_S or self._loop.is_closed() or self._on_loop():",
        "if self._snapshot is not None or self._loop.is_closed() or self._on_loop():",
        ("tests/gateway/test_gateway_metrics.py::test_each_replica_reports_its_load_health_and_breaker",),
    ),
    Mutant(
        "gateway-gauges-wait-for-the-job-store",
        "gateway/gauges.py",
        "return await asyncio.wait_for(jobs.count_by_state(), JOBS_WAIT_S)",
        "return await jobs.count_by_state()",
        ("tests/gateway/test_gateway_metrics.py::test_upstream_gauges_go_on_while_the_job_store_hangs",),
    ),
    Mutant(
        "gateway-inference-circuit-of-its-worst-replica",
        "gateway/gauges.py",
        "circuits[mesh.INFERENCE.name] = min((r.breaker.state for r in replicas), key=CIRCUIT_VALUES.__getitem__)",
        "circuits[mesh.INFERENCE.name] = max((r.breaker.state for r in replicas), key=CIRCUIT_VALUES.__getitem__)",
        ("tests/gateway/test_gateway_metrics.py::test_each_replica_reports_its_load_health_and_breaker",),
    ),
    Mutant(
        "stage-span-never-current",
        "gateway/stages/span.py",
        "token = otel_context.attach(trace.set_span_in_context(self._span))",
        "token = otel_context.attach(otel_context.get_current())",
        (
            "tests/gateway/test_stage_spans.py::test_stages_nest_under_the_server_span_and_calls_under_their_stage_in_time_order",
        ),
    ),
    Mutant(
        "stage-span-degraded-not-an-error",
        "gateway/stages/span.py",
        "if self._marked or not self._span.is_recording():",
        "if True:",
        ("tests/gateway/test_stage_spans.py::test_a_degraded_stage_is_an_error_span_with_its_code",),
    ),
    Mutant(
        "stage-span-outside-any-trace",
        "gateway/stages/span.py",
        "if tracing.enabled() and trace.get_current_span().get_span_context().is_valid:",
        "if tracing.enabled():",
        ("tests/gateway/test_stage_spans.py::test_a_stage_makes_a_span_only_inside_a_trace",),
    ),
    Mutant(
        "stage-latency-from-other-clock-points",
        "gateway/stages/span.py",
        "self._observe(elapsed_ns / 1e9)",
        "self._observe((time.perf_counter_ns() - self._start_ns) / 1e9 + 1e-5)",
        ("tests/gateway/test_stage_spans.py::test_the_stage_latency_is_the_span_duration",),
    ),
    # --- traces (issue #14): genmesh/tracing, its wiring in server.py, channels.py, logs.py ---
    Mutant(
        "trace-no-server-spans",
        "genmesh/server.py",
        "traced = [TracingInterceptor()] if tracing.enabled() else []  # first: the RPC's log line is inside its span",
        "traced = []",
        ("tests/genmesh/test_tracing.py",),
    ),
    Mutant(
        "trace-not-installed-by-run",
        "genmesh/server.py",
        "with installed(name, trace_settings):  # before build(): the channels it opens trace; flushed at the end",
        "with contextlib.nullcontext():",
        ("tests/genmesh/test_tracing_process.py",),
    ),
    Mutant(
        "trace-channels-untraced",
        "genmesh/channels.py",
        "return TracedChannel(channel) if tracing.enabled() else channel",
        "return channel",
        ("tests/genmesh/test_tracing.py",),
    ),
    Mutant(
        "trace-context-not-sent",
        "genmesh/tracing/client.py",
        "call = self._inner(*args, metadata=grpc.aio.Metadata(*(metadata or ()), *carrier.items()), **kwargs)",
        "call = self._inner(*args, metadata=metadata, **kwargs)",
        ("tests/genmesh/test_tracing.py",),
    ),
    Mutant(
        "trace-server-streams-untraced-on-the-client",
        "genmesh/tracing/client.py",
        "return _TracedMultiCallable(self._channel.unary_stream(method, *args, **kwargs), method)",
        "return self._channel.unary_stream(method, *args, **kwargs)",
        ("tests/genmesh/test_tracing.py",),
    ),
    Mutant(
        "trace-background-calls-start-traces",
        "genmesh/tracing/client.py",
        "if not trace.get_current_span().get_span_context().is_valid:",
        "if False:",
        ("tests/genmesh/test_tracing.py",),
    ),
    Mutant(
        "trace-client-failures-not-errors",
        "genmesh/tracing/client.py",
        "end_rpc_span(span, code, code != grpc.StatusCode.OK, end_time)",
        "end_rpc_span(span, code, False, end_time)",
        ("tests/genmesh/test_tracing.py",),
    ),
    Mutant(
        "trace-caller-context-replaced",
        "genmesh/tracing/server.py",
        "name, PROPAGATOR.extract(carrier), kind=trace.SpanKind.SERVER, attributes=attributes",
        "name, None, kind=trace.SpanKind.SERVER, attributes=attributes",
        ("tests/genmesh/test_tracing.py",),
    ),
    Mutant(
        "trace-server-span-not-current",
        "genmesh/tracing/server.py",
        "self._token = otel_context.attach(self._current)",
        "self._token = otel_context.attach(otel_context.get_current())",
        ("tests/genmesh/test_tracing.py",),
    ),
    Mutant(
        "trace-caller-mistakes-are-server-errors",
        "genmesh/tracing/server.py",
        "end_rpc_span(self.span, code, code in SERVER_FAULTS)",
        "end_rpc_span(self.span, code, code != grpc.StatusCode.OK)",
        ("tests/genmesh/test_tracing.py",),
    ),
    Mutant(
        "trace-ratio-ignored",
        "genmesh/tracing/__init__.py",
        "provider = TracerProvider(resource=resource, sampler=ParentBased(ratio, **edge))",
        "provider = TracerProvider(resource=resource)",
        ("tests/genmesh/test_tracing.py",),
    ),
    Mutant(
        "trace-gateway-follows-the-client-flag",
        "genmesh/tracing/__init__.py",
        'edge = {"remote_parent_sampled": ratio, "remote_parent_not_sampled": ratio} if service == "gateway" else {}',
        "edge = {}",
        ("tests/genmesh/test_tracing_flags.py",),
    ),
    Mutant(
        "trace-ids-not-logged",
        "genmesh/logs.py",
        "if span.is_valid:",
        "if False:",
        ("tests/genmesh/test_tracing.py",),
    ),
    # --- engine phase spans and job traces (issue #14: services/inference/engine/spans.py, gateway/jobs/) ---
    Mutant(
        "engine-spans-never-made",
        "services/inference/engine/engine.py",
        "spans = PhaseSpans() if tracing.enabled() else None",
        "spans = None",
        ("tests/inference/test_engine_spans.py",),
    ),
    Mutant(
        "engine-spans-lose-their-parent",
        "services/inference/engine/spans.py",
        "self._parent = otel_context.get_current()",
        "self._parent = otel_context.Context()",
        ("tests/inference/test_engine_spans.py",),
    ),
    Mutant(
        "engine-spans-on-the-monotonic-clock",
        "services/inference/engine/spans.py",
        "self._offset_ns = time.time_ns() - time.monotonic_ns()",
        "self._offset_ns = 0",
        ("tests/inference/test_engine_spans.py",),
    ),
    Mutant(
        "queued-span-lasts-the-whole-request",
        "services/inference/engine/spans.py",
        "(QUEUED, out.arrival, started if started is not None else end, {})",
        "(QUEUED, out.arrival, end, {})",
        ("tests/inference/test_engine_spans.py",),
    ),
    Mutant(
        "prefill-batch-size-not-recorded",
        "services/inference/engine/output.py",
        "out.prefill_batch = prefill_batch",
        "out.prefill_batch = 1",
        ("tests/inference/test_engine_spans.py",),
    ),
    Mutant(
        "a-client-leaving-is-an-engine-error",
        "services/inference/engine/spans.py",
        "elif error is None or isinstance(error, asyncio.CancelledError | GeneratorExit):",
        "elif error is None:",
        ("tests/inference/test_engine_spans.py",),
    ),
    Mutant(
        "job-keeps-no-traceparent",
        "gateway/jobs/runtime.py",
        "traceparent=current_traceparent(),",
        'traceparent="",',
        ("tests/gateway/test_job_traces.py",),
    ),
    Mutant(
        "stored-traceparent-not-read-back",
        "gateway/jobs/store.py",
        "traceparent=row[17],",
        'traceparent="",',
        ("tests/gateway/test_job_traces.py",),
    ),
    Mutant(
        "job-run-starts-a-trace-of-its-own",
        "gateway/jobs/tracing.py",
        "stored_context(job.traceparent),",
        'stored_context(""),',
        ("tests/gateway/test_job_traces.py",),
    ),
    Mutant(
        "job-run-resampled-as-a-client-trace",
        "genmesh/tracing/stored.py",
        "local = trace.SpanContext(parent.trace_id, parent.span_id, False, parent.trace_flags, parent.trace_state)",
        "local = trace.SpanContext(parent.trace_id, parent.span_id, True, parent.trace_flags, parent.trace_state)",
        ("tests/gateway/test_job_traces.py::test_an_unsampled_submit_leaves_the_run_unrecorded_too",),
    ),
    Mutant(
        "job-run-attempt-always-1",
        "gateway/jobs/tracing.py",
        "attributes={JOB_ID: job.id, ATTEMPT: job.attempts},",
        "attributes={JOB_ID: job.id, ATTEMPT: 1},",
        ("tests/gateway/test_job_traces.py",),
    ),
    Mutant(
        "failed-job-run-not-an-error",
        "gateway/jobs/tracing.py",
        "if outcome is not None and outcome.state is JobState.FAILED:",
        "if False:",
        ("tests/gateway/test_job_traces.py",),
    ),
    Mutant(
        "sqlite-traceparent-not-migrated",
        "gateway/jobs/sqlite_store.py",
        "_add_traceparent(db)",
        "pass",
        ("tests/gateway/test_job_traces.py",),
    ),
    Mutant(
        "postgres-traceparent-not-migrated",
        "gateway/jobs/postgres_store.py",
        "ALTER TABLE jobs ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';",
        "NULL;",
        ("tests/gateway/test_job_traces.py",),
    ),
    Mutant(  # the ALTER TABLE of every start again (ACCESS EXCLUSIVE: it waits for every reader)
        "postgres-traceparent-migration-locks-every-start",
        "gateway/jobs/postgres_store.py",
        "WHERE table_schema = current_schema() AND table_name = 'jobs' AND column_name = 'traceparent') THEN",
        "WHERE FALSE) THEN ALTER TABLE jobs ADD COLUMN IF NOT EXISTS traceparent TEXT NOT NULL DEFAULT '';"
        " ELSIF FALSE THEN",
        ("tests/gateway/test_job_traces.py::test_a_gateway_starting_on_a_migrated_queue_waits_for_no_reader",),
    ),
    # --- the gateway's MeshService and `genmesh status` (gateway/mesh_status.py, gateway/mesh_probe.py) ---
    Mutant(
        "health-check-tells-no-version",
        "genmesh/interceptor.py",
        "self.context.set_trailing_metadata(((VERSION_HEADER, version()),))  # MeshService reports it",
        "pass",
        ("tests/gateway/test_mesh_status.py",),
    ),
    Mutant(
        "mesh-probe-ignores-callers-deadline",
        "gateway/mesh_status.py",
        "return max(MIN_PROBE_TIMEOUT_S, min(PROBE_TIMEOUT_S, time_remaining - DEADLINE_MARGIN_S))",
        "return PROBE_TIMEOUT_S",
        ("tests/gateway/test_mesh_status.py",),
    ),
    Mutant(
        "mesh-status-fails-on-a-down-replica",
        "genmesh/health.py",
        "return Health(error=error)",
        "raise",
        ("tests/gateway/test_mesh_status.py",),
    ),
    Mutant(
        "mesh-status-fails-on-a-retired-replica",
        "gateway/mesh_probe.py",
        "if task is not None and task.cancelling():",
        "if True:",
        ("tests/gateway/test_mesh_status.py::test_a_replica_retired_while_probed_is_shown_not_serving",),
    ),
    Mutant(
        "mesh-probe-swallows-the-callers-cancellation",
        "gateway/mesh_probe.py",
        "if task is not None and task.cancelling():",
        "if False:",
        ("tests/gateway/test_mesh_status.py::test_a_probe_still_ends_when_its_caller_is_cancelled",),
    ),
    Mutant(
        "mesh-probe-fails-on-an-unknown-health-status",
        "genmesh/health.py",
        'return Health(f"STATUS_{response.status}" if known is None else known.name, version)',
        "return Health(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status), version)",
        ("tests/gateway/test_mesh_status.py::test_a_health_status_the_gateway_does_not_know_is_not_serving",),
    ),
    Mutant(
        "mesh-status-probes-after-resolving-get-the-whole-deadline",
        "gateway/mesh_status.py",
        "left_s = max(MIN_PROBE_TIMEOUT_S, deadline - time.monotonic())",
        "left_s = timeout_s",
        ("tests/gateway/test_mesh_status.py::test_resolving_a_target_and_probing_it_share_the_callers_deadline",),
    ),
    Mutant(
        "mesh-status-ignores-the-circuit",
        "gateway/mesh_probe.py",
        "if circuit is not None and circuit is not CircuitState.CLOSED:",
        "if False:",
        ("tests/gateway/test_mesh_status.py",),
    ),
    Mutant(
        "mesh-status-ignores-draining",
        "gateway/mesh_probe.py",
        "if not accepting and health.answered:",
        "if False:",
        ("tests/gateway/test_mesh_status.py",),
    ),
    Mutant(
        "mesh-status-drops-the-load",
        "gateway/mesh_probe.py",
        "if age_s < STALE_AFTER_S:",
        "if False:",
        ("tests/gateway/test_mesh_status.py",),
    ),
    Mutant(
        "job-counts-empty",
        "gateway/jobs/sqlite_store.py",
        "return {state: int(counts.get(int(state), 0)) for state in JobState}",
        "return {}",
        ("tests/gateway/test_mesh_status.py",),
    ),
    Mutant(
        "mesh-status-open-to-any-key",
        "gateway/auth/interceptor.py",
        '"/genmesh.v1.MeshService/": Scope.ADMIN,',
        '"/genmesh.v1.MeshService/": Scope.GENERATE,',
        ("tests/gateway/test_mesh_status.py",),
    ),
    Mutant(
        "status-cli-fails-when-a-service-is-down",
        "genmesh/cli/status.py",
        "return 0",
        "return 1 if any(r.state != mesh_pb2.REPLICA_STATE_SERVING for r in response.replicas) else 0",
        ("tests/e2e/test_status_cli.py",),
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
)


def _line_of(mutant: Mutant, lines: list[str]) -> int:
    """The index of the mutant's line in ``lines``; LookupError unless it is there exactly once."""
    matches = [i for i, line in enumerate(lines) if line.strip() == mutant.original]
    if len(matches) != 1:
        raise LookupError(f"{mutant.name}: expected the line once in {mutant.path}, found it {len(matches)} times")
    return matches[0]


def stale(mutants: list[Mutant]) -> list[str]:
    """Why each mutant that no longer applies (its line changed or moved) does not."""
    problems = []
    for mutant in mutants:
        try:
            _line_of(mutant, (ROOT / mutant.path).read_text().splitlines())
        except (LookupError, OSError) as error:
            problems.append(str(error))
    return problems


def _apply(mutant: Mutant) -> tuple[Path, str]:
    """Write the mutant into its file; returns the file and its original text."""
    path = ROOT / mutant.path
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    i = _line_of(mutant, lines)
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i] = f"{indent}{mutant.replacement}\n"
    path.write_text("".join(lines))
    return path, text


def run(mutant: Mutant) -> tuple[bool, float]:
    """Whether the mutant's tests killed it, and how long they took."""
    path, original = _apply(mutant)
    start = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant.tests],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        killed = result.returncode not in (0, 5)  # 5: no test collected, which proves nothing
    except subprocess.TimeoutExpired:
        killed = True  # a hang is a failure the suite would report
    finally:
        path.write_text(original)
    return killed, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="run only the mutant of this name (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="check that every mutant still applies; run nothing")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")
    if args.list:
        for mutant in chosen:
            print(f"{mutant.name:45} {mutant.path}")
        return
    problems = stale(chosen)
    if problems:
        sys.exit("mutants that no longer apply (update them with the code they guard):\n" + "\n".join(problems))
    if args.check:
        print(f"mutants: all {len(chosen)} apply")
        return
    survivors: list[str] = []
    for mutant in chosen:
        killed, took_s = run(mutant)
        print(f"{'killed' if killed else 'SURVIVED':8} {mutant.name:45} {took_s:6.1f} s", flush=True)
        if not killed:
            survivors.append(mutant.name)
    print(f"mutants: {len(chosen) - len(survivors)} killed, {len(survivors)} survived of {len(chosen)}")
    if survivors:
        sys.exit(f"surviving mutants (their behaviour is untested): {', '.join(survivors)}")


if __name__ == "__main__":
    main()
