"""`genmesh up`: check that its ports are free, start the four services (showing the demo corpus's embedding on a
first start), wait until every one is SERVING, optionally ask a demo question, and stop them all on Ctrl-C or
when one exits (saying which)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import grpc

from genmesh import mesh
from genmesh.cli.ask import AskOptions, IncompleteAnswer, ask, describe_rpc_error
from genmesh.cli.certs import CLIENT, ensure_certs
from genmesh.cli.http_front import HTTP, start_http, stop_http
from genmesh.cli.launcher import Mesh, start_mesh
from genmesh.cli.ports import busy_ports
from genmesh.cli.seed_progress import follow_seeding, log_size
from genmesh.cli.serve_checks import MODEL_LAYOUT, model_problem
from genmesh.cli.supervise import supervise
from genmesh.tasks import cancel_and_wait
from genmesh.tls import ClientTLS

DEMO_QUESTION = "How does the with statement use a context manager?"
DATA_DIR_ENV = "GENMESH_DATA_DIR"
DEMO_TOOLS = (("calculator", '{"expression": "2 ** 10 + 1"}'), ("clock", '{"timezone": "UTC"}'))


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where `up` keeps the mesh's state unless told: $GENMESH_DATA_DIR, else $XDG_DATA_HOME/genmesh, else
    ~/.local/share/genmesh (the XDG default); the same from any working directory."""
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV])
    xdg = env.get("XDG_DATA_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec: a relative path is invalid and ignored
        return Path(xdg) / "genmesh"
    return Path.home() / ".local" / "share" / "genmesh"


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


def add_up_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `genmesh up`."""
    up = commands.add_parser("up", help="start the four services, wait until SERVING, stop them on Ctrl-C")
    up.add_argument("--host", default="127.0.0.1", help="address every service listens on (default: %(default)s)")
    for spec in mesh.SERVICES:
        first = "" if spec is mesh.GATEWAY else " (of the first replica)"
        up.add_argument(
            f"--{spec.name}-port",
            type=int,
            default=spec.default_port,
            help=f"{spec.name} port{first}; checked free before anything starts (default: %(default)s)",
        )
    up.add_argument(
        "--http-port",
        type=int,
        default=HTTP.default_port,
        help="port of the OpenAI-compatible HTTP front and web page (`genmesh serve http`); 0: none "
        "(default: %(default)s)",
    )
    for spec in (mesh.INFERENCE, mesh.TOOLS, mesh.RETRIEVAL):
        up.add_argument(
            f"--{spec.name}-replicas",
            type=_count,
            default=1,
            metavar="N",
            help=f"{spec.name} processes, each on its own port (the first on --{spec.name}-port, the rest on free "
            "ones); their callers get them all as one comma-separated target"
            + ("; each has its own store (<data dir>-1, -2, ...)" if spec is mesh.RETRIEVAL else "")
            + " (default: 1)",
        )
    up.add_argument(
        "--data-dir",
        default=str(default_data_dir()),
        help="where the mesh keeps its state: the retrieval store (data/retrieval), the job queue "
        "(data/gateway/jobs.db), logs and certificates; give the same one from any directory to reuse the embedded "
        f"demo corpus (GENMESH_RETRIEVAL_DATA_DIR and GENMESH_GATEWAY_JOBS_DB still win) [env {DATA_DIR_ENV}; "
        "default: $XDG_DATA_HOME/genmesh, else ~/.local/share/genmesh; now %(default)s]",
    )
    up.add_argument("--log-dir", help="where service logs go ('-' for stderr; default: <data dir>/logs)")
    up.add_argument(
        "--model", help="the inference service's model directory, Hugging Face layout (default: the shipped model)"
    )
    up.add_argument(
        "--mcp-server",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="run an MCP server over stdio as a tool provider of the tools service (repeatable; default: none)",
    )
    up.add_argument(
        "--tools-module",
        action="append",
        default=[],
        metavar="MODULE[:ATTR]",
        help="load plugin tools from a module into the tools service (repeatable; default: none)",
    )
    up.add_argument(
        "--restart",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start a service that exits again, after a backoff of 1 s doubling to 30 s; with --no-restart the "
        "mesh stops instead (default: restart)",
    )
    up.add_argument(
        "--ready-timeout", type=float, default=300.0, help="seconds to wait for SERVING (default: %(default)s)"
    )
    up.add_argument(
        "--grace", type=float, default=10.0, help="seconds services get to drain on stop (default: %(default)s)"
    )
    up.add_argument(
        "--drain-delay",
        type=_seconds,
        default=0.0,
        help="seconds each service reports NOT_SERVING, still serving, before it refuses new calls on stop "
        "(default 0: Ctrl-C stays fast, whatever GENMESH_*_DRAIN_DELAY says)",
    )
    up.add_argument("--demo", action="store_true", help="ask a demo question once the mesh is up")
    up.add_argument("--question", help=f"the demo question (default: {DEMO_QUESTION!r})")
    up.add_argument("--max-tokens", type=int, default=96, help="length of the demo answer (default: %(default)s)")
    up.add_argument("--seed", type=int, default=7, help="seed of the demo answer (default: %(default)s)")
    up.add_argument("--exit", action="store_true", help="stop the mesh after the demo (for scripts)")
    up.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS on every hop: each service serves TLS, requires client certificates and presents its own "
        "to its upstreams (certificates from --certs, created when absent)",
    )
    up.add_argument("--certs", help="certificates of --tls (`genmesh certs` layout; default: <data dir>/certs)")
    up.add_argument(
        "--metrics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each process serves Prometheus metrics over HTTP on a free port, printed with its address "
        "(docs/OBSERVABILITY.md; default: on)",
    )


def run_up(args: argparse.Namespace) -> int | str:
    """Run `genmesh up`: its exit status, or the message to exit with (a port taken)."""
    ports = {s.name: getattr(args, f"{s.name}_port") for s in mesh.SERVICES}
    problem = None if args.model is None else model_problem(Path(args.model))
    if problem is not None:
        return f"error: --model {args.model}: {problem}; {MODEL_LAYOUT}"
    problems = busy_ports(args.host, {**ports, **({HTTP.name: args.http_port} if args.http_port else {})})
    if problems:
        return "\n".join(
            [
                "error: cannot start the mesh:",
                *(f"  {p}" for p in problems),
                "  another mesh may be running there (`genmesh status` asks it); stop it or give other ports",
            ]
        )
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_up(args, ports))
    return 130


async def _start(args: argparse.Namespace, ports: dict[str, int], log_dir: Path | None) -> Mesh:
    """start_mesh with the flags, showing the demo corpus's embedding from retrieval's log meanwhile."""
    replicas = {s.name: getattr(args, f"{s.name}_replicas") for s in mesh.SERVICES if s is not mesh.GATEWAY}
    data = Path(args.data_dir)
    certs = ensure_certs(Path(args.certs or data / "certs")) if args.tls else None
    if certs is not None:
        print(f"mutual TLS on every hop (certificates: {certs.path}; clients use {certs.cert(CLIENT)})", flush=True)
    print(f"starting the mesh (logs: {log_dir or 'stderr'}) ...", flush=True)
    follower = None
    if log_dir is not None:
        retrieval = mesh.layout(replicas)[0].name  # the first retrieval replica: retrieval or retrieval-1
        log_path = log_dir / f"{retrieval}.log"
        follower = asyncio.create_task(follow_seeding(log_path, log_size(log_path)))
    try:
        return await start_mesh(
            args.host,
            ports,
            log_dir,
            extra_args=service_flags(args),
            env=state_env(data),
            ready_timeout_s=args.ready_timeout,
            replicas=replicas,
            drain_delay_s=args.drain_delay,
            tls=certs,
            metrics=args.metrics,
        )
    finally:
        if follower is not None:
            await cancel_and_wait(follower)


def state_env(data: Path) -> dict[str, str]:
    """Where the services keep their state under ``data``, as their environment fallbacks, less those the
    environment already sets."""
    wanted = {
        "GENMESH_RETRIEVAL_DATA_DIR": str(data / "data" / "retrieval"),
        "GENMESH_GATEWAY_JOBS_DB": str(data / "data" / "gateway" / "jobs.db"),
    }
    return {name: value for name, value in wanted.items() if not os.environ.get(name)}


def service_flags(args: argparse.Namespace) -> dict[str, list[str]]:
    """The flags of `up` that go to one service."""
    extra: dict[str, list[str]] = {}
    if args.model is not None:
        extra[mesh.INFERENCE.name] = ["--model", args.model]
    tools = [arg for server in args.mcp_server for arg in ("--mcp-server", server)]
    tools += [arg for module in args.tools_module for arg in ("--tools-module", module)]
    if tools:
        extra[mesh.TOOLS.name] = tools
    return extra


async def _up(args: argparse.Namespace, ports: dict[str, int]) -> int:
    log_dir = None if args.log_dir == "-" else Path(args.log_dir or Path(args.data_dir) / "logs")
    running = await _start(args, ports, log_dir)
    http = None
    try:
        for name, service in running.services.items():
            metrics = f"  metrics {service.metrics_url}" if service.metrics_url else ""
            print(f"  {name:<12} {service.address:<22} pid {service.process.pid}{metrics}", flush=True)
        print(f"gateway ready at {running.address('gateway')}", flush=True)
        if args.http_port:
            http = await start_http(running, args.host, args.http_port, log_dir, args.ready_timeout, args.metrics)
            metrics = f"  metrics {http.metrics_url}" if http.metrics_url else ""
            print(f"OpenAI-compatible API and web page at http://{http.address}{metrics}", flush=True)
        if args.demo and not await ask_demo(running.address("gateway"), args, running.client_tls()):
            return 1
        if args.exit:
            return 0
        print("mesh is up; Ctrl-C stops it", flush=True)
        return await _until_stopped(running, args)
    finally:
        # Stop the services even when our output is gone (a closed pipe must not orphan them).
        with contextlib.suppress(OSError):
            print("stopping the mesh ...", flush=True)
        if http is not None:
            await stop_http(http, args.grace)
        await running.stop(args.grace)
        with contextlib.suppress(OSError):
            print("stopped", flush=True)


async def ask_demo(address: str, args: argparse.Namespace, tls: ClientTLS | None, err: TextIO = sys.stderr) -> bool:
    """Ask the demo question (``--question``) at ``address``, printing the answer; a failure is told on ``err`` in
    a few lines, as `genmesh ask` tells it. Whether it was answered."""
    demo = AskOptions(
        question=args.question or DEMO_QUESTION,
        tools=DEMO_TOOLS,
        max_tokens=args.max_tokens,
        temperature=0.7,
        top_p=0.9,
        repetition_penalty=1.15,
        seed=args.seed,
    )
    try:
        await ask(address, demo, tls=tls)
    except grpc.aio.AioRpcError as error:
        print(describe_rpc_error(error, address), file=err)
        return False
    except IncompleteAnswer as error:
        print(error, file=err)
        return False
    return True


async def _until_stopped(running: Mesh, args: argparse.Namespace) -> int:
    """Wait for SIGINT/SIGTERM (0), restarting services that exit; with --no-restart, until a service exits (1,
    naming it and its log)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.restart:
        await supervise(running, stop, ready_timeout_s=args.ready_timeout)
        return 0
    watchers = {asyncio.create_task(s.process.wait()): s for s in running.services.values()}
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({stopper, *watchers}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(stopper, *watchers)
    if stopper in done:
        return 0
    for task in done:
        service = watchers[task]
        log = f" (log: {service.log_path})" if service.log_path is not None else ""
        print(f"{service.name} exited with status {service.process.returncode}{log}", file=sys.stderr)
    print("stopping the mesh", file=sys.stderr)
    return 1
