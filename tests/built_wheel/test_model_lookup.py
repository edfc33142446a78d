"""Where `genmesh serve inference` finds the shipped model: inside the installed package first (a wheel), else in the
source tree; neither there is one line saying to pass --model, before anything is loaded or bound."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from genmesh.cli import serve_checks
from genmesh.cli.serve_checks import MODEL_ENV, check_serve
from services.inference import shipped_model

TREE_MODEL = Path(__file__).resolve().parents[2] / "models" / "genmesh-tiny-llama"


def test_the_installed_model_comes_before_the_source_trees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = tmp_path / "shipped" / shipped_model.NAME
    monkeypatch.setattr(shipped_model, "INSTALLED", installed)
    assert shipped_model.shipped_model() == TREE_MODEL  # a source checkout: nothing installed beside the module
    shutil.copytree(TREE_MODEL, installed)
    assert shipped_model.shipped_model() == installed


def test_a_missing_default_model_is_one_line_saying_to_pass_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert check_serve("inference", ["--port", "1"]) is None  # the shipped model is there
    monkeypatch.setattr(serve_checks, "shipped_model", lambda: tmp_path / "gone")
    problem = check_serve("inference", ["--port", "1"])
    assert problem == (
        f"error: the shipped model {tmp_path / 'gone'}: no such directory; pass --model DIR (or set {MODEL_ENV}), "
        f"{serve_checks.MODEL_LAYOUT}"
    )
    assert check_serve("inference", ["--model", str(TREE_MODEL)]) is None  # --model does without the shipped one
