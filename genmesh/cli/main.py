"""The `genmesh` command: serve one service, bring the whole mesh up, ask the gateway, background jobs, check
health, show the mesh's status, ingest."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from genmesh import mesh
from genmesh.cli.ask import AskOptions, ask, describe_rpc_error, parse_tool
from genmesh.cli.certs import CLIENT, add_certs_parser, ensure_certs, run_certs
from genmesh.cli.client_flags import add_api_key_flag, add_client_tls_flags, client_tls
from genmesh.cli.jobs import add_jobs_parser, run_jobs
from genmesh.cli.keys import add_keys_parser, run_keys
from genmesh.cli.launcher import die_with_launcher, start_mesh
from genmesh.cli.status import add_status_parser, run_status
from genmesh.health import check

DEMO_QUESTION = "How does the with statement use a context manager?"
DEMO_TOOLS = (("calculator", '{"expression": "2 ** 10 + 1"}'), ("clock", '{"timezone": "UTC"}'))


def _add_ask_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tool", action="append", default=[], type=parse_tool, help="NAME:JSON tool call (repeat)")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--sources", type=int, dest="retrieval_top_k", help="passages to retrieve")
    parser.add_argument("--no-retrieval", action="store_true")
    parser.add_argument("--timeout", type=float, dest="timeout_s", help="deadline of the call in seconds")


def _ask_options(question: str, args: argparse.Namespace) -> AskOptions:
    return AskOptions(
        question=question,
        tools=tuple(args.tool),
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        retrieval_top_k=args.retrieval_top_k,
        no_retrieval=args.no_retrieval,
        timeout_s=args.timeout_s,
    )


def _count(text: str) -> int:
    """A replica count: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    """A duration in seconds, not negative."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


async def _up(args: argparse.Namespace) -> int:
    ports = {s.name: getattr(args, f"{s.name}_port") for s in mesh.SERVICES}
    replicas = {s.name: getattr(args, f"{s.name}_replicas") for s in mesh.SERVICES if s is not mesh.GATEWAY}
    log_dir = None if args.log_dir == "-" else Path(args.log_dir)
    certs = ensure_certs(Path(args.certs)) if args.tls else None
    if certs is not None:
        print(f"mutual TLS on every hop (certificates: {certs.path}; clients use {certs.cert(CLIENT)})", flush=True)
    print(f"starting the mesh (logs: {log_dir or 'stderr'}) ...", flush=True)
    running = await start_mesh(
        args.host,
        ports,
        log_dir,
        ready_timeout_s=args.ready_timeout,
        replicas=replicas,
        drain_delay_s=args.drain_delay,
        tls=certs,
        metrics=args.metrics,
    )
    try:
        for name, service in running.services.items():
            metrics = f"  metrics {service.metrics_url}" if service.metrics_url else ""
            print(f"  {name:<12} {service.address:<22} pid {service.process.pid}{metrics}", flush=True)
        print(f"gateway ready at {running.address('gateway')}", flush=True)
        if args.demo:
            demo = AskOptions(
                question=args.question or DEMO_QUESTION,
                tools=DEMO_TOOLS,
                max_tokens=args.max_tokens,
                temperature=0.7,
                top_p=0.9,
                repetition_penalty=1.15,
                seed=args.seed,
            )
            await ask(running.address("gateway"), demo, tls=running.client_tls())
        if args.exit:
            return 0
        print("mesh is up; Ctrl-C stops it", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        watchers = [asyncio.create_task(s.process.wait()) for s in running.services.values()]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopper, *watchers}, return_when=asyncio.FIRST_COMPLETED)
        if stopper not in done:
            print("a service exited; stopping the mesh", file=sys.stderr)
        for task in (stopper, *watchers):
            task.cancel()
        return 0 if stopper in done else 1
    finally:
        # Stop the services even when our output is gone (a closed pipe must not orphan them).
        with contextlib.suppress(OSError):
            print("stopping the mesh ...", flush=True)
        await running.stop(args.grace)
        with contextlib.suppress(OSError):
            print("stopped", flush=True)


async def _health(args: argparse.Namespace) -> int:
    from genmesh.channels import open_channel

    async with open_channel(args.target, tls=client_tls(args)) as channel:
        status = await check(channel, args.service, timeout_s=args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


def _ingest(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int | str:
    from genmesh.cli.ingest import IngestOptions, default_ingest_id, demo_documents, folder_documents, ingest

    if args.demo == (args.path is not None):
        parser.error("give either --demo or a PATH")
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.demo:
        documents, source, collection = demo_documents(), "demo", args.collection or mesh.DEFAULT_COLLECTION
    else:
        try:
            documents = folder_documents(args.path)
        except OSError as error:
            parser.error(str(error))
        source = str(args.path.resolve())
        collection = args.collection or re.sub(r"[^a-z0-9._-]+", "-", args.path.resolve().name.lower()).strip("-._")
    options = IngestOptions(
        target=args.target,
        collection=collection,
        ingest_id=args.ingest_id or default_ingest_id(collection, source),
        batch=args.batch,
        restart=args.restart,
        tls=client_tls(args),
    )
    print(f"loading {len(documents)} documents into {collection!r} at {args.target} ...", file=sys.stderr)
    try:
        committed = asyncio.run(ingest(options, documents))
    except grpc.aio.AioRpcError as error:
        return describe_rpc_error(error)
    print(f"{committed} documents committed to {collection!r} (ingest id {options.ingest_id!r})")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `genmesh` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        if len(argv) < 2 or argv[1] not in mesh.BY_NAME:
            sys.exit(f"usage: genmesh serve {{{','.join(mesh.BY_NAME)}}} [flags]")
        die_with_launcher()
        importlib.import_module(mesh.BY_NAME[argv[1]].module).main(argv[2:])
        return

    parser = argparse.ArgumentParser(prog="genmesh", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run one service: genmesh serve NAME --help")

    up = commands.add_parser("up", help="start the four services, wait until SERVING, stop them on Ctrl-C")
    up.add_argument("--host", default="127.0.0.1")
    for spec in mesh.SERVICES:
        first = "" if spec is mesh.GATEWAY else " (of the first replica)"
        up.add_argument(f"--{spec.name}-port", type=int, default=spec.default_port, help=f"{spec.name} port{first}")
    for spec in (mesh.INFERENCE, mesh.TOOLS, mesh.RETRIEVAL):
        up.add_argument(
            f"--{spec.name}-replicas",
            type=_count,
            default=1,
            metavar="N",
            help=f"{spec.name} processes, each on its own port (the first on --{spec.name}-port, the rest on free "
            "ones); their callers get them all as one comma-separated target"
            + ("; each has its own store (<data dir>-1, -2, ...)" if spec is mesh.RETRIEVAL else ""),
        )
    up.add_argument("--log-dir", default=".genmesh/logs", help="where service logs go ('-' for stderr)")
    up.add_argument("--ready-timeout", type=float, default=300.0)
    up.add_argument("--grace", type=float, default=10.0, help="seconds services get to drain on stop")
    up.add_argument(
        "--drain-delay",
        type=_seconds,
        default=0.0,
        help="seconds each service reports NOT_SERVING, still serving, before it refuses new calls on stop "
        "(default 0: Ctrl-C stays fast, whatever GENMESH_*_DRAIN_DELAY says)",
    )
    up.add_argument("--demo", action="store_true", help="ask a demo question once the mesh is up")
    up.add_argument("--question", help="the demo question")
    up.add_argument("--max-tokens", type=int, default=96, help="length of the demo answer")
    up.add_argument("--seed", type=int, default=7, help="seed of the demo answer")
    up.add_argument("--exit", action="store_true", help="stop the mesh after the demo (for scripts)")
    up.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS on every hop: each service serves TLS, requires client certificates and presents its own "
        "to its upstreams (certificates from --certs, created when absent)",
    )
    up.add_argument("--certs", default=".genmesh/certs", help="certificates of --tls (`genmesh certs` layout)")
    up.add_argument(
        "--metrics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each process serves Prometheus metrics over HTTP on a free port, printed with its address "
        "(docs/OBSERVABILITY.md)",
    )

    ask_cmd = commands.add_parser("ask", help="ask the gateway a question and stream the answer")
    ask_cmd.add_argument("question")
    ask_cmd.add_argument("--target", default=f"127.0.0.1:{mesh.GATEWAY.default_port}")
    _add_ask_flags(ask_cmd)
    add_client_tls_flags(ask_cmd)
    add_api_key_flag(ask_cmd)

    health_cmd = commands.add_parser("health", help="exit 0 when a service reports SERVING")
    health_cmd.add_argument("target", help="host:port")
    health_cmd.add_argument("--service", default="")
    health_cmd.add_argument("--timeout", type=float, default=2.0)
    add_client_tls_flags(health_cmd)

    ingest_cmd = commands.add_parser(
        "ingest", help="load documents into the retrieval service (resumable): --demo, or a folder of .txt/.md"
    )
    ingest_cmd.add_argument("path", nargs="?", type=Path, help="folder of .txt and .md files")
    ingest_cmd.add_argument("--demo", action="store_true", help="the Python language reference (pydoc_data.topics)")
    ingest_cmd.add_argument("--target", default=f"127.0.0.1:{mesh.RETRIEVAL.default_port}", help="retrieval service")
    ingest_cmd.add_argument("--collection", help="default: python-reference for --demo, else the folder's name")
    ingest_cmd.add_argument("--ingest-id", help="name of the load, for resuming (default: collection:source)")
    ingest_cmd.add_argument("--batch", type=int, default=8, help="documents per stream message")
    ingest_cmd.add_argument("--restart", action="store_true", help="load everything again, do not resume")
    add_client_tls_flags(ingest_cmd)

    add_jobs_parser(commands, _add_ask_flags)
    add_keys_parser(commands)
    add_status_parser(commands)
    add_certs_parser(commands)

    args = parser.parse_args(argv)
    if hasattr(args, "tls_cert"):
        try:
            client_tls(args)
        except ValueError as error:
            parser.error(str(error))
    if args.command == "certs":
        sys.exit(run_certs(args))
    if args.command == "keys":
        sys.exit(run_keys(args))
    if args.command == "status":
        sys.exit(run_status(args))
    if args.command == "jobs":
        sys.exit(run_jobs(args, _ask_options))
    if args.command == "ingest":
        sys.exit(_ingest(ingest_cmd, args))
    if args.command == "up":
        with contextlib.suppress(KeyboardInterrupt):
            sys.exit(asyncio.run(_up(args)))
    elif args.command == "ask":
        try:
            asyncio.run(ask(args.target, _ask_options(args.question, args), tls=client_tls(args), api_key=args.api_key))
        except grpc.aio.AioRpcError as error:
            sys.exit(describe_rpc_error(error))
    elif args.command == "health":
        sys.exit(asyncio.run(_health(args)))
