"""Flags read their environment fallback at parse time: flag beats environment beats default."""

from __future__ import annotations

import argparse

import pytest

from genmesh.config import Flags


def _parser(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> argparse.ArgumentParser:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    Flags(parser, "GENMESH_TEST").add("--max-waiting", type=int, default=64, help="queue size")
    return parser


def test_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _parser(monkeypatch, {}).parse_args([]).max_waiting == 64
    assert _parser(monkeypatch, {"GENMESH_TEST_MAX_WAITING": "8"}).parse_args([]).max_waiting == 8
    parser = _parser(monkeypatch, {"GENMESH_TEST_MAX_WAITING": "8"})
    assert parser.parse_args(["--max-waiting", "3"]).max_waiting == 3


def test_bad_environment_value_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parser(monkeypatch, {"GENMESH_TEST_MAX_WAITING": "many"})
    assert "GENMESH_TEST_MAX_WAITING='many' is invalid" in capsys.readouterr().err
