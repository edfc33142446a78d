"""API keys: their records, secrets and hashes, and the checks a new key passes.

A secret is ``gmk_<id>_<43 characters>``: the id (12 lowercase hex digits) names the record, the rest is 32
random bytes. Stores keep a salt and a hash of the secret, never the secret: ``authenticate`` finds the record
by the id the secret carries and compares hashes in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.auth.caller import Caller, Limits, Scope
from genmesh.errors import InvalidArgument, Reason, Unauthenticated

SECRET_PREFIX = "gmk_"
SECRET_BYTES = 32
SALT_BYTES = 16
NAME_PREFIX = "apiKeys/"
MAX_SECRET_CHARS = 200
MAX_TOOL_NAME = 128
MAX_TOOLS = 256
_ID = re.compile(r"[0-9a-f]{12}")
_SECRET = re.compile(rf"{SECRET_PREFIX}([0-9a-f]{{12}})_[A-Za-z0-9_-]{{43}}")
_DISPLAY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TOOL_NAME = re.compile(rf"[\x21-\x7e]{{1,{MAX_TOOL_NAME}}}")
#: Compared against when the secret's id is unknown, so that an unknown id costs what a wrong secret costs.
_NO_SALT = bytes(SALT_BYTES)
_NO_HASH = bytes(32)
NO_LIMITS = Limits()
#: The largest value of each quota field: its protobuf type (int64, int32), which is also its Postgres column's.
LIMIT_MAX = {
    "requests_per_minute": 2**63 - 1,
    "tokens_per_minute": 2**63 - 1,
    "tokens_per_day": 2**63 - 1,
    "max_concurrent_streams": 2**31 - 1,
}
#: The latest expire_time: 9999-12-31T23:59:59Z, the end of google.protobuf.Timestamp's range.
MAX_EXPIRE_TIME = 253_402_300_799.0


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored API key (genmesh.v1.ApiKey without its secret)."""

    id: str
    display_name: str
    salt: bytes
    hash: bytes
    scopes: frozenset[Scope]
    limits: Limits = NO_LIMITS
    allowed_tools: frozenset[str] = field(default_factory=frozenset)
    #: Seconds since the epoch.
    create_time: float = 0.0
    expire_time: float | None = None
    revoke_time: float | None = None
    #: The CreateApiKey request_id that made it ("" for none): a repeated create returns this key.
    request_id: str = ""

    @property
    def name(self) -> str:
        """``apiKeys/{id}``."""
        return NAME_PREFIX + self.id

    @property
    def secret_prefix(self) -> str:
        """The start of the secret, safe to show: ``gmk_<id>``."""
        return SECRET_PREFIX + self.id

    def expired(self, now: float) -> bool:
        """Whether the key's expire_time has passed."""
        return self.expire_time is not None and now >= self.expire_time

    def caller(self) -> Caller:
        """The caller this key makes of an RPC."""
        return Caller(self.name, self.display_name, self.scopes, self.limits, self.allowed_tools)


class KeyRefused(Unauthenticated):
    """An UNAUTHENTICATED answer that knows which key it refused (for the audit line, never for the client)."""

    def __init__(self, message: str, *, reason: str, key_label: str) -> None:
        super().__init__(message, reason=reason)
        self.key_label = key_label


# --- secrets and hashes ---


def new_key_id() -> str:
    """12 random lowercase hex digits."""
    return secrets.token_hex(6)


def new_secret(key_id: str) -> str:
    """``gmk_<id>_`` and 32 random bytes, URL-safe base64 without padding."""
    return f"{SECRET_PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"


def hash_secret(secret: str, salt: bytes) -> bytes:
    """HMAC-SHA256 of the secret keyed by the key's salt.

    A fast hash is right here: the secret is 256 random bits, so no guessing attack is feasible however cheap
    one guess is, and a slow password hash (bcrypt, argon2: ~100 ms of CPU) would add that cost to every RPC and
    hand anyone with a bad key a denial-of-service lever. The per-key salt keeps equal secrets (there are none)
    from equal hashes and makes precomputed tables useless against a leaked store."""
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def new_record(
    display_name: str,
    scopes: Iterable[Scope],
    limits: Limits,
    allowed_tools: Iterable[str],
    expire_time: float | None,
    request_id: str,
    now: float,
) -> tuple[KeyRecord, str]:
    """A checked new record and its secret."""
    key_id = new_key_id()
    secret = new_secret(key_id)
    salt = secrets.token_bytes(SALT_BYTES)
    record = KeyRecord(
        id=key_id,
        display_name=display_name,
        salt=salt,
        hash=hash_secret(secret, salt),
        scopes=frozenset(scopes),
        limits=limits,
        allowed_tools=frozenset(allowed_tools),
        create_time=now,
        expire_time=expire_time,
        request_id=request_id,
    )
    check_record(record)
    return record, secret


