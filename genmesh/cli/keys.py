"""`genmesh keys create|list|revoke`: the gateway's API keys, straight in their store (a JSON file or Postgres).

A running gateway sees the change without a restart. ``create`` prints only the secret on stdout, so that
``KEY=$(genmesh keys create ...)`` works; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from gateway.auth.caller import Limits
from gateway.auth.keys import KeyRecord, iso, parse_key_id, parse_scopes
from gateway.auth.keystore import KeyStore, open_key_store
from genmesh.errors import GenmeshError, InvalidArgument

STORE_ENV = "GENMESH_API_KEYS"


def _limit(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative (0 refuses every call), got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _names(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add_keys_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `genmesh keys ...`."""
    keys = commands.add_parser("keys", help="the gateway's API keys: create, list, revoke")
    keys.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV, ""),
        help=f"the gateway's --api-keys store: a JSON file or a postgresql:// URL [env {STORE_ENV}]",
    )
    verbs = keys.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="create a key; prints only its secret (shown this once)")
    create.add_argument("name", help="display name: 1..64 of A-Z a-z 0-9 . _ -")
    create.add_argument("--scopes", type=_names, required=True, help="comma-separated: generate, jobs, admin")
    create.add_argument("--rpm", type=_limit, help="requests per minute")
    create.add_argument("--tpm", type=_limit, help="generated tokens per minute")
    create.add_argument("--tpd", type=_limit, help="generated tokens per day")
    create.add_argument("--max-streams", type=_limit, help="Generate streams open at once")
    create.add_argument("--tools", type=_names, default=[], help="comma-separated tools it may call (default: all)")
    create.add_argument("--expires-in", type=_seconds, help="seconds until the key expires (default: never)")
    verbs.add_parser("list", help="every key, revoked ones too; never a secret")
    revoke = verbs.add_parser("revoke", help="revoke a key at once (every gateway on the store)")
    revoke.add_argument("key", help="apiKeys/ID, ID, or display name")


def run_keys(args: argparse.Namespace) -> int | str:
    """Run `genmesh keys <verb>`; the exit status, or an error message."""
    if not args.store:
        return f"genmesh keys: give --store FILE|URL (or set {STORE_ENV}): the gateway's --api-keys store"
    try:
        return asyncio.run(_run(open_key_store(args.store), args))
    except (GenmeshError, ValueError, OSError) as error:
        return f"genmesh keys {args.verb}: {error}"


async def _run(store: KeyStore, args: argparse.Namespace) -> int:
    await store.open()
    try:
        if args.verb == "create":
            return await _create(store, args)
        if args.verb == "list":
            print(format_table(await store.list(), time.time()))
            return 0
        record = await store.revoke((await find_key(store, args.key)).id)
        print(f"revoked {record.name} ({record.display_name}) at {iso(record.revoke_time or 0)}", file=sys.stderr)
        return 0
    finally:
        await store.close()


async def _create(store: KeyStore, args: argparse.Namespace) -> int:
    limits = Limits(args.rpm, args.tpm, args.tpd, args.max_streams)
    expire_time = time.time() + args.expires_in if args.expires_in else None
    record, secret = await store.create(args.name, parse_scopes(args.scopes), limits, args.tools, expire_time)
    print(
        f"created {record.name} ({record.display_name}), scopes {','.join(sorted(record.scopes))}"
        + (f", expires {iso(expire_time)}" if expire_time else "")
        + ". The secret below is shown only now; send it as 'authorization: Bearer <secret>'.",
        file=sys.stderr,
    )
    print(secret, flush=True)
    return 0


async def find_key(store: KeyStore, text: str) -> KeyRecord:
    """The key ``text`` names: ``apiKeys/ID``, ``ID``, or a display name (a valid key's first)."""
    try:
        key_id = parse_key_id(text)
    except InvalidArgument:
        named = [k for k in await store.list() if k.display_name == text]
        valid = [k for k in named if k.revoke_time is None]
        candidates = valid or named
        if len(candidates) > 1:
            ids = ", ".join(k.name for k in candidates)
            raise ValueError(f"several keys are named {text!r} ({ids}): give the id") from None
        if not candidates:
            raise ValueError(f"no key is named {text!r} and it is no id (apiKeys/ + 12 hex digits)") from None
        return candidates[0]
    record = await store.get(key_id)
    if record is None:
        raise ValueError(f"no API key apiKeys/{key_id}")
    return record


def format_table(records: list[KeyRecord], now: float) -> str:
    """The keys as an aligned table: name, display name, state, scopes, limits, tools, times."""
    rows = [("NAME", "DISPLAY NAME", "STATE", "SCOPES", "LIMITS", "TOOLS", "CREATED", "EXPIRES")]
    for r in records:
        state = "revoked" if r.revoke_time is not None else "expired" if r.expired(now) else "valid"
        limits = r.limits
        quota = [
            f"{label}={value}"
            for label, value in (
                ("rpm", limits.requests_per_minute),
                ("tpm", limits.tokens_per_minute),
                ("tpd", limits.tokens_per_day),
                ("streams", limits.max_concurrent_streams),
            )
            if value is not None
        ]
        rows.append(
            (
                r.name,
                r.display_name,
                state,
                ",".join(sorted(r.scopes)),
                " ".join(quota) or "-",
                ",".join(sorted(r.allowed_tools)) or "all",
                iso(r.create_time),
                iso(r.expire_time) if r.expire_time is not None else "never",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
