"""A new user's path through the CLI on the real mesh (subprocesses): `genmesh ingest` a folder (the files it
skips counted), `genmesh ask --collection` that collection (its document is the source, shown once), `genmesh
tools list` on the tools service, and `genmesh ask --json` streaming one event a line."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

from support.genmesh_cli import genmesh

from genmesh.cli.launcher import Mesh


async def test_ingest_a_folder_then_ask_that_collection(mesh: Mesh, tmp_path: Path) -> None:
    (tmp_path / "kettle.md").write_text("# Kettle care\n\nDescale the kettle every month with white vinegar.\n" * 20)
    (tmp_path / "manual.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    name = f"cli-{uuid.uuid4().hex[:10]}"
    ingested = await genmesh("ingest", str(tmp_path), "--collection", name, "--target", mesh.address("retrieval"))
    assert ingested.returncode == 0, ingested.stderr
    assert "skipping 2 files not .txt or .md: 1 .pdf, 1 .png" in ingested.stderr
    assert f"1 documents committed to '{name}'" in ingested.stdout

    asked = await genmesh(
        "ask", "--target", mesh.address("gateway"), "--collection", name, "--sources", "3", "--max-tokens", "4",
        "--temperature", "0", "How do I descale the kettle?", timeout_s=120,
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    sources = re.findall(r"^  \d+\. (.+) \((\S+)\) rank \d+, rank score \d\.\d{3}", asked.stdout, re.MULTILINE)
    assert sources == [("Kettle care", "kettle.md")], asked.stdout  # several passages, one document


async def test_ask_json_and_tools_list_on_the_mesh(mesh: Mesh) -> None:
    asked = await genmesh(
        "ask", "--target", mesh.address("gateway"), "--json", "--max-tokens", "3", "--logprobs", "2",
        "--tool", 'unit_convert:{"value": 1, "from_unit": "km", "to_unit": "m"}', "What is a generator?",
        timeout_s=120,
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    events = [json.loads(line) for line in asked.stdout.splitlines()]
    assert {"sources", "toolResult", "delta", "complete"} <= {next(iter(e)) for e in events}
    assert events[-1]["complete"]["usage"]["completionTokens"] == sum(
        len(e["delta"].get("tokenIds", [])) for e in events if "delta" in e
    )
    logprobs = [entry for e in events if "delta" in e for entry in e["delta"].get("logprobs", [])]
    assert len(logprobs) == events[-1]["complete"]["usage"]["completionTokens"]
    assert all(len(entry["top"]) == 2 for entry in logprobs)
    (tool,) = [e["toolResult"] for e in events if "toolResult" in e]
    assert json.loads(tool["resultJson"])["result"] == 1000

    listed = await genmesh("tools", "list", "--target", mesh.address("tools"))
    assert listed.returncode == 0, listed.stderr
    assert "search_docs" in listed.stdout and "unit_convert" in listed.stdout
