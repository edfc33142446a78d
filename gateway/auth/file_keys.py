"""API keys in a JSON file: written atomically (a temporary file renamed over it), re-read on change. A new file
is mode 0600; a rewritten one keeps its owner and mode, so that `sudo genmesh keys ...` leaves the gateway's
user able to read it.

Every ``authenticate`` stats the file (about a microsecond, against the ~100 µs a gRPC call costs anyway) and
re-reads it when its inode, size or modification time changed: a key created or revoked by `genmesh keys`
takes effect on the gateway's next call, with no timer and no restart. Writers (the CLI, the gateway's
ApiKeyService) take an exclusive ``flock`` on ``<file>.lock`` around each read-modify-write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from gateway.auth.caller import Caller, Limits, Scope
from gateway.auth.keys import NO_LIMITS, KeyRecord, check_record, key_id_of, new_record, verify
from genmesh.errors import InvalidArgument, NotFound

log = logging.getLogger("genmesh.gateway.auth")

FORMAT_VERSION = 1
_LIMITS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "max_concurrent_streams")
Signature = tuple[int, int, int, int]


class FileKeyStore:
    """KeyStore on one JSON file."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.label = str(self.path)
        self._clock = clock
        self._signature: Signature | None = None
        self._keys: dict[str, KeyRecord] = {}

    async def open(self) -> None:
        self._current(strict=True)  # a file that does not parse stops the start-up

    async def close(self) -> None:
        """Nothing is held open."""

    async def create(
        self,
        display_name: str,
        scopes: Iterable[Scope],
        limits: Limits = NO_LIMITS,
        allowed_tools: Iterable[str] = (),
        expire_time: float | None = None,
        request_id: str = "",
    ) -> tuple[KeyRecord, str]:
        record, secret = new_record(display_name, scopes, limits, allowed_tools, expire_time, request_id, self._clock())
        with self._writing() as keys:
            if request_id:
                for existing in keys.values():
                    if existing.request_id == request_id:
                        if existing.display_name != display_name:
                            raise InvalidArgument.field(
                                "request_id", f"was used to create {existing.name} with another display_name"
                            )
                        return existing, ""
            while record.id in keys:  # 48 random bits: practically never
                record, secret = new_record(
                    display_name, scopes, limits, allowed_tools, expire_time, request_id, self._clock()
                )
            keys[record.id] = record
        return record, secret

    async def list(self) -> list[KeyRecord]:
        return [self._current()[key_id] for key_id in sorted(self._current())]

    async def get(self, key_id: str) -> KeyRecord | None:
        return self._current().get(key_id)

    async def update(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        with self._writing() as keys:
            record = _known(keys, key_id)
            changed = change(record)
            check_record(changed)
            keys[key_id] = changed
        return changed

    async def revoke(self, key_id: str) -> KeyRecord:
        with self._writing() as keys:
            record = _known(keys, key_id)
            if record.revoke_time is None:
                record = keys[key_id] = dataclasses.replace(record, revoke_time=self._clock())
        return record

    async def authenticate(self, secret: str) -> Caller:
        key_id = key_id_of(secret)
        return verify(self._current().get(key_id) if key_id else None, secret, self._clock())

    # --- the file ---

    def _current(self, strict: bool = False) -> dict[str, KeyRecord]:
        """The keys as the file holds them now: re-read only when the file changed since the last read. A file
        that no longer parses or cannot be read is an error when ``strict`` or at the first read, else the last
        keys are kept."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._signature, self._keys = None, {}
            return self._keys
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if signature != self._signature:
            try:
                self._keys = _parse(_read(self.path), self.path)
            except ValueError as error:
                if strict or self._signature is None:
                    raise
                # A hand edit gone wrong, or a file the gateway may no longer read: keep serving the keys last
                # read, and say so once per bad version.
                log.error("api key file not reloaded", extra={"store": self.label, "error": str(error)})
            else:
                log.info("api keys loaded", extra={"store": self.label, "keys": len(self._keys)})
            self._signature = signature
        return self._keys

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, KeyRecord]]:
        """The keys to change, under the writers' lock; written back atomically when the block succeeds."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = self._open_lock()
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            self._signature = None  # read afresh under the lock
            keys = dict(self._current(strict=True))
            yield keys
            self._write(keys)
        finally:
            os.close(lock_fd)  # releases the lock

    def _open_lock(self) -> int:
        """The writers' lock file, opened; one created now gets the key file's owner, as the key file itself."""
        lock = f"{self.path}.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return os.open(lock, os.O_RDWR)
        try:
            _keep_owner_and_mode(fd, self.path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _write(self, keys: dict[str, KeyRecord]) -> None:
        document = {"version": FORMAT_VERSION, "keys": [_to_json(keys[key_id]) for key_id in sorted(keys)]}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)  # mode 0600
        try:
            _keep_owner_and_mode(fd, self.path)
            with os.fdopen(fd, "w") as out:
                json.dump(document, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)


def _read(path: Path) -> bytes:
    """The file's bytes; ValueError naming it when it cannot be read (a PermissionError after someone rewrote
    it as another user), so that a running gateway keeps its keys as it does for a file that does not parse."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the API key file {path}: {error.strerror or error}") from None


def _keep_owner_and_mode(fd: int, path: Path) -> None:
    """Give the new file ``fd`` the owner, group and mode of the file it replaces (if any). Changing the owner
    needs root: a writer that is not root and not the owner keeps its own (EPERM ignored)."""
    try:
        old = os.stat(path)
    except FileNotFoundError:
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError as error:
        if error.errno != errno.EPERM:
            raise
    os.fchmod(fd, stat.S_IMODE(old.st_mode))


def _known(keys: dict[str, KeyRecord], key_id: str) -> KeyRecord:
    record = keys.get(key_id)
    if record is None:
        raise NotFound(f"no API key apiKeys/{key_id}")
    return record


def _to_json(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "display_name": record.display_name,
        "salt": record.salt.hex(),
        "hash": record.hash.hex(),
        "scopes": sorted(record.scopes),
        "quota": {name: getattr(record.limits, name) for name in _LIMITS if getattr(record.limits, name) is not None},
        "allowed_tools": sorted(record.allowed_tools),
        "create_time": record.create_time,
        "expire_time": record.expire_time,
        "revoke_time": record.revoke_time,
        "request_id": record.request_id,
    }


def _parse(data: bytes, path: Path) -> dict[str, KeyRecord]:
    """The keys of a file's bytes; ValueError naming the file when they are not a key file."""
    try:
        document = json.loads(data)
        if document.get("version") != FORMAT_VERSION:
            raise ValueError(f"unknown version {document.get('version')!r}")
        keys = {}
        for item in document["keys"]:
            record = KeyRecord(
                id=item["id"],
                display_name=item["display_name"],
                salt=bytes.fromhex(item["salt"]),
                hash=bytes.fromhex(item["hash"]),
                scopes=frozenset(Scope(s) for s in item["scopes"]),
                limits=Limits(**{name: item["quota"].get(name) for name in _LIMITS}),
                allowed_tools=frozenset(item["allowed_tools"]),
                create_time=float(item["create_time"]),
                expire_time=item["expire_time"],
                revoke_time=item["revoke_time"],
                request_id=item.get("request_id", ""),
            )
            keys[record.id] = record
        return keys
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not an API key file: {error}") from None
