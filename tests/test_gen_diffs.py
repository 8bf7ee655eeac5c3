"""tools/gen_diffs.py writes one diff per chapter, as `diff -ruN` prints it, and `--check` catches every way
they go stale."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tools.phases import REPO_ROOT

GEN_DIFFS = REPO_ROOT / "tools" / "gen_diffs.py"


def gen_diffs(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(GEN_DIFFS), "--repo-root", str(repo), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def make_phase(repo: Path, name: str, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = repo / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_writes_a_diff_and_a_stat_per_consecutive_pair(tmp_path: Path) -> None:
    make_phase(tmp_path, "phase1_first", {"server.py": "a = 1\nb = 2\n", "gone.py": "x\n"})
    make_phase(tmp_path, "phase2_second", {"server.py": "a = 1\nb = 3\n", "new.py": "y\n"})
    make_phase(tmp_path, "phase10_last", {"server.py": "a = 1\nb = 3\n", "new.py": "y\n"})
    (tmp_path / "phase2_second" / "__pycache__").mkdir()
    (tmp_path / "phase2_second" / "__pycache__" / "server.cpython-311.pyc").write_bytes(b"\0binary")

    assert gen_diffs(tmp_path).returncode == 0
    diffs = tmp_path / "docs" / "diffs"
    assert sorted(path.name for path in diffs.iterdir()) == [
        "phase1_first_to_phase2_second.diff",
        "phase1_first_to_phase2_second.stat.md",
        "phase2_second_to_phase10_last.diff",
        "phase2_second_to_phase10_last.stat.md",
    ]
    diff = (diffs / "phase1_first_to_phase2_second.diff").read_text()
    assert "--- phase1_first/server.py\n+++ phase2_second/server.py\n" in diff
    assert "-b = 2\n+b = 3\n" in diff
    assert "+y\n" in diff and "-x\n" in diff  # new and deleted files in full
    assert ".pyc" not in diff  # __pycache__ is excluded
    assert (diffs / "phase2_second_to_phase10_last.diff").read_text() == ""
    assert gen_diffs(tmp_path, "--check").returncode == 0
    stat = (diffs / "phase1_first_to_phase2_second.stat.md").read_text()
    assert "| `gone.py` (deleted) | +0 | -1 |" in stat and "| `new.py` (new) | +1 | -0 |" in stat
    assert "| `server.py` | +1 | -1 |" in stat


def test_a_phase_after_a_branch_is_diffed_against_the_phase_it_starts_from(tmp_path: Path) -> None:
    """Phase 7 is a branch: phase 8 starts from phase 6 (tools/phases.py, BUILDS_ON), so its chapter's diff
    shows only what TLS adds, not io_uring taken out."""
    make_phase(tmp_path, "phase6_perf", {"server.py": "loop = 'epoll'\n"})
    make_phase(tmp_path, "phase7_io_uring", {"server.py": "loop = 'io_uring'\n"})
    make_phase(tmp_path, "phase8_tls", {"server.py": "loop = 'epoll'\n", "tls.py": "tls = True\n"})
    assert gen_diffs(tmp_path).returncode == 0
    diffs = tmp_path / "docs" / "diffs"
    assert sorted(path.name for path in diffs.glob("*.diff")) == [
        "phase6_perf_to_phase7_io_uring.diff",
        "phase6_perf_to_phase8_tls.diff",
    ]
    diff = (diffs / "phase6_perf_to_phase8_tls.diff").read_text()
    assert "+tls = True\n" in diff and "io_uring" not in diff


def test_the_diff_is_what_gnu_diff_prints_without_the_dates(tmp_path: Path) -> None:
    """The reader's command and the chapter show the same hunks: only the dates on ---/+++ lines differ."""
    make_phase(
        tmp_path, "phase1_first", {"server.py": "".join(f"line {n}\n" for n in range(40)), "old.py": "x"}
    )
    make_phase(tmp_path, "phase2_second", {"server.py": "".join(f"line {n}\n" for n in range(3, 45, 2))})
    assert gen_diffs(tmp_path).returncode == 0
    readers = subprocess.run(
        ["diff", "-ruN", "-x", "__pycache__", "phase1_first", "phase2_second"],
        cwd=tmp_path,
        env={**os.environ, "LC_ALL": "C"},
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    undated = re.sub(r"^((?:---|\+\+\+) \S+)\t.*$", r"\1", readers, flags=re.MULTILINE)
    assert (tmp_path / "docs" / "diffs" / "phase1_first_to_phase2_second.diff").read_text() == undated
    assert "\\ No newline at end of file" in undated  # old.py has none: diff's own marker is kept


def test_check_names_stale_missing_and_extra_files(tmp_path: Path) -> None:
    make_phase(tmp_path, "phase1_first", {"server.py": "a = 1\n"})
    make_phase(tmp_path, "phase2_second", {"server.py": "a = 2\n"})
    assert gen_diffs(tmp_path).returncode == 0

    (tmp_path / "phase2_second" / "server.py").write_text("a = 3\n")
    make_phase(tmp_path, "phase3_third", {"server.py": "a = 4\n"})
    (tmp_path / "docs" / "diffs" / "phase9_old_to_phase10_older.diff").write_text("left over\n")
    result = gen_diffs(tmp_path, "--check")
    assert result.returncode == 1
    report = result.stdout + result.stderr
    assert "stale: docs/diffs/phase1_first_to_phase2_second.diff" in report
    assert "missing: docs/diffs/phase2_second_to_phase3_third.diff" in report
    assert "extra: docs/diffs/phase9_old_to_phase10_older.diff" in report

    assert gen_diffs(tmp_path).returncode == 0
    assert gen_diffs(tmp_path, "--check").returncode == 0
    assert not (tmp_path / "docs" / "diffs" / "phase9_old_to_phase10_older.diff").exists()
