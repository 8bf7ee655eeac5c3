"""Write one diff per chapter: what changed between each phase and the next, for the docs to include.

For every phase directory (`phaseN_name/`, ordered by N) but the first, and the phase it starts from (the one
before it, or the one tools/phases.py's BUILDS_ON names after a branch), this writes, under docs/diffs/:

    <prev>_to_<next>.diff     what `diff -ruN -x __pycache__ <prev> <next>` prints from the repository root
                              (new and deleted files in full), with the file dates cut from the ---/+++ lines
    <prev>_to_<next>.stat.md  a Markdown diffstat of that diff: lines added and removed per file, and totals

    python tools/gen_diffs.py            # (re)write docs/diffs/ (`make diffs`)
    python tools/gen_diffs.py --check    # exit 1 naming every stale, missing or extra file (`make test`)

GNU diff itself writes the hunks, so the chapter shows exactly what the reader's own `diff -ruN` prints; it
runs with LC_ALL=C, so files come in byte order and messages in English on every machine. The dates are the
only part of diff's output that depends on the checkout, not the files' bytes, so they are cut and the check
cannot flap. The tradeoff: generating needs GNU diff (Debian's `diffutils`, always installed).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Run as a script, this file has tools/ on sys.path, not the repository root that holds the `tools` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.phases import REPO_ROOT, phase_pairs

DIFF_OPTIONS = ("-ruN", "-x", "__pycache__")
DIFFS_DIR = Path("docs") / "diffs"
FILE_HEADER = re.compile(r"^diff -ruN -x __pycache__ (?P<old>\S+) (?P<new>\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class FileChange:
    """One file's part of a phase-to-phase diff."""

    path: str  # relative to the phase directory, with forward slashes
    status: str  # "modified", "new", "deleted" or "binary"
    diff_text: str
    added: int
    removed: int


def run_diff(repo_root: Path, old_name: str, new_name: str) -> str:
    """`diff -ruN -x __pycache__ OLD NEW` run from the repository root, dates cut from its ---/+++ lines."""
    finished = subprocess.run(
        ["diff", *DIFF_OPTIONS, old_name, new_name],
        cwd=repo_root,
        env={**os.environ, "LC_ALL": "C"},
        capture_output=True,
        text=True,
        check=False,
    )
    if finished.returncode > 1:  # 0: no difference, 1: differences, 2: trouble
        raise RuntimeError(f"diff failed: {finished.stderr.strip()}")
    return "".join(
        line.split("\t", 1)[0] + "\n" if line.startswith(("--- ", "+++ ")) else line
        for line in finished.stdout.splitlines(keepends=True)
    )


def split_by_file(diff_text: str, repo_root: Path, old_name: str, new_name: str) -> list[FileChange]:
    """Cut diff's output at each `diff -ruN ...` line into one FileChange per file, counting its lines."""
    headers = list(FILE_HEADER.finditer(diff_text))
    changes = []
    for header, following in itertools.zip_longest(headers, headers[1:]):
        text = diff_text[header.start() : following.start() if following else len(diff_text)]
        path = header["old"].removeprefix(f"{old_name}/")
        body = text.splitlines()[3:]  # after the diff, --- and +++ lines
        if text.splitlines()[1].startswith("Binary files"):
            status = "binary"
        elif not (repo_root / old_name / path).exists():
            status = "new"
        elif not (repo_root / new_name / path).exists():
            status = "deleted"
        else:
            status = "modified"
        added = sum(1 for line in body if line.startswith("+"))
        removed = sum(1 for line in body if line.startswith("-"))
        changes.append(FileChange(path, status, text, added, removed))
    return changes


def render_stat(changes: list[FileChange], old_name: str, new_name: str) -> str:
    """A Markdown table of lines added and removed per file, and a summary line like `git diff --stat`'s."""
    if not changes:
        return f"No file changed from `{old_name}/` to `{new_name}/`.\n"
    rows = ["| file | added | removed |", "|:--|--:|--:|"]
    for change in changes:
        note = "" if change.status == "modified" else f" ({change.status})"
        counts = "| | |" if change.status == "binary" else f"| +{change.added} | -{change.removed} |"
        rows.append(f"| `{change.path}`{note} {counts}")
    files = len(changes)
    summary = (
        f"**{files} file{'' if files == 1 else 's'} changed, "
        f"{sum(change.added for change in changes)} insertions(+), "
        f"{sum(change.removed for change in changes)} deletions(-)** "
        f"from `{old_name}/` to `{new_name}/` (`diff {' '.join(DIFF_OPTIONS)} {old_name} {new_name}`)."
    )
    return "\n".join([*rows, "", summary]) + "\n"


def expected_outputs(repo_root: Path) -> dict[Path, str]:
    """Every file docs/diffs/ should hold and its contents, keyed by path relative to the repository root."""
    outputs: dict[Path, str] = {}
    for old_dir, new_dir in phase_pairs(repo_root):
        diff_text = run_diff(repo_root, old_dir.name, new_dir.name)
        changes = split_by_file(diff_text, repo_root, old_dir.name, new_dir.name)
        stem = DIFFS_DIR / f"{old_dir.name}_to_{new_dir.name}"
        outputs[stem.with_name(stem.name + ".diff")] = diff_text
        outputs[stem.with_name(stem.name + ".stat.md")] = render_stat(changes, old_dir.name, new_dir.name)
    return outputs


def present_outputs(repo_root: Path) -> set[Path]:
    """The files docs/diffs/ holds now, relative to the repository root."""
    diffs_dir = repo_root / DIFFS_DIR
    if not diffs_dir.is_dir():
        return set()
    return {path.relative_to(repo_root) for path in diffs_dir.rglob("*") if path.is_file()}


def check(repo_root: Path) -> list[str]:
    """One line per problem: a file that is stale, missing, or not generated by this script."""
    expected = expected_outputs(repo_root)
    problems = []
    for path in sorted(expected.keys() | present_outputs(repo_root)):
        if path not in expected:
            problems.append(f"extra: {path} (no such pair of phases)")
        elif not (repo_root / path).is_file():
            problems.append(f"missing: {path}")
        elif (repo_root / path).read_text(encoding="utf-8") != expected[path]:
            problems.append(f"stale: {path}")
    return problems


def write(repo_root: Path) -> list[str]:
    """Bring docs/diffs/ up to date; return one line per file written or removed."""
    expected = expected_outputs(repo_root)
    actions = []
    for path in sorted(present_outputs(repo_root) - expected.keys()):
        (repo_root / path).unlink()
        actions.append(f"removed {path}")
    for path, contents in sorted(expected.items()):
        target = repo_root / path
        if target.is_file() and target.read_text(encoding="utf-8") == contents:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(contents, encoding="utf-8", newline="\n")
        actions.append(f"wrote {path}")
    return actions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if docs/diffs/ is stale")
    parser.add_argument("--repo-root", type=Path, default=REPO_ROOT, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.repo_root)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("docs/diffs/ is out of date: run `make diffs`", file=sys.stderr)
            return 1
        return 0
    for action in write(args.repo_root):
        print(action)
    return 0


if __name__ == "__main__":
    sys.exit(main())
