"""The `genmesh` command's rough edges, as a user meets them: --version, a bad --model refused before any port is
bound, an empty folder not ingested, skipped files counted, a taken port named before `up` starts anything."""

from __future__ import annotations

import argparse
import socket
from collections import Counter
from pathlib import Path

import grpc
import pytest
from support.genmesh_cli import genmesh

from genmesh import mesh
from genmesh.cli.ingest_command import describe_skipped, skipped_files
from genmesh.cli.launcher import free_ports
from genmesh.cli.ports import busy_ports
from genmesh.cli.serve_checks import MODEL_ENV, check_serve, given_model
from genmesh.cli.up import add_up_parser, service_flags, state_env
from genmesh.version import version


async def test_version() -> None:
    ran = await genmesh("--version")
    assert ran.returncode == 0 and ran.stdout.strip() == f"genmesh {version()}"
    assert version() != "unknown"


async def test_serve_inference_with_a_missing_model_is_one_line_before_any_port_is_bound(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    ran = await genmesh("serve", "inference", "--port", str(port), "--model", str(tmp_path / "nowhere"))
    assert ran.returncode == 1 and ran.stdout == ""
    assert ran.stderr.splitlines() == [
        f"error: --model {tmp_path / 'nowhere'}: no such directory; pass --model DIR (or set "
        "GENMESH_INFERENCE_MODEL), a model directory in Hugging Face layout (config.json, tokenizer.json, "
        "*.safetensors)"
    ]


def test_model_directories_are_checked_for_what_a_model_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert given_model(["--port", "1"]) is None
    monkeypatch.setenv(MODEL_ENV, "/from/env")
    assert given_model(["--port", "1"]) == "/from/env"
    assert given_model(["--model", "a", "--model=b"]) == "b"
    (tmp_path / "config.json").write_text("{}")
    problem = check_serve("inference", ["--model", str(tmp_path)])
    assert problem is not None and "missing tokenizer.json, *.safetensors weights" in problem
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert check_serve("inference", ["--model", str(tmp_path)]) is None
    assert check_serve("inference", ["--model", "/nonexistent", "--help"]) is None
    assert check_serve("tools", ["--model", "/nonexistent"]) is None
    shipped = Path(__file__).resolve().parents[2] / "models" / "genmesh-tiny-llama"
    assert check_serve("inference", ["--model", str(shipped)]) is None


async def test_ingesting_a_folder_without_text_files_makes_no_collection(tmp_path: Path) -> None:
    (tmp_path / "scan.pdf").write_bytes(b"%PDF")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "photo.PNG").write_bytes(b"")
    (tmp_path / "sub" / "b.pdf").write_bytes(b"")
    (port,) = free_ports(1)  # nothing listens: the command must fail before it calls
    ran = await genmesh("ingest", str(tmp_path), "--target", f"127.0.0.1:{port}")
    assert ran.returncode == 1 and ran.stdout == ""
    assert ran.stderr.strip() == (
        f"error: no .txt or .md files under {tmp_path} (only 2 .pdf, 1 .png): nothing to ingest, no collection made"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    ran = await genmesh("ingest", str(empty), "--target", f"127.0.0.1:{port}")
    assert ran.returncode == 1 and ran.stderr.strip().endswith(f"no .txt or .md files under {empty}: nothing to "
                                                                "ingest, no collection made")  # fmt: skip


def test_skipped_files_are_counted_by_extension(tmp_path: Path) -> None:
    for name in ("a.md", "b.TXT", "c.pdf", "d.pdf", "Makefile", "e.html"):
        (tmp_path / name).write_text("x")
    skipped = skipped_files(tmp_path)
    assert skipped == Counter({".pdf": 2, "(none)": 1, ".html": 1})
    assert describe_skipped(skipped) == "2 .pdf, 1 (none), 1 .html"


async def test_a_taken_port_is_named_before_anything_starts() -> None:
    server = grpc.aio.server()  # a gRPC listener, as a running mesh has: it sets SO_REUSEPORT
    taken = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        with socket.create_server(("127.0.0.1", 0)) as plain:
            other = plain.getsockname()[1]
            spare = free_ports(2)
            ports = {"retrieval": spare[0], "tools": other, "inference": spare[1], "gateway": taken}
            assert busy_ports("127.0.0.1", ports) == [
                f"tools port 127.0.0.1:{other} (--tools-port): already in use",
                f"gateway port 127.0.0.1:{taken} (--gateway-port): already in use",
            ]
            assert busy_ports("127.0.0.1", {"retrieval": spare[0], "tools": spare[0]}) == [
                f"port {spare[0]} is given to both retrieval and tools"
            ]
            flags = [arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]
            ran = await genmesh("up", "--exit", "--log-dir", "-", *flags)
    finally:
        await server.stop(None)
    assert ran.returncode == 1 and "starting the mesh" not in ran.stdout
    assert f"gateway port 127.0.0.1:{taken} (--gateway-port): already in use" in ran.stderr
    assert f"tools port 127.0.0.1:{other} (--tools-port): already in use" in ran.stderr
    assert set(mesh.BY_NAME) == set(ports)


async def test_up_refuses_a_missing_model_before_it_starts_anything(tmp_path: Path) -> None:
    ran = await genmesh("up", "--exit", "--data-dir", str(tmp_path), "--model", str(tmp_path / "nowhere"))
    assert ran.returncode == 1 and ran.stdout == ""
    assert ran.stderr.splitlines() == [
        f"error: --model {tmp_path / 'nowhere'}: no such directory; a model directory in Hugging Face layout "
        "(config.json, tokenizer.json, *.safetensors)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_up_s_flags_reach_the_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_up_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["up", "--data-dir", str(tmp_path), "--model", "m", "--mcp-server", "notes=notes-mcp", "--tools-module", "x:y"]
    )
    assert service_flags(args) == {
        "inference": ["--model", "m"],
        "tools": ["--mcp-server", "notes=notes-mcp", "--tools-module", "x:y"],
    }
    monkeypatch.delenv("GENMESH_RETRIEVAL_DATA_DIR", raising=False)
    monkeypatch.setenv("GENMESH_GATEWAY_JOBS_DB", "/chosen/jobs.db")
    assert state_env(Path(args.data_dir)) == {"GENMESH_RETRIEVAL_DATA_DIR": str(tmp_path / "data" / "retrieval")}
