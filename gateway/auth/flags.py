"""The gateway's ``--api-keys`` flag, and what the gateway says at start-up about who may call it."""

from __future__ import annotations

import argparse
import logging

from gateway.auth.keystore import KeyStore, open_key_store
from genmesh.config import Flags

log = logging.getLogger("genmesh.gateway.auth")


def add_api_key_flags(flags: Flags) -> None:
    """``--api-keys`` (environment GENMESH_GATEWAY_API_KEYS)."""
    flags.add(
        "--api-keys",
        default="",
        help="require API keys ('authorization: Bearer <key>') kept in this store: a JSON file or a postgresql:// "
        "URL (the job database will do); create them with `genmesh keys create`. Empty: the gateway is open",
    )


def key_store_from_args(args: argparse.Namespace) -> KeyStore | None:
    """The store ``--api-keys`` names, not yet open; None for an open gateway."""
    return open_key_store(args.api_keys) if args.api_keys else None


async def open_for_serving(store: KeyStore | None) -> None:
    """Open the store and say at start-up who may call the gateway."""
    if store is None:
        log.warning(
            "no API keys: the gateway is open, any client may call every RPC (--api-keys turns keys on; "
            "docs/SECURITY.md)"
        )
        return
    await store.open()
    keys = [k for k in await store.list() if k.revoke_time is None]
    log.info("API keys required", extra={"store": store.label, "keys": len(keys)})
    if not keys:
        log.warning("the API key store holds no valid key yet: create one with `genmesh keys create`")
