"""The `genmesh` command: serve one service, bring the whole mesh up, ask the gateway, background jobs, check
health, show the mesh's status, ingest."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Sequence

from genmesh import mesh
from genmesh.cli.ask_command import add_ask_flags, add_ask_parser, ask_options, run_ask
from genmesh.cli.certs import add_certs_parser, run_certs
from genmesh.cli.client_flags import add_client_tls_flags, client_tls
from genmesh.cli.ingest_command import add_ingest_parser, run_ingest
from genmesh.cli.jobs import add_jobs_parser, run_jobs
from genmesh.cli.keys import add_keys_parser, run_keys
from genmesh.cli.launcher import die_with_launcher
from genmesh.cli.serve_checks import check_serve
from genmesh.cli.status import add_status_parser, run_status
from genmesh.cli.tools import add_tools_parser, run_tools
from genmesh.cli.up import add_up_parser, run_up
from genmesh.health import check
from genmesh.version import version


async def _health(args: argparse.Namespace) -> int:
    from genmesh.channels import open_channel

    async with open_channel(args.target, tls=client_tls(args)) as channel:
        status = await check(channel, args.service, timeout_s=args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `genmesh` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["serve", "http"]:  # not a gRPC service of the mesh: the HTTP front of the gateway
        die_with_launcher()
        importlib.import_module("gateway.http.server").main(argv[2:])
        return
    if argv[:1] == ["serve"]:
        if len(argv) < 2 or argv[1] not in mesh.BY_NAME:
            sys.exit(f"usage: genmesh serve {{{','.join([*mesh.BY_NAME, 'http'])}}} [flags]")
        problem = check_serve(argv[1], argv[2:])
        if problem is not None:
            sys.exit(problem)
        die_with_launcher()
        importlib.import_module(mesh.BY_NAME[argv[1]].module).main(argv[2:])
        return

    parser = argparse.ArgumentParser(prog="genmesh", description=__doc__)
    parser.add_argument("--version", action="version", version=f"genmesh {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run one service: genmesh serve NAME --help")

    add_up_parser(commands)
    add_ask_parser(commands)

    health_cmd = commands.add_parser("health", help="exit 0 when a service reports SERVING")
    health_cmd.add_argument("target", help="host:port")
    health_cmd.add_argument("--service", default="")
    health_cmd.add_argument("--timeout", type=float, default=2.0)
    add_client_tls_flags(health_cmd)

    ingest_cmd = add_ingest_parser(commands)

    add_jobs_parser(commands, add_ask_flags)
    add_keys_parser(commands)
    add_status_parser(commands)
    add_certs_parser(commands)
    add_tools_parser(commands)

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
    if args.command == "tools":
        sys.exit(run_tools(args))
    if args.command == "jobs":
        sys.exit(run_jobs(args, ask_options))
    if args.command == "ingest":
        sys.exit(run_ingest(ingest_cmd, args))
    if args.command == "up":
        sys.exit(run_up(args))
    if args.command == "ask":
        sys.exit(run_ask(args))
    elif args.command == "health":
        sys.exit(asyncio.run(_health(args)))
