"""Where API keys live: the KeyStore protocol, and the store a ``--api-keys`` value names.

The records, secrets and hashes are in gateway/auth/keys.py; the stores in file_keys.py and postgres_keys.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from gateway.auth.caller import Caller, Limits, Scope
from gateway.auth.file_keys import FileKeyStore
from gateway.auth.keys import NO_LIMITS, KeyRecord, KeyRefused
from gateway.auth.postgres_keys import PostgresKeyStore
from gateway.jobs.config import POSTGRES_SCHEMES

__all__ = ["KeyRecord", "KeyRefused", "KeyStore", "open_key_store"]


class KeyStore(Protocol):
    """Where API keys live: a JSON file (file_keys.py) or a table of the Postgres job database (postgres_keys.py).

    ``open`` before use, ``close`` after. Changes made by any writer (the CLI, another gateway) are seen by
    ``authenticate`` within about a second, without a restart."""

    #: Where the keys are, fit for a log line (no password).
    label: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create(
        self,
        display_name: str,
        scopes: Iterable[Scope],
        limits: Limits = NO_LIMITS,
        allowed_tools: Iterable[str] = (),
        expire_time: float | None = None,
        request_id: str = "",
    ) -> tuple[KeyRecord, str]:
        """A new key and its secret (shown only now); with a request_id already used, that key and ""."""
        ...

    async def list(self) -> list[KeyRecord]:
        """Every key, revoked ones included, by id."""
        ...

    async def get(self, key_id: str) -> KeyRecord | None: ...

    async def update(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        """Apply ``change`` to the key atomically; NotFound for an unknown id."""
        ...

    async def revoke(self, key_id: str) -> KeyRecord:
        """Revoke the key now (a revoked key stays revoked, at its first revoke_time); NotFound if unknown."""
        ...

    async def authenticate(self, secret: str) -> Caller:
        """The caller the secret proves; KeyRefused (UNAUTHENTICATED) when it proves none."""
        ...


def open_key_store(spec: str) -> KeyStore:
    """The store ``spec`` names: a ``postgresql://`` URL, else a JSON file path. Call ``open`` on it."""
    if spec.startswith(POSTGRES_SCHEMES):
        return PostgresKeyStore(spec)
    return FileKeyStore(spec)
