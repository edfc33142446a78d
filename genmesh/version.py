"""The genmesh version a process runs, and how a server tells it: every answer to a grpc.health.v1 ``Check``
carries it as ``genmesh-version`` trailing metadata (genmesh.interceptor), which the gateway's MeshService reads
to report each replica's version."""

from __future__ import annotations

import functools
from importlib import metadata

VERSION_HEADER = "genmesh-version"
"""The trailing metadata key of a health Check answer that holds the server's genmesh version."""


@functools.cache
def version() -> str:
    """The installed genmesh distribution's version; "unknown" when it is not installed (run from a tree)."""
    try:
        return metadata.version("genmesh")
    except metadata.PackageNotFoundError:
        return "unknown"
