"""Helpers for the API-key tests: the ErrorInfo of a failed call, and a call's bearer metadata."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from genmesh.bearer import bearer_metadata

bearer = bearer_metadata
"""The call metadata that presents a secret."""


def create_key(store: Path, name: str, *limits: str) -> str:
    """``genmesh keys --store STORE create NAME --scopes generate LIMITS...``: the secret it prints."""
    command = [sys.executable, "-m", "genmesh.cli", "keys", "--store", str(store), "create", name, "--scopes"]
    done = subprocess.run([*command, "generate", *limits], capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


def random_part(secret: str) -> str:
    """The 43 random characters of ``gmk_<id>_<random>`` (they may contain ``_`` themselves)."""
    return secret[-43:]


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo detail of a failed call's status."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status: {error.code()} {error.details()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in {error.details()}")


def quota_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The (subject, description) pairs of a failed call's QuotaFailure details."""
    status = rpc_status.from_call(error)
    assert status is not None
    found: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            found.extend((v.subject, v.description) for v in failure.violations)
    return found
