"""POST /v1/embeddings: OpenAI's embeddings API over the gateway's EmbeddingService.Embed (the retrieval service's
embedder; API keys and their limits apply as to every gateway call).

Request: ``input`` (a string or a list of 1..256 strings; token arrays are refused), ``model`` (absent or the id
GET /v1/models lists for the embedder, else 404 model_not_found), ``encoding_format`` (``float``, the default, or
``base64``: the little-endian float32 bytes, as OpenAI's clients decode them), ``dimensions`` (the model's own
only), ``user`` (accepted, unused). Errors in OpenAI's shape, naming the request's field (``input[3]``)."""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.http.bodies import read_json
from gateway.http.context import HttpContext
from gateway.http.errors import HttpError, bad_field, http_error
from gateway.http.gateway_call import metadata_of
from genmesh.v1 import embeddings_pb2, embeddings_pb2_grpc

FIELDS = frozenset({"input", "model", "encoding_format", "dimensions", "user"})
ENCODINGS = ("float", "base64")


def embed_request(body: Any) -> tuple[embeddings_pb2.EmbedRequest, str]:
    """The EmbedRequest of an OpenAI body and its encoding format; HttpError (400) naming the field."""
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object", code="invalid_json")
    for name in body:
        if name not in FIELDS:
            raise bad_field(name, "not supported by genmesh", "unsupported_parameter")
    given = body.get("input")
    if isinstance(given, str):
        inputs = [given]
    elif isinstance(given, list) and all(isinstance(text, str) for text in given):
        inputs = given
    elif given is None:
        raise bad_field("input", "is required", "missing_required_parameter")
    else:
        raise bad_field("input", "must be a string or a list of strings (token arrays are not supported)")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_field("model", "must be a string")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ENCODINGS:
        raise bad_field("encoding_format", f"must be one of {', '.join(ENCODINGS)}")
    request = embeddings_pb2.EmbedRequest(model=model or "", inputs=inputs)
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not -(2**31) <= dimensions < 2**31:
            raise bad_field("dimensions", "must be an integer")
        request.dimensions = dimensions
    return request, encoding or "float"


def embeddings_body(answer: embeddings_pb2.EmbedResponse, encoding: str) -> dict[str, Any]:
    """The OpenAI response of an EmbedResponse."""
    data: list[dict[str, Any]] = []
    for embedding in answer.embeddings:
        values: Any = list(embedding.values)
        if encoding == "base64":
            values = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()  # little-endian float32
        data.append({"object": "embedding", "index": embedding.index, "embedding": values})
    tokens = answer.usage.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": answer.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _encoded(answer: embeddings_pb2.EmbedResponse, encoding: str) -> bytes:
    return bytes(JSONResponse(embeddings_body(answer, encoding)).body)


def embed_error(error: grpc.aio.AioRpcError) -> HttpError:
    """The HttpError of a failed Embed: fields by the OpenAI request's names, an unknown model as OpenAI says it."""
    failure = http_error(error)
    if error.code() == grpc.StatusCode.NOT_FOUND:
        failure.param, failure.code = "model", "model_not_found"
    elif failure.param is not None and failure.param.startswith("inputs"):
        renamed = "input" + failure.param.removeprefix("inputs")
        failure.message = failure.message.replace(failure.param, renamed, 1)
        failure.param = renamed
    return failure


def routes(ctx: HttpContext) -> list[BaseRoute]:
    stub = embeddings_pb2_grpc.EmbeddingServiceStub(ctx.channel)

    async def embeddings(request: Request) -> Response:
        try:
            body = await read_json(request)
            embed, encoding = embed_request(body)
            try:
                answer = await stub.Embed(embed, metadata=metadata_of(request.headers))
            except grpc.aio.AioRpcError as error:
                raise embed_error(error) from None
        except HttpError as error:
            return error.response()
        encoded = await asyncio.to_thread(_encoded, answer, encoding)  # up to 256x384 floats: off the loop
        return Response(encoded, media_type="application/json")

    return [Route("/v1/embeddings", embeddings, methods=["POST"])]
