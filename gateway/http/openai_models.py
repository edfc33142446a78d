"""GET /v1/models and GET /v1/models/{id}: OpenAI's model list over the gateway's ModelService.ListModels (every
page). The language model is listed under the name this front answers chat and completions with (``--model-name``,
so that a client can use the id it lists), its own id in ``root`` as vLLM does; the embedding model under its id.
Each entry also says its ``context_length`` (tokens) and genmesh's ``capabilities``."""

from __future__ import annotations

from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.http.context import HttpContext
from gateway.http.errors import HttpError, http_error
from gateway.http.gateway_call import metadata_of
from genmesh.v1 import models_pb2, models_pb2_grpc

OWNER = "genmesh"
MAX_PAGES = 100
_CAPABILITIES = {
    models_pb2.MODEL_CAPABILITY_CHAT: "chat",
    models_pb2.MODEL_CAPABILITY_COMPLETIONS: "completions",
    models_pb2.MODEL_CAPABILITY_EMBEDDINGS: "embeddings",
}


def model_entry(model: models_pb2.Model, served_name: str) -> dict[str, Any]:
    """One OpenAI model object; a language model under ``served_name`` (its own id when empty)."""
    language = models_pb2.MODEL_CAPABILITY_CHAT in model.capabilities
    return {
        "id": (served_name or model.id) if language else model.id,
        "object": "model",
        "created": 0,
        "owned_by": OWNER,
        "root": model.id,
        "context_length": model.context_length_tokens,
        "capabilities": [_CAPABILITIES[c] for c in model.capabilities if c in _CAPABILITIES],
    }


async def list_models(ctx: HttpContext, metadata: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every model the gateway lists, as OpenAI model objects; AioRpcError when the gateway refuses."""
    stub = models_pb2_grpc.ModelServiceStub(ctx.channel)
    entries: list[dict[str, Any]] = []
    token = ""
    for _ in range(MAX_PAGES):
        page = await stub.ListModels(models_pb2.ListModelsRequest(page_token=token), metadata=metadata)
        entries.extend(model_entry(model, ctx.model) for model in page.models)
        token = page.next_page_token
        if not token:
            break
    return entries


async def served_model(ctx: HttpContext, metadata: list[tuple[str, str]]) -> str:
    """The name chat and completions answer as: ``--model-name``, else the gateway's language model's id, asked
    with the caller's credentials on first use and kept; AioRpcError when the gateway refuses."""
    if not ctx.model:
        for entry in await list_models(ctx, metadata):
            if "chat" in entry["capabilities"]:
                ctx.model = entry["id"]
                break
        else:
            raise HttpError(503, "the gateway lists no language model", "server_error", None, "no_language_model")
    return ctx.model


def routes(ctx: HttpContext) -> list[BaseRoute]:
    async def models(request: Request) -> Response:
        try:
            entries = await list_models(ctx, metadata_of(request.headers))
        except grpc.aio.AioRpcError as error:
            return http_error(error).response()
        wanted = request.path_params.get("model")
        if wanted is None:
            return JSONResponse({"object": "list", "data": entries})
        for entry in entries:
            if entry["id"] == wanted:
                return JSONResponse(entry)
        message = f"The model {wanted!r} does not exist"
        return HttpError(404, message, "invalid_request_error", "model", "model_not_found").response()

    return [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", models, methods=["GET"]),
    ]
