"""`buf breaking` against the published contract image (what `make lint` runs): the protos as they are pass, and
an edit that would break a client (a renumbered or deleted field, a changed language option) fails, naming it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "protos" / "published" / "genmesh-v1.binpb"
BUF = Path(sys.executable).parent / "buf"


def _breaking(workspace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(IMAGE)],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _copy(tmp_path: Path) -> Path:
    """A workspace of its own: buf.yaml and protos/."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    return tmp_path


def _edit(workspace: Path, name: str, old: str, new: str) -> None:
    path = workspace / "protos" / "genmesh" / "v1" / name
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {name} once"
    path.write_text(text.replace(old, new))


def test_the_protos_as_they_are_do_not_break_the_published_contract() -> None:
    result = _breaking(ROOT)
    assert result.returncode == 0, f"breaks the published contract (see docs/CONTRACTS.md):\n{result.stdout}"


def _renumber(workspace: Path) -> None:
    _edit(workspace, "jobs.proto", "int32 page_size = 2;", "int32 page_size = 12;")


def _delete(workspace: Path) -> None:
    _edit(workspace, "tools.proto", "  string next_page_token = 3;\n", "")


def _repackage(workspace: Path) -> None:
    _edit(workspace, "gateway.proto", 'option java_package = "dev.genmesh.v1";', 'option java_package = "dev.genmesh";')


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (_renumber, r'"page_size".*"ListJobsRequest"|"ListJobsRequest".*"page_size"'),
        (_delete, r'"next_page_token".*"ListToolsResponse"|"ListToolsResponse".*"next_page_token"'),
        (_repackage, r'java_package.*"dev\.genmesh\.v1".*"dev\.genmesh"'),
    ],
    ids=["renumbered-field", "deleted-field", "changed-java-package"],
)
def test_a_breaking_edit_fails_naming_what_broke(tmp_path: Path, edit: Callable[[Path], None], named: str) -> None:
    workspace = _copy(tmp_path)
    assert _breaking(workspace).returncode == 0, "the unmodified copy passes"
    edit(workspace)
    result = _breaking(workspace)
    assert result.returncode != 0
    assert re.search(named, result.stdout), result.stdout
