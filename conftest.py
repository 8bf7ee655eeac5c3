"""The test suite's two command-line options, declared at the repository root so the documented commands work.

    .venv/bin/pytest --phase phase2_nonblocking      # one phase of this repository (repeatable)
    .venv/bin/pytest --phase-dir my_phase2           # your own phase directory, against the same tests

pytest reads its options before it loads any conftest.py, so an option declared only in tests/conftest.py is
unknown at first and the value after it (`phase2_nonblocking`) is taken for a path to test. pytest loads the
conftest.py of the repository root for any path inside the repository, so the options declared here are known
in time, and the value is read as the option's. What tests/conftest.py does with them is its business. The
tradeoff: a directory outside the repository does not lead pytest here; write `--phase-dir=DIR` (with `=`) for
one, or keep your phase inside the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("phases")
    group.addoption("--phase", action="append", default=[], help="test only this phase (repeatable)")
    group.addoption(
        "--phase-dir",
        action="append",
        default=[],
        type=Path,
        help="test your own phase package directory (it must define CAPABILITIES in __init__.py);"
        " outside the repository, write --phase-dir=DIR",
    )
