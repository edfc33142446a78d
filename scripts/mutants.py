"""The permanent mutant check: one-line mutants of load-bearing code, each of which its tests must kill.

Each mutant replaces one exact line of a production file, runs only the tests that guard it, and puts the
file back (always, also on Ctrl-C). A mutant survives when those tests still pass: the behaviour it breaks is
then unproven, and the check fails. A mutant whose original line is gone fails too, so the list is kept up
to date with the code. The mutants are listed in scripts/mutant_catalog/, one module per area.

    .venv/bin/python scripts/mutants.py            # all of them (CI)
    .venv/bin/python scripts/mutants.py --list
    .venv/bin/python scripts/mutants.py --only relay-never-merges --only fan-out-sequential
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from mutant_catalog import MUTANTS, Mutant

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


def _apply(mutant: Mutant) -> tuple[Path, str]:
    """Write the mutant into its file; returns the file and its original text."""
    path = ROOT / mutant.path
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    i = _line_of(mutant, lines)
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i] = f"{indent}{mutant.replacement}\n"
    path.write_text("".join(lines))
    return path, text


def run(mutant: Mutant) -> tuple[bool, float]:
    """Whether the mutant's tests killed it, and how long they took."""
    path, original = _apply(mutant)
    start = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant.tests],
            cwd=ROOT,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="run only the mutant of this name (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="check that every mutant still applies; run nothing")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only) - {m.name for m in MUTANTS}
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
    for mutant in chosen:
        killed, took_s = run(mutant)
        print(f"{'killed' if killed else 'SURVIVED':8} {mutant.name:45} {took_s:6.1f} s", flush=True)
        if not killed:
            survivors.append(mutant.name)
    print(f"mutants: {len(chosen) - len(survivors)} killed, {len(survivors)} survived of {len(chosen)}")
    if survivors:
        sys.exit(f"surviving mutants (their behaviour is untested): {', '.join(survivors)}")


if __name__ == "__main__":
    main()
