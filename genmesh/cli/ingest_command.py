"""`genmesh ingest`'s flags and command: the demo corpus or a folder's .txt and .md files into a collection. A
folder without such files is refused (no empty collection is made), and the files left out are counted by
extension."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections import Counter
from pathlib import Path

import grpc

from genmesh import mesh
from genmesh.cli.client_flags import add_client_tls_flags, client_tls
from genmesh.cli.rpc_errors import describe_rpc_error
from services.retrieval.corpus import TEXT_SUFFIXES


def add_ingest_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add `genmesh ingest`; its parser (for its usage errors)."""
    parser = commands.add_parser(
        "ingest", help="load documents into the retrieval service (resumable): --demo, or a folder of .txt/.md"
    )
    parser.add_argument("path", nargs="?", type=Path, help="folder of .txt and .md files (read recursively)")
    parser.add_argument("--demo", action="store_true", help="the Python language reference (pydoc_data.topics)")
    parser.add_argument(
        "--target", default=f"127.0.0.1:{mesh.RETRIEVAL.default_port}", help="retrieval service (default: %(default)s)"
    )
    parser.add_argument("--collection", help="default: python-reference for --demo, else the folder's name")
    parser.add_argument("--ingest-id", help="name of the load, for resuming (default: collection:source)")
    parser.add_argument("--batch", type=int, default=8, help="documents per stream message (default: %(default)s)")
    parser.add_argument("--restart", action="store_true", help="load everything again, do not resume")
    add_client_tls_flags(parser)
    return parser


def skipped_files(root: Path) -> Counter[str]:
    """The files under ``root`` that ingest leaves out, counted by extension (``(none)`` for files without)."""
    return Counter(
        p.suffix.lower() or "(none)" for p in root.rglob("*") if p.is_file() and p.suffix.lower() not in TEXT_SUFFIXES
    )


def describe_skipped(skipped: Counter[str]) -> str:
    """``3 .pdf, 1 .png`` (the most frequent first, then by name)."""
    return ", ".join(f"{count} {suffix}" for suffix, count in sorted(skipped.items(), key=lambda i: (-i[1], i[0])))


def collection_name(path: Path) -> str:
    """The collection a folder goes into by default: its name, lower-cased, other characters as dashes."""
    return re.sub(r"[^a-z0-9._-]+", "-", path.resolve().name.lower()).strip("-._")


def run_ingest(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int | str:
    """Run `genmesh ingest`: 0 once loaded, else the message to exit with."""
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
        skipped = skipped_files(args.path)
        kinds = " or ".join(TEXT_SUFFIXES)
        if not documents:
            left = f" (only {describe_skipped(skipped)})" if skipped else ""
            return f"error: no {kinds} files under {args.path}{left}: nothing to ingest, no collection made"
        if skipped:
            total = sum(skipped.values())
            print(f"skipping {total} file{'s' * (total > 1)} not {kinds}: {describe_skipped(skipped)}", file=sys.stderr)
        source = str(args.path.resolve())
        collection = args.collection or collection_name(args.path)
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
        return describe_rpc_error(error, args.target, "retrieval service")
    print(f"{committed} documents committed to {collection!r} (ingest id {options.ingest_id!r})")
    return 0
