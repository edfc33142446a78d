"""Mutants of the inference engine, jobs, retrieval, tools and the shared kit."""

from __future__ import annotations

from mutant_catalog.mutant import Mutant

MUTANTS: tuple[Mutant, ...] = (
    # --- the inference engine ---
    Mutant(
        "consumer-departure-ignored",
        "services/inference/engine/engine.py",
        "self._scheduler.abort(one)",
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
        "if waiting + len(group) - max(0, self.config.max_running - running) > self.config.max_waiting:",
        "if waiting + len(group) - max(0, self.config.max_running - running) >= self.config.max_waiting:",
        (
            "tests/inference/test_engine.py::test_full_waiting_queue_raises_resource_exhausted_at_once",
            "tests/e2e/test_inference_load_bound.py",
        ),
    ),
    Mutant(
        "abort-finds-nothing",
        "services/inference/engine/engine.py",
        "return any([self._scheduler.abort(seq) for seq in live])  # a list: every sample is asked",
        "return True",
        ("tests/inference/test_engine.py::test_abort_cancels_a_running_request",),
    ),
    Mutant(
        "no-joining-a-running-batch",
        "services/inference/engine/scheduler.py",
        "while not batch.preempted and len(self._waiting) > skipped and self.running_count < self.config.max_running:",
        "while not batch.preempted and len(self._waiting) > skipped and self.running_count == 0:",
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
        "rebuilt = errors.ResourceExhausted(message, retry_delay_s(error), quota_violations=quota_violations(error))",
        "rebuilt = errors.ResourceExhausted(message, None, quota_violations=quota_violations(error))",
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
)
