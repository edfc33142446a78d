"""The inference engine: domain types and the engines that stream generations from a loaded model."""

from services.inference.engine.config import EngineConfig
from services.inference.engine.engine import Engine
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
    "Engine",
    "EngineConfig",
    "FinishReason",
    "Finished",
    "GenerationRequest",
    "LoadStats",
    "ModelInfo",
    "TokenChunk",
    "TokenLogprob",
]
