"""Running one request on an in-process engine to its end."""

from __future__ import annotations

from services.inference.engine import Engine, Finished, GenerationRequest, TokenChunk


async def run(engine: Engine, request: GenerationRequest) -> tuple[list[int], Finished]:
    """The token ids ``request`` streamed, and how it finished."""
    ids: list[int] = []
    async for item in engine.generate(request):
        if isinstance(item, TokenChunk):
            ids.extend(item.token_ids)
        else:
            return ids, item
    raise AssertionError("no Finished")
