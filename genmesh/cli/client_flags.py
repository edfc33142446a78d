"""The connection flags of the commands that call a service (`genmesh ask|jobs|health|ingest`): TLS, and the API
key of a gateway that requires one."""

from __future__ import annotations

import argparse

from genmesh.config import Flags, parse_bool
from genmesh.tls import ClientTLS


def add_client_tls_flags(parser: argparse.ArgumentParser) -> None:
    """--tls, --tls-ca, --tls-cert, --tls-key (environment: GENMESH_TLS, GENMESH_TLS_CA, ...)."""
    flags = Flags(parser, "GENMESH")
    flags.add("--tls", type=parse_bool, default=False, nargs="?", const=True, help="use TLS (the system's roots)")
    flags.add("--tls-ca", default="", help="PEM CA the server's certificate must chain to (implies --tls)")
    flags.add("--tls-cert", default="", help="PEM client certificate, for a server that requires one (mutual TLS)")
    flags.add("--tls-key", default="", help="PEM private key of --tls-cert")


def client_tls(args: argparse.Namespace) -> ClientTLS | None:
    """The TLS the flags ask for; None for plaintext. ValueError for a certificate without its key."""
    try:
        return ClientTLS.from_flags(args.tls_ca, args.tls_cert, args.tls_key, enabled=bool(args.tls))
    except ValueError as error:
        raise ValueError(f"--tls-cert and --tls-key: {error}") from None


#: The environment variable behind --api-key.
API_KEY_ENV = "GENMESH_API_KEY"


def add_api_key_flag(parser: argparse.ArgumentParser) -> None:
    """--api-key (environment: GENMESH_API_KEY), sent as ``authorization: Bearer <key>``."""
    Flags(parser, "GENMESH").add(
        "--api-key",
        env=API_KEY_ENV,
        default="",
        help="API key for a gateway that requires one (prefer the environment variable)",
    )
