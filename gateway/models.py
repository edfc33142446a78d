"""ModelService: the models the mesh serves (the OpenAI-compatible front's GET /v1/models), from what the gateway
knows of its upstreams: the inference replicas' GetModelInfo (asked once) and the retrieval service's
GetEmbedderInfo (cached briefly). An upstream that cannot be asked leaves its model out of the list (logged), so
that listing never fails because one service is down."""

from __future__ import annotations

import logging

import grpc

from gateway.resilience import CircuitOpen
from gateway.upstreams import Upstreams
from genmesh.paging import check_page_size, decode_page_token, encode_page_token, fitting
from genmesh.v1 import models_pb2, models_pb2_grpc

log = logging.getLogger("genmesh.gateway")

SERVICE_NAME = models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
LANGUAGE_MODEL = (models_pb2.MODEL_CAPABILITY_CHAT, models_pb2.MODEL_CAPABILITY_COMPLETIONS)


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    """Lists the served models, sorted by id, paged by the last id sent."""

    def __init__(self, upstreams: Upstreams) -> None:
        self._upstreams = upstreams

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        check_page_size(request.page_size)
        after = decode_page_token(request.page_token, "models", 1)[0] if request.page_token else ""
        models = sorted((m for m in await self.models() if m.id > after), key=lambda m: m.id)
        page = models[: request.page_size or len(models)]
        count = fitting(page)
        response = models_pb2.ListModelsResponse(models=page[:count])
        if count < len(models):
            response.next_page_token = encode_page_token("models", page[count - 1].id)
        return response

    async def models(self) -> list[models_pb2.Model]:
        """Every model an upstream reports now."""
        found: list[models_pb2.Model] = []
        try:
            info = await self._upstreams.model_info()
            found.append(
                models_pb2.Model(id=info.model, context_length_tokens=info.context_length, capabilities=LANGUAGE_MODEL)
            )
        except (grpc.aio.AioRpcError, CircuitOpen) as error:
            log.warning("the language model is left out of ListModels", extra={"error": _describe(error)})
        try:
            embedder = await self._upstreams.embedder_info()
            found.append(
                models_pb2.Model(
                    id=embedder.model,
                    context_length_tokens=embedder.max_input_tokens,
                    capabilities=[models_pb2.MODEL_CAPABILITY_EMBEDDINGS],
                )
            )
        except (grpc.aio.AioRpcError, CircuitOpen) as error:
            log.warning("the embedding model is left out of ListModels", extra={"error": _describe(error)})
        return found


def _describe(error: grpc.aio.AioRpcError | CircuitOpen) -> str:
    if isinstance(error, CircuitOpen):
        return error.message
    return f"{error.code().name}: {error.details()}"
