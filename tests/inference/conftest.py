"""Shared fixtures of the inference tests: the shipped model (its in-tree copy), loaded once per test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.inference.models.loader import LoadedModel, load_model

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "genmesh-tiny-llama"


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(MODEL_DIR, device="cpu")
