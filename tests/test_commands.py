"""The test commands the README and the chapters print, run as a reader types them, from the repository root.

`pytest --phase NAME` once failed with "unrecognized arguments" while `make test` passed, because nothing ran
the documented form. These tests do: a subprocess, the command line split as a shell splits it, the working
directory a repository root. Most only collect (`--collect-only -q`), which is where the options are read;
one runs a small selection for real.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
