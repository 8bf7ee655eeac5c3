"""Write one diff per chapter: what changed between each phase and the next, for the docs to include.

For every consecutive pair of phase directories (`phaseN_name/`, ordered by N) this writes, under docs/diffs/:

    <prev>_to_<next>.diff     the unified diff of the two trees as `diff -ruN` shows it (new and deleted
                              files in full), with stable headers: `a/<prev>/FILE`, `b/<next>/FILE`, no dates
    <prev>_to_<next>.stat.md  a Markdown diffstat of that diff: lines added and removed per file, and totals

    python tools/gen_diffs.py            # (re)write docs/diffs/ (`make diffs`)
    python tools/gen_diffs.py --check    # exit 1 naming every stale, missing or extra file (`make test`)

The output depends only on the files' bytes (difflib, sorted paths), so it is the same on every machine and
the check cannot flap. The tradeoff: difflib matches lines differently from GNU diff, so a hunk can be cut a
little differently from what `diff -ru` prints on your machine; the changes it describes are the same.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Run as a script, this file has tools/ on sys.path, not the repository root that holds the `tools` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.phases import REPO_ROOT, find_phases

EXCLUDED_DIR_NAMES = frozenset({"__pycache__"})
DIFFS_DIR = Path("docs") / "diffs"
NO_NEWLINE_MARKER = "\\ No newline at end of file\n"


@dataclass(frozen=True)
class FileChange:
    """One file's part of a phase-to-phase diff."""

    path: str  # relative to the phase directory, with forward slashes
    status: str  # "modified", "new", "deleted" or "binary"
    diff_text: str
    added: int
    removed: int


def phase_files(phase_dir: Path) -> dict[str, bytes]:
    """Every regular file of a phase, keyed by its path relative to the phase directory."""
    files: dict[str, bytes] = {}
    for path in sorted(phase_dir.rglob("*")):
        relative = path.relative_to(phase_dir)
        if path.is_file() and not EXCLUDED_DIR_NAMES.intersection(relative.parts[:-1]):
            files[relative.as_posix()] = path.read_bytes()
    return files


def _text_lines(data: bytes) -> list[str] | None:
    """The file's lines with their endings, or None if it is not UTF-8 text."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def _unified(old_lines: list[str], new_lines: list[str], old_label: str, new_label: str) -> Iterator[str]:
    """difflib's unified diff, with GNU diff's marker after a last line that has no newline."""
    for line in difflib.unified_diff(old_lines, new_lines, old_label, new_label):
        if line.endswith("\n"):
            yield line
        else:
            yield line + "\n" + NO_NEWLINE_MARKER


def diff_file(path: str, old_name: str, new_name: str, old: bytes | None, new: bytes | None) -> FileChange:
    """One file's diff between two phases; `old` or `new` is None when the file exists on one side only."""
    old_label = f"a/{old_name}/{path}"
    new_label = f"b/{new_name}/{path}"
    status = "new" if old is None else "deleted" if new is None else "modified"
    header = f"diff -ruN {old_label} {new_label}\n"
    old_lines = _text_lines(old or b"")
    new_lines = _text_lines(new or b"")
    if old_lines is None or new_lines is None:
        return FileChange(path, "binary", f"{header}Binary files {old_label} and {new_label} differ\n", 0, 0)
    body = list(
        _unified(
            old_lines,
            new_lines,
            "/dev/null" if old is None else old_label,
            "/dev/null" if new is None else new_label,
        )
    )
    # Skip the two file header lines (--- and +++) when counting.
    added = sum(1 for line in body[2:] if line.startswith("+"))
    removed = sum(1 for line in body[2:] if line.startswith("-"))
    return FileChange(path, status, header + "".join(body), added, removed)


def diff_phases(old_dir: Path, new_dir: Path) -> list[FileChange]:
    """Every file that differs between two phase directories, in path order."""
    old_files = phase_files(old_dir)
    new_files = phase_files(new_dir)
    return [
        diff_file(path, old_dir.name, new_dir.name, old_files.get(path), new_files.get(path))
        for path in sorted(old_files.keys() | new_files.keys())
        if old_files.get(path) != new_files.get(path)
    ]


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
        f"from `{old_name}/` to `{new_name}/`."
    )
    return "\n".join([*rows, "", summary]) + "\n"


def expected_outputs(repo_root: Path) -> dict[Path, str]:
    """Every file docs/diffs/ should hold and its contents, keyed by path relative to the repository root."""
    outputs: dict[Path, str] = {}
    phases = find_phases(repo_root)
    for old_dir, new_dir in itertools.pairwise(phases):
        changes = diff_phases(old_dir, new_dir)
        stem = DIFFS_DIR / f"{old_dir.name}_to_{new_dir.name}"
        outputs[stem.with_name(stem.name + ".diff")] = "".join(change.diff_text for change in changes)
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
            problems.append(f"extra: {path} (no such pair of consecutive phases)")
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
