"""`genmesh jobs submit|get|watch|cancel|list`: background jobs on the gateway's JobService."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TextIO

import grpc
from google.protobuf import json_format, timestamp_pb2

from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.ask import AskOptions, build_request
from genmesh.cli.ask_command import INTERRUPTED
from genmesh.cli.ask_output import EventPrinter
from genmesh.cli.client_flags import add_api_key_flag, add_client_tls_flags, client_tls
from genmesh.cli.rpc_errors import describe_rpc_error
from genmesh.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc

STATES: dict[str, jobs_pb2.JobState.ValueType] = {
    jobs_pb2.JobState.Name(v).removeprefix("JOB_STATE_").lower(): v for v in jobs_pb2.JobState.values() if v
}


def add_jobs_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add_ask_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add `genmesh jobs ...`; ``add_ask_flags`` adds the sampling and tool flags of `genmesh ask` to submit."""
    jobs = commands.add_parser("jobs", help="background jobs: submit, get, watch, cancel, list")
    verbs = jobs.add_subparsers(dest="verb", required=True)

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help)
        parser.add_argument("--target", default=f"127.0.0.1:{mesh.GATEWAY.default_port}", help="the gateway")
        add_client_tls_flags(parser)
        add_api_key_flag(parser)
        return parser

    submit = verb("submit", "queue a question; prints the job id (the same --idempotency-key gives the same job)")
    submit.add_argument("question")
    add_ask_flags(submit)
    submit.add_argument("--priority", type=int, default=0, help="larger runs first (-1000..1000)")
    submit.add_argument("--idempotency-key", default="", help="submitting the same key again returns the same job")
    submit.add_argument("--watch", action="store_true", help="then follow the job as `genmesh jobs watch` does")
    verb("get", "show a job: state, attempts, times, error, answer").add_argument("id")
    watch = verb("watch", "print a job's events so far, follow it live, end with its final state")
    watch.add_argument("id")
    watch.add_argument("--after", type=int, default=0, help="skip events up to this sequence number")
    verb("cancel", "cancel a queued or running job").add_argument("id")
    listing = verb("list", "jobs, newest first, one page at a time")
    listing.add_argument("--state", choices=sorted(STATES), help="only jobs in this state")
    listing.add_argument("--page-size", type=int, default=20)
    listing.add_argument("--page-token", default="", help="from the previous page")
    listing.add_argument(
        "--json", action="store_true", help="print the ListJobs response (jobs and next page token) as JSON"
    )


def run_jobs(args: argparse.Namespace, ask_options: Callable[[str, argparse.Namespace], AskOptions]) -> int | str:
    """Run `genmesh jobs <verb>`; the exit status, or an error message."""
    try:
        return asyncio.run(_run(args, ask_options))
    except grpc.aio.AioRpcError as error:
        return describe_rpc_error(error, args.target)
    except KeyboardInterrupt:  # watch stops following; the job itself runs on
        print("interrupted (the job is not cancelled: `genmesh jobs cancel ID` does that)", file=sys.stderr)
        return INTERRUPTED


async def _run(args: argparse.Namespace, ask_options: Callable[[str, argparse.Namespace], AskOptions]) -> int:
    async with open_channel(args.target, tls=client_tls(args), api_key=args.api_key) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        if args.verb == "submit":
            request = jobs_pb2.SubmitJobRequest(
                request=build_request(ask_options(args.question, args)),
                idempotency_key=args.idempotency_key,
                priority=args.priority,
            )
            job = (await stub.SubmitJob(request, timeout=args.timeout_s or 30)).job
            print(job.id)
            print(f"{_state(job.state)} (priority {job.priority})", file=sys.stderr)
            return await watch(stub, job.id) if args.watch else 0
        if args.verb == "get":
            describe((await stub.GetJob(jobs_pb2.GetJobRequest(id=args.id), timeout=30)).job)
            return 0
        if args.verb == "watch":
            return await watch(stub, args.id, args.after)
        if args.verb == "cancel":
            job = (await stub.CancelJob(jobs_pb2.CancelJobRequest(id=args.id), timeout=30)).job
            print(f"{job.id} {_state(job.state)}")
            return 0
        state = STATES[args.state] if args.state else jobs_pb2.JOB_STATE_UNSPECIFIED
        listing = jobs_pb2.ListJobsRequest(
            state=state, page_size=args.page_size, page_token=args.page_token, view=jobs_pb2.JOB_VIEW_FULL
        )
        page = await stub.ListJobs(listing, timeout=30)
        if args.json:
            print(json_format.MessageToJson(page, always_print_fields_with_no_presence=True))
            return 0
        print("\n".join(job_table(page.jobs)))
        if page.next_page_token:
            print(f"more: --page-token {page.next_page_token}", file=sys.stderr)
        return 0


