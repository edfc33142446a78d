"""ApiKeyService: protobuf in, the key store's records out as protobuf; every field checked at the edge."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import grpc

from gateway.auth.caller import Limits
from gateway.auth.keys import KeyRecord, parse_key_id, parse_scopes
from gateway.auth.keystore import KeyStore
from genmesh.errors import InvalidArgument
from genmesh.interceptor import REQUEST_ID_RULE, valid_request_id
from genmesh.paging import check_page_size, decode_page_token, encode_page_token, fitting
from genmesh.v1 import api_keys_pb2, api_keys_pb2_grpc

SERVICE_NAME = api_keys_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name
DEFAULT_PAGE_SIZE = 50
LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "max_concurrent_streams")
UPDATABLE = ("display_name", "scopes", "quota", "allowed_tools", "expire_time")


class ApiKeyServicer(api_keys_pb2_grpc.ApiKeyServiceServicer):
    """The ApiKeyService RPCs over a KeyStore (the auth interceptor lets only admin keys in)."""

    def __init__(self, store: KeyStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def CreateApiKey(
        self, request: api_keys_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> api_keys_pb2.CreateApiKeyResponse:
        key = request.api_key
        if request.request_id and not valid_request_id(request.request_id):
            raise InvalidArgument.field("request_id", f"{REQUEST_ID_RULE}, got {len(request.request_id)} characters")
        try:
            scopes = parse_scopes(list(key.scopes))
            limits = limits_of(key.quota)
            expire_time = self._expire_time(key) if key.HasField("expire_time") else None
        except InvalidArgument as error:
            raise error.prefixed("api_key") from None
        try:
            record, secret = await self._store.create(
                key.display_name, scopes, limits, list(key.allowed_tools), expire_time, request.request_id
            )
        except InvalidArgument as error:
            raise (error if error.violations[0].field == "request_id" else error.prefixed("api_key")) from None
        return api_keys_pb2.CreateApiKeyResponse(api_key=to_proto(record), secret=secret)

    async def ListApiKeys(
        self, request: api_keys_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> api_keys_pb2.ListApiKeysResponse:
        check_page_size(request.page_size)
        after = ""
        if request.page_token:
            (after,) = decode_page_token(request.page_token, "apiKeys", 1)
        size = request.page_size or DEFAULT_PAGE_SIZE
        records = [r for r in await self._store.list() if r.id > after]
        keys = [to_proto(r) for r in records[:size]]
        count = fitting(keys)
        response = api_keys_pb2.ListApiKeysResponse(api_keys=keys[:count])
        if len(records) > count:
            response.next_page_token = encode_page_token("apiKeys", records[count - 1].id)
        return response

    async def UpdateApiKey(
        self, request: api_keys_pb2.UpdateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> api_keys_pb2.UpdateApiKeyResponse:
        key = request.api_key
        try:
            key_id = parse_key_id(key.name)
        except InvalidArgument as error:
            raise error.prefixed("api_key") from None
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidArgument.field("update_mask", f"name at least one of {', '.join(UPDATABLE)}")
        changes: dict[str, Any] = {}
        quota_changes: dict[str, int | None] = {}
        try:
            for path in paths:
                top, _, sub = path.partition(".")
                if top not in UPDATABLE or (sub and (top != "quota" or sub not in LIMIT_FIELDS)):
                    raise InvalidArgument.field("update_mask", f"cannot update {path[:64]!r}; paths: {UPDATABLE}")
                if top == "display_name":
                    changes["display_name"] = key.display_name
                elif top == "scopes":
                    changes["scopes"] = parse_scopes(list(key.scopes))
                elif top == "allowed_tools":
                    changes["allowed_tools"] = frozenset(key.allowed_tools)
                elif top == "expire_time":
                    changes["expire_time"] = self._expire_time(key) if key.HasField("expire_time") else None
                elif top == "quota":  # only the masked limits: the others are neither read nor checked
                    quota_changes.update(limit_values(key.quota, (sub,) if sub else LIMIT_FIELDS))
        except InvalidArgument as error:
            raise (error if error.violations[0].field == "update_mask" else error.prefixed("api_key")) from None

        def change(record: KeyRecord) -> KeyRecord:
            return dataclasses.replace(record, limits=dataclasses.replace(record.limits, **quota_changes), **changes)

        try:
            record = await self._store.update(key_id, change)
        except InvalidArgument as error:
            raise error.prefixed("api_key") from None
        return api_keys_pb2.UpdateApiKeyResponse(api_key=to_proto(record))

    async def RevokeApiKey(
        self, request: api_keys_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> api_keys_pb2.RevokeApiKeyResponse:
        return api_keys_pb2.RevokeApiKeyResponse(api_key=to_proto(await self._store.revoke(parse_key_id(request.name))))

    def _expire_time(self, key: api_keys_pb2.ApiKey) -> float:
        seconds = key.expire_time.ToNanoseconds() / 1e9
        if seconds <= self._clock():
            raise InvalidArgument.field("expire_time", "must be in the future")
        return seconds


def limits_of(quota: api_keys_pb2.Quota) -> Limits:
    """The Limits of a Quota message (unset fields: no limit); InvalidArgument naming quota.* when one is < 0."""
    return Limits(**limit_values(quota, LIMIT_FIELDS))


def limit_values(quota: api_keys_pb2.Quota, names: tuple[str, ...]) -> dict[str, int | None]:
    """The ``names`` fields of a Quota message (unset: None, no limit); InvalidArgument naming quota.* when one
    is < 0 (the upper bounds are the proto's own; keys.check_record checks the whole key again)."""
    values = {name: getattr(quota, name) if quota.HasField(name) else None for name in names}  # type: ignore[arg-type]
    for name, value in values.items():
        if value is not None and value < 0:
            raise InvalidArgument.field(f"quota.{name}", "must not be negative (0 refuses every call; unset: no limit)")
    return values


def to_proto(record: KeyRecord) -> api_keys_pb2.ApiKey:
    """The ApiKey message of a stored key: never its secret or hash."""
    quota = api_keys_pb2.Quota(
        **{name: getattr(record.limits, name) for name in LIMIT_FIELDS if getattr(record.limits, name) is not None}
    )
    key = api_keys_pb2.ApiKey(
        name=record.name,
        display_name=record.display_name,
        secret_prefix=record.secret_prefix,
        quota=quota,
        scopes=sorted(record.scopes),
        allowed_tools=sorted(record.allowed_tools),
    )
    key.create_time.FromNanoseconds(round(record.create_time * 1e9))
    if record.expire_time is not None:
        key.expire_time.FromNanoseconds(round(record.expire_time * 1e9))
    if record.revoke_time is not None:
        key.revoke_time.FromNanoseconds(round(record.revoke_time * 1e9))
    return key
