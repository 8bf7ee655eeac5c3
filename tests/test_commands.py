"""The test commands the README and the chapters print, run as a reader types them, from the repository root.

`pytest --phase NAME` once failed with "unrecognized arguments" while `make test` passed, because nothing ran
the documented form. These tests do: a subprocess, the command line split as a shell splits it, the working
directory a repository root. Most only collect (`--collect-only -q`), which is where the options are read;
one runs a small selection for real. Two more hold the printed commands to what the tools do: every `diff`
the README and the chapters print is the one tools/gen_diffs.py runs, and a reader's own copy of a phase,
made inside the repository as the chapters say, is not linted by `make test`'s ruff.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.gen_diffs import DIFF_OPTIONS
from tools.phases import REPO_ROOT, find_phases

# As printed in the docs. Where the virtualenv is elsewhere, its pytest stands in for `.venv/bin/pytest`.
TYPED_PYTEST = ".venv/bin/pytest"
# What a copy of the repository needs for the tests to run: not the virtualenv, caches or build outputs, nor a
# reader's own copies of a phase (`my_phase2`, as the chapters suggest): the tests make their own.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", ".*cache", ".hypothesis", "__pycache__", "site", "build", "target", "docs", "mutants",
    "my_*",
)  # fmt: skip


def run_as_typed(command_line: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    words = shlex.split(command_line)
    if words[0] == TYPED_PYTEST and not (cwd / TYPED_PYTEST).exists():
        words[0] = str(Path(sys.executable).with_name("pytest"))
    return subprocess.run(words, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def assert_collects_only(command_line: str, cwd: Path, phase: str) -> None:
    """The command collects tests for `phase` and for no phase of this repository but that one."""
    finished = run_as_typed(f"{command_line} --collect-only -q", cwd)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert f"[{phase}" in finished.stdout, finished.stdout
    others = [path.name for path in find_phases(REPO_ROOT) if path.name != phase]
    assert not [name for name in others if name in finished.stdout], finished.stdout


def test_phase_option_as_documented() -> None:
    assert_collects_only(f"{TYPED_PYTEST} --phase phase2_nonblocking", REPO_ROOT, "phase2_nonblocking")


def test_an_unknown_phase_is_a_usage_error_not_a_path() -> None:
    finished = run_as_typed(f"{TYPED_PYTEST} --phase phase99_nothing --collect-only -q", REPO_ROOT)
    assert finished.returncode == 4, finished.stdout + finished.stderr  # pytest's usage error
    assert "unknown phase(s): phase99_nothing" in finished.stderr


def test_phase_dir_option_as_documented_on_a_copy_inside_a_repository(tmp_path: Path) -> None:
    """A fresh clone with the reader's own phase beside ours: `cp -r phase2_nonblocking my_phase2`."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO_ROOT, clone, ignore=NOT_COPIED)
    shutil.copytree(REPO_ROOT / "phase2_nonblocking", clone / "my_phase2", ignore=NOT_COPIED)
    assert_collects_only(f"{TYPED_PYTEST} --phase-dir my_phase2", clone, "my_phase2")


def test_phase_dir_option_with_equals_on_a_directory_outside_the_repository(tmp_path: Path) -> None:
    own = tmp_path / "my_phase2"
    shutil.copytree(REPO_ROOT / "phase2_nonblocking", own, ignore=NOT_COPIED)
    assert_collects_only(f"{TYPED_PYTEST} --phase-dir={own}", REPO_ROOT, "my_phase2")


@pytest.mark.timeout(300)
def test_a_small_selection_really_runs() -> None:
    selection = "test_bytes_sent_one_at_a_time_come_back_in_order"
    finished = run_as_typed(f"{TYPED_PYTEST} --phase phase1_blocking_echo -q -k {selection}", REPO_ROOT)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "1 passed" in finished.stdout, finished.stdout


# `diff` and its options as printed (`diff -ru`, `diff -ruN -x __pycache__`, across a line break); not a
# code fence of language diff, which a newline follows.
PRINTED_DIFF = re.compile(r"\bdiff +(-[^\s`]+(?:\s+-x\s+[^\s`]+)*)")


def test_every_printed_diff_command_is_the_one_gen_diffs_runs() -> None:
    """The chapters include the diffs tools/gen_diffs.py writes; a reader who types the diff command they
    print must get the same diff (not `Binary files ... differ` for `__pycache__` once a phase has run)."""
    printed = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    wrong = [
        f"{path.relative_to(REPO_ROOT)}:{text.count(chr(10), 0, found.start()) + 1}: diff {found[1]}"
        for path in printed
        for text in [path.read_text(encoding="utf-8")]
        for found in PRINTED_DIFF.finditer(text)
        if found[1].split() != list(DIFF_OPTIONS)
    ]
    assert not wrong, f"print `diff {' '.join(DIFF_OPTIONS)} OLD NEW`, as tools/gen_diffs.py runs it: {wrong}"


def test_a_readers_copy_inside_the_repository_is_not_linted(tmp_path: Path) -> None:
    """`cp -r phase4_routing my_phase4`, then code of the reader's own that our ruff would refuse: `make
    test`'s `ruff check .` and `ruff format --check .` pass all the same (the copy is not a git checkout
    here, so it is pyproject.toml that leaves it out, not .gitignore)."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO_ROOT, clone, ignore=NOT_COPIED)
    shutil.copytree(REPO_ROOT / "phase4_routing", clone / "my_phase4", ignore=NOT_COPIED)
    with (clone / "my_phase4" / "app.py").open("a", encoding="utf-8") as app:
        app.write("import os\ndef mine( a ):\n  return a\n")  # an unused import, and unformatted
    ruff = str(Path(sys.executable).with_name("ruff"))
    for command in ([ruff, "check", "."], [ruff, "format", "--check", "."]):
        finished = subprocess.run(command, cwd=clone, capture_output=True, text=True, timeout=60, check=False)
        assert finished.returncode == 0, " ".join(command[1:]) + ":\n" + finished.stdout + finished.stderr