def key_id_of(secret: str) -> str | None:
    """The id a well-formed secret carries; None for anything else."""
    if len(secret) > MAX_SECRET_CHARS:
        return None
    match = _SECRET.fullmatch(secret)
    return match.group(1) if match else None


def verify(record: KeyRecord | None, secret: str, now: float) -> Caller:
    """The caller ``secret`` proves, given the record its id names (None: no such key); KeyRefused otherwise.

    The hash is compared in constant time, also for an unknown id (against a hash nothing matches). Revocation
    and expiry are told only to a caller that proved it holds the key."""
    key_id = key_id_of(secret)
    salt, expected = (record.salt, record.hash) if record is not None else (_NO_SALT, _NO_HASH)
    matches = hmac.compare_digest(hash_secret(secret, salt), expected)
    if key_id is None or record is None or record.id != key_id or not matches:
        raise KeyRefused(
            "invalid API key: the gateway knows no key with this secret; check the key you send, or ask an admin "
            "for a new one (`genmesh keys create`)",
            reason=Reason.API_KEY_INVALID,
            key_label=NAME_PREFIX + key_id if key_id else "-",
        )
    if record.revoke_time is not None:
        raise KeyRefused(
            f"API key {record.display_name!r} ({record.name}) was revoked at {iso(record.revoke_time)}; "
            "ask an admin for a new key",
            reason=Reason.API_KEY_INVALID,
            key_label=record.display_name,
        )
    if record.expired(now):
        raise KeyRefused(
            f"API key {record.display_name!r} ({record.name}) expired at {iso(record.expire_time or now)}; "
            "ask an admin for a new key or a later expire_time",
            reason=Reason.API_KEY_INVALID,
            key_label=record.display_name,
        )
    return record.caller()


def iso(seconds: float) -> str:
    """A time as ISO 8601 UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# --- checks of what a client or an admin asks for ---


def parse_key_id(text: str) -> str:
    """The id of ``{id}`` or ``apiKeys/{id}``; InvalidArgument naming ``name`` otherwise."""
    key_id = text.removeprefix(NAME_PREFIX)
    if not _ID.fullmatch(key_id):
        raise InvalidArgument.field("name", "must be apiKeys/ followed by 12 lowercase hex digits")
    return key_id


def parse_scopes(names: Sequence[str]) -> frozenset[Scope]:
    """Scopes from their names; InvalidArgument naming ``scopes`` for an unknown one or none."""
    known = {scope.value for scope in Scope}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidArgument.field("scopes", f"unknown scope {unknown[0][:64]!r}; known: {', '.join(sorted(known))}")
    if not names:
        raise InvalidArgument.field("scopes", f"give at least one of {', '.join(sorted(known))}")
    return frozenset(Scope(name) for name in names)


def check_record(record: KeyRecord) -> None:
    """InvalidArgument naming the first bad field of a key about to be stored."""
    if not _DISPLAY_NAME.fullmatch(record.display_name):
        raise InvalidArgument.field("display_name", "must be 1..64 characters of A-Z a-z 0-9 . _ -")
    if not record.scopes:
        raise InvalidArgument.field("scopes", "give at least one of admin, generate, jobs")
    for name, largest in LIMIT_MAX.items():
        value = getattr(record.limits, name)
        if value is not None and not 0 <= value <= largest:
            raise InvalidArgument.field(
                f"quota.{name}", f"must be 0..{largest} (0 refuses every call; unset: no limit), got {value}"
            )
    if record.expire_time is not None and not record.expire_time <= MAX_EXPIRE_TIME:  # also refuses NaN
        raise InvalidArgument.field("expire_time", f"must be at most {iso(MAX_EXPIRE_TIME)} (or unset: never)")
    if len(record.allowed_tools) > MAX_TOOLS:
        raise InvalidArgument.field("allowed_tools", f"at most {MAX_TOOLS} tools")
    for tool in record.allowed_tools:
        if not _TOOL_NAME.fullmatch(tool):
            raise InvalidArgument.field("allowed_tools", f"tool names are 1..{MAX_TOOL_NAME} printable characters")
