"""Repeatable flags with an environment fallback (``Flags.add_repeated``), as the tools service uses them."""

from __future__ import annotations

import argparse

import pytest

from genmesh.config import Flags


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    Flags(parser, "GENMESH_TOOLS").add_repeated("--mcp-server", help="an MCP server")
    return parser


def test_environment_items_are_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENMESH_TOOLS_MCP_SERVER", "a=run a; b=run b ;")
    assert _parser().parse_args([]).mcp_server == ["a=run a", "b=run b"]


def test_flags_replace_the_environment_and_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENMESH_TOOLS_MCP_SERVER", "a=run a")
    args = _parser().parse_args(["--mcp-server", "c=run c", "--mcp-server", "d=run d"])
    assert args.mcp_server == ["c=run c", "d=run d"]


def test_unset_means_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENMESH_TOOLS_MCP_SERVER", raising=False)
    assert _parser().parse_args([]).mcp_server == []