async def watch(stub: jobs_pb2_grpc.JobServiceStub, job_id: str, after: int = 0, out: TextIO = sys.stdout) -> int:
    """Print the job's events as `genmesh ask` does, then its final state; 0 when it succeeded."""
    printer = EventPrinter(out)
    attempt = 0
    async for message in stub.WatchJob(jobs_pb2.WatchJobRequest(id=job_id, after_sequence=after)):
        if message.HasField("job"):
            job = message.job
            print(f"job {job.id}: {_state(job.state)}{_error(job)}", file=out)
            return 0 if job.state == jobs_pb2.JOB_STATE_SUCCEEDED else 1
        if attempt and message.attempt != attempt:
            print(f"\n(attempt {message.attempt}: the job runs again after a gateway restart)", file=out)
            printer = EventPrinter(out)
        attempt = message.attempt
        printer.show(message.event)
    raise RuntimeError("the gateway closed the watch without the job's final state")


def job_table(jobs: Sequence[jobs_pb2.Job]) -> list[str]:
    """A header row, then one row per job: id, state, priority, attempts, creation time, the question's start."""
    rows = [("ID", "STATE", "PRIORITY", "ATTEMPTS", "CREATED", "QUESTION")]
    rows += [
        (
            job.id,
            _state(job.state),
            str(job.priority),
            str(job.attempts),
            _time(job.create_time),
            job.request.question.replace("\n", " ")[:60],
        )
        for job in jobs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[5]]) for row in rows]


def describe(job: jobs_pb2.Job, out: TextIO = sys.stdout) -> None:
    """A job, one field a line."""
    rows = [
        ("id", job.id),
        ("state", _state(job.state) + _error(job)),
        ("priority", str(job.priority)),
        ("key", job.idempotency_key or "-"),
        ("attempts", str(job.attempts)),
        ("created", _time(job.create_time)),
        ("started", _time(job.start_time) if job.HasField("start_time") else "-"),
        ("finished", _time(job.finish_time) if job.HasField("finish_time") else "-"),
        ("question", job.request.question),
    ]
    if job.HasField("result"):
        result = job.result
        usage: common_pb2.Usage = result.completion.usage
        rows += [
            ("sources", ", ".join(dict.fromkeys(p.title for p in result.sources)) or "-"),
            ("tools", ", ".join(f"{t.name}={t.result_json or t.error.message}" for t in result.tool_results) or "-"),
            ("tokens", f"prompt {usage.prompt_tokens}, completion {usage.completion_tokens}"),
            ("answer", result.answer),
        ]
    for name, value in rows:
        print(f"{name + ':':<10} {value}", file=out)


def _state(state: int) -> str:
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()  # type: ignore[arg-type]


def _error(job: jobs_pb2.Job) -> str:
    if not job.HasField("error"):
        return ""
    code = next((c.name for c in grpc.StatusCode if c.value[0] == job.error.code), str(job.error.code))
    return f" ({code}: {job.error.message})"


def _time(stamp: timestamp_pb2.Timestamp) -> str:
    return datetime.fromtimestamp(stamp.ToNanoseconds() / 1e9, UTC).isoformat(timespec="seconds")
