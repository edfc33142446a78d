"""The inference engine: domain types and the engines that stream generations from a loaded model."""

from services.inference.engine.sequential import SequentialEngine
from services.inference.engine.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    LoadStats,
    ModelInfo,
    TokenChunk,
    TokenLogprob,
)

__all__ = [
    "FinishReason",
    "Finished",
    "GenerationRequest",
    "LoadStats",
    "ModelInfo",
    "SequentialEngine",
    "TokenChunk",
    "TokenLogprob",
]
