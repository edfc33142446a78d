"""The permanent mutant check: one-line mutants of load-bearing code, each of which its tests must kill.

Each mutant replaces one exact line of a production file, runs only the tests that guard it, and puts the
file back. A mutant survives when those tests still pass: the behaviour it breaks is then unproven, and the
check fails. A mutant whose original line is gone fails too, so the list is kept up to date with the code.
The mutants are listed in scripts/mutant_catalog/, one module per area.

Mutants run ``--jobs`` at a time (default: one per CPU), each worker in its own copy of the tree
(scripts/mutant_copies.py), so the working tree itself is never edited; results print in catalog order.

    .venv/bin/python scripts/mutants.py            # all of them (CI)
    .venv/bin/python scripts/mutants.py --list
    .venv/bin/python scripts/mutants.py --only relay-never-merges,fan-out-sequential --jobs 1
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mutant_catalog import MUTANTS, Mutant
from mutant_copies import python_path_env, tree_copies

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 900


def _line_of(mutant: Mutant, lines: list[str]) -> int:
    """The index of the mutant's line in ``lines``; LookupError unless it is there exactly once."""
    matches = [i for i, line in enumerate(lines) if line.strip() == mutant.original]
    if len(matches) != 1:
        raise LookupError(f"{mutant.name}: expected the line once in {mutant.path}, found it {len(matches)} times")
    return matches[0]


def stale(mutants: list[Mutant]) -> list[str]:
    """Why each mutant that no longer applies (its line changed or moved) does not."""
    problems = []
    for mutant in mutants:
        try:
            _line_of(mutant, (ROOT / mutant.path).read_text().splitlines())
        except (LookupError, OSError) as error:
            problems.append(str(error))
        problems += [f"{mutant.name}: no test file {t}" for t in mutant.tests if not (ROOT / t.split("::")[0]).exists()]
    return problems


def _apply(mutant: Mutant, tree: Path) -> tuple[Path, str]:
    """Write the mutant into its file in ``tree``; returns the file and its original text."""
    path = tree / mutant.path
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    i = _line_of(mutant, lines)
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i] = f"{indent}{mutant.replacement}\n"
    path.write_text("".join(lines))
    return path, text


def run(mutant: Mutant, tree: Path) -> tuple[bool, float]:
    """Whether the mutant's tests, run in ``tree`` (a copy of ROOT), killed it, and how long they took."""
    path, original = _apply(mutant, tree)
    start = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant.tests],
            cwd=tree,
            env=python_path_env(tree),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        # 4: a test named that does not exist, 5: no test collected; neither proves anything
        killed = result.returncode not in (0, 4, 5)
    except subprocess.TimeoutExpired:
        killed = True  # a hang is a failure the suite would report
    finally:
        path.write_text(original)
    return killed, time.monotonic() - start


def _run_all(mutants: list[Mutant], jobs: int) -> Iterator[tuple[bool, float]]:
    """Each mutant's ``run``, in order, while up to ``jobs`` of them run at once, each in a tree of its own."""
    with tree_copies(ROOT, min(jobs, len(mutants))) as copies:
        idle: queue.SimpleQueue[Path] = queue.SimpleQueue()
        for copy in copies:
            idle.put(copy)

        def in_a_free_tree(mutant: Mutant) -> tuple[bool, float]:
            tree = idle.get()  # as many trees as workers: one is free whenever a worker starts a mutant
            try:
                return run(mutant, tree)
            finally:
                idle.put(tree)

        with ThreadPoolExecutor(max_workers=len(copies) or 1) as pool:
            futures: list[Future[tuple[bool, float]]] = [pool.submit(in_a_free_tree, m) for m in mutants]
            try:
                for future in futures:
                    yield future.result()
            finally:  # Ctrl-C or an error: start nothing more; the running ones end with their pytest
                for future in futures:
                    future.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", action="append", default=[], help="run only the mutants of these names (comma-separated, repeatable)"
    )
    parser.add_argument(
        "--jobs", type=int, default=len(os.sched_getaffinity(0)), help="mutants run at once (default: one per CPU)"
    )
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="check that every mutant still applies; run nothing")
    args = parser.parse_args()
    only = {name for names in args.only for name in names.split(",") if name}
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    chosen = [m for m in MUTANTS if not only or m.name in only]
    unknown = only - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")
    if args.list:
        for mutant in chosen:
            print(f"{mutant.name:45} {mutant.path}")
        return
    problems = stale(chosen)
    if problems:
        sys.exit("mutants that no longer apply (update them with the code they guard):\n" + "\n".join(problems))
    if args.check:
        print(f"mutants: all {len(chosen)} apply")
        return
    survivors: list[str] = []
    for mutant, (killed, took_s) in zip(chosen, _run_all(chosen, args.jobs), strict=True):
        print(f"{'killed' if killed else 'SURVIVED':8} {mutant.name:45} {took_s:6.1f} s", flush=True)
        if not killed:
            survivors.append(mutant.name)
    print(f"mutants: {len(chosen) - len(survivors)} killed, {len(survivors)} survived of {len(chosen)}")
    if survivors:
        sys.exit(f"surviving mutants (their behaviour is untested): {', '.join(survivors)}")


if __name__ == "__main__":
    main()
