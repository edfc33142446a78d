"""Private copies of the working tree, one per mutant worker, so that mutants applied at once never meet.

A copy holds the files git would commit (tracked and untracked-but-not-ignored, as `git ls-files --cached
--others --exclude-standard` lists them), the generated stubs (genmesh/v1, ignored but imported everywhere) and a
link to .genmesh/node (downloaded tools, read only). It is a git repository of its own, indexing the same files, so
the tests that ask git for the checkout (tests/built_wheel) see the same one. Its tests run with cwd = the copy
and the copy first on PYTHONPATH (`python_path_env`), so every process they start (``python -m genmesh.cli``,
the editable install's ``genmesh`` script, ``python -c``) imports the copy's code, not the main tree's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

GENERATED = ("genmesh/v1",)
"""Ignored by git, needed to run: copied."""
LINKED = (".genmesh/node",)
"""Ignored by git, large and only read by the tests (the code generators): linked, not copied. Not all of
.genmesh/: the services keep their state in .genmesh/data by default, which must stay the copy's own."""
_SKIP = shutil.ignore_patterns("__pycache__")


def _committable(root: Path) -> list[str]:
    """The files git would commit, relative to ``root``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and os.path.lexists(root / name)]


def make_copy(root: Path, target: Path) -> None:
    """Copy the tree at ``root`` into the new directory ``target``."""
    names = _committable(root)
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target / name, follow_symlinks=False)
    for name in GENERATED:
        if (root / name).is_dir():
            shutil.copytree(root / name, target / name, ignore=_SKIP, dirs_exist_ok=True)
    for name in LINKED:
        if (root / name).exists():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).symlink_to(root / name)
    git_env = {**os.environ, "GIT_LITERAL_PATHSPECS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run(
        ["git", "add", "-f", "--pathspec-from-file=-", "--pathspec-file-nul"],
        cwd=target,
        input="\0".join(names).encode(),
        env=git_env,
        check=True,
    )


@contextmanager
def tree_copies(root: Path, count: int) -> Iterator[list[Path]]:
    """``count`` fresh copies of the tree at ``root``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="genmesh-mutants-", ignore_cleanup_errors=True) as scratch:
        copies = [Path(scratch) / f"tree-{i}" for i in range(count)]
        for copy in copies:
            copy.mkdir()
            make_copy(root, copy)
        yield copies


def python_path_env(copy: Path) -> dict[str, str]:
    """This process's environment with ``copy`` first on PYTHONPATH."""
    paths = [str(copy), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
