"""Mutation testing: would the fast tests notice a small, plausible bug in protocol.py, router.py or app.py?

    python tools/mutation.py                       # `make mutation`: the three modules, each in its phase
    python tools/mutation.py --module app.py --max-children 2
    python tools/mutation.py --module protocol.py --phase phase4_routing
    python tools/mutation.py --module protocol.py --repo /tmp/before  # an older commit's worktree: its score

mutmut 3 rewrites every function of a module into mutants, each one small change (`<` made `<=`, a
constant changed, a call's argument dropped), and runs the tests that call that function against each; a
mutant is killed when a test fails. A mutant that no test kills is a bug the suite would let through: it
gets a test, or an entry in tools/mutation_equivalent.toml saying why it behaves exactly like the original.
This script prints each module's score, every survivor with its diff, and exits 1 if a survivor is not
listed there. Each module is mutated in the phase that introduces it (TARGETS): the later phases carry the
same code, and a module's mutants are run against its own fast tests only, one mutmut run per module.

How it runs. Nothing in the working tree is touched: for each module the script copies what the tests need
(the phase, tests/, bench/, tools/, conftest.py, pyproject.toml) to a temporary directory, appends mutmut's
settings to that copy's pyproject.toml (mutmut reads only [tool.mutmut] there or [mutmut] in setup.cfg; the
block is MUTMUT_SETTINGS below), and runs `mutmut run` in it. mutmut copies the tree again to mutants/, with
each function replaced by a trampoline that calls the mutant named by MUTANT_UNDER_TEST; tests/conftest.py
finds the phases next to itself, so the tests import mutants/<phase>/<module>. mutmut checks this before it
starts ("forced fail": every trampoline raises and some test must fail), or it stops. Mutants that fail
`mypy --strict` (part of `make test`) are counted as killed by mypy and not run.

The fast tests, per module (TARGETS): for protocol.py the unit tests of the parser (tests/test_protocol.py,
tests/test_protocol_h11.py, the in-process tests of tests/test_abuse.py, tests/test_mutation_kills.py); for
router.py tests/test_router.py, and tests/test_app.py for the routes the application adds; for app.py
tests/test_app.py, which calls the application, its handlers and the static files' functions in-process.
mutmut picks the tests for a mutant by recording which functions each test calls, in the test process. A
test that starts the phase as a server subprocess (the `server` or `start_server` fixture) makes its calls
in another process, where nothing is recorded, so mutmut would pick it for no mutant: this file, loaded by
pytest as a plugin (`-p tools.mutation`), deselects those tests, and runs hypothesis derandomized with no
example database, so that a score does not depend on luck or on what an earlier mutant left behind.

What is not mutated, and why. server.py: its code runs in the server subprocesses of the black-box tests, so
mutmut records no test for any of its 566 mutants (phase 3) and would call them all "no tests". Running the
black-box tests against each instead (about 12 s for tests/test_http.py alone, a minute or more with the
abuse tests, and a hanging mutant waits for a timeout) would take well over an hour on two cores; its three
in-process tests (tests/test_abuse.py) cover too little for a score worth quoting. Module-level tables and
expressions (the grammar's regular expressions, RFC9110_PHRASES, the Limits defaults) and @property bodies:
mutmut 3 mutates function bodies only: in app.py, the open() flags of the static files (DIRECTORY_FLAGS,
FILE_FLAGS) and the errors answered 503 (UNAVAILABLE) are such tables, checked by tests/test_static.py's
black-box tests and by hand. The tradeoff: the score measures the unit tests of the three modules'
functions; bugs elsewhere (a reason phrase, backpressure, the lingering close) are found by planting them by
hand, as issues 7 and 20 did.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_MUTANTS = Path(__file__).resolve().with_name("mutation_equivalent.toml")


@dataclass(frozen=True)
class Target:
    """A module to mutate: the phase that introduces it, and the test files that call it in this process
    (the ones a checkout does not have are left out)."""

    phase: str
    tests: tuple[str, ...]


TARGETS = {
    "protocol.py": Target(
        "phase3_http_parse",
        (
            "tests/test_protocol.py",
            "tests/test_protocol_h11.py",
            "tests/test_abuse.py",
            "tests/test_mutation_kills.py",
        ),
    ),
    "router.py": Target("phase4_routing", ("tests/test_router.py", "tests/test_app.py")),
    "app.py": Target("phase4_routing", ("tests/test_app.py",)),
}
SERVER_FIXTURES = frozenset({"server", "start_server"})  # a test using one talks to a subprocess
COPIED = ("tests", "bench", "tools", "conftest.py", "pyproject.toml")  # besides the phase itself
NOT_COPIED = shutil.ignore_patterns("__pycache__", ".hypothesis", "results", "target")
MUTMUT_SETTINGS = """
[tool.mutmut]
source_paths = ["{phase}"]
only_mutate = ["{phase}/{mutated_file}"]
also_copy = ["bench", "tools", "conftest.py"]
pytest_add_cli_args_test_selection = [{tests}]
pytest_add_cli_args = ["--phase={phase}", "-p", "tools.mutation", "-p", "no:cacheprovider"]
type_check_command = [{python}, "-m", "mypy", "--output", "json", "--no-warn-unused-ignores",
                      "--disable-error-code", "no-redef", "{phase}/{mutated_file}"]
use_git_change_detection = false
"""
# mypy's no-redef is off because mutmut copies __init__ once per mutant into the same class, and the copies
# redeclare its annotated attributes: an error of the copying, not of any mutant.
KILLED = {"killed": "by a test", "caught by type check": "by mypy --strict", "timeout": "by a timeout"}


# --- the pytest plugin half: loaded in the mutmut run with `-p tools.mutation` ----------------------------


def pytest_configure(config: pytest.Config) -> None:
    from hypothesis import settings  # noqa: PLC0415 (only the plugin needs it, not the script)

    settings.register_profile("mutation", derandomize=True, database=None)
    settings.load_profile("mutation")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    starts_server = [item for item in items if SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))]
    if starts_server:
        config.hook.pytest_deselected(items=starts_server)
        items[:] = [item for item in items if item not in starts_server]


# --- the script half --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    name: str  # mutmut's, e.g. phase3_http_parse.protocol.xǁRequestParserǁtake_continue__mutmut_2
    status: str  # mutmut's: "killed", "survived", "no tests", "timeout", "caught by type check", ...
    diff: str = ""

    @property
    def function(self) -> str:
        """The mutated function as written in the source: `RequestParser.take_continue`, `parse_head`."""
        mangled = self.name.rpartition(".")[2].rpartition("__mutmut_")[0]
        return mangled.removeprefix("x_").removeprefix("xǁ").replace("ǁ", ".")

    @property
    def label(self) -> str:
        return f"{self.function} #{self.name.rpartition('__mutmut_')[2]}"

    def changed_lines(self) -> tuple[list[str], list[str]]:
        """(the lines the mutant removed, the lines it added), stripped: what an equivalence entry names."""
        lines = self.diff.splitlines()
        removed = [line[1:].strip() for line in lines if line.startswith("-") and not line.startswith("---")]
        added = [line[1:].strip() for line in lines if line.startswith("+") and not line.startswith("+++")]
        return removed, added


@dataclass(frozen=True)
class Equivalent:
    """An entry of tools/mutation_equivalent.toml: a survivor that behaves exactly like the original."""

    phase: str
    module: str  # the file, e.g. "app.py"
    function: str
    original: str  # the line as written, stripped
    mutated: str  # the line as mutated, stripped
    reason: str

    def matches(self, phase: str, module: str, mutant: Mutant) -> bool:
        removed, added = mutant.changed_lines()
        return (phase, module, mutant.function, removed, added) == (
            self.phase,
            self.module,
            self.function,
            [self.original],
            [self.mutated],
        )


def load_equivalents(path: Path) -> list[Equivalent]:
    if not path.exists():
        return []
    entries = tomllib.loads(path.read_text())["equivalent"]
    return [Equivalent(**entry) for entry in entries]


def prepare(repo: Path, phase: str, module: str, workdir: Path, tests: list[str]) -> None:
    """Copy what the tests need into `workdir`, with mutmut's settings for `module` in its pyproject.toml."""
    shutil.copytree(repo / phase, workdir / phase, ignore=NOT_COPIED)
    for name in COPIED:
        source = repo / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, ignore=NOT_COPIED)
        elif source.exists():
            shutil.copy2(source, workdir / name)
    # This file is the plugin the tests load, whatever the checkout has (an older one has none).
    (workdir / "tools").mkdir(exist_ok=True)
    shutil.copy2(__file__, workdir / "tools" / "mutation.py")
    pyproject = workdir / "pyproject.toml"
    if "mutmut" in tomllib.loads(pyproject.read_text()).get("tool", {}):
        sys.exit("pyproject.toml has a [tool.mutmut] table: this script writes its own (MUTMUT_SETTINGS)")
    settings = MUTMUT_SETTINGS.format(
        phase=phase,
        mutated_file=module,
        tests=", ".join(f'"{test}"' for test in tests),
        python=f'"{sys.executable}"',
    )
    with pyproject.open("a") as file:
        file.write(settings)


def mutmut_command() -> list[str]:
    """mutmut's command line, run by this Python: what its console script does, without needing that file."""
    if importlib.util.find_spec("mutmut") is None:
        sys.exit("mutmut is not installed: .venv/bin/pip install mutmut==3.8.1 (`make mutation` installs it)")
    return [sys.executable, "-c", "from mutmut.__main__ import cli; cli()"]


def run_mutmut(workdir: Path, max_children: int) -> None:
    """`mutmut run` in `workdir`, its output to workdir/mutmut.log; exit with the log's tail if it fails."""
    environment = {key: value for key, value in os.environ.items() if key != "MUTANT_UNDER_TEST"}
    log_path = workdir / "mutmut.log"
    with log_path.open("w") as log:
        finished = subprocess.run(
            [*mutmut_command(), "run", "--max-children", str(max_children)],
            cwd=workdir,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if finished.returncode != 0:
        tail = log_path.read_text(errors="replace").replace("\r", "\n").splitlines()[-40:]
        sys.exit(f"mutmut run failed (exit status {finished.returncode}), its log ends:\n" + "\n".join(tail))


def collect_mutants(workdir: Path, phase: str, module: str) -> list[Mutant]:
    """Every mutant with its status (`mutmut results --all true`), and the diff of every one not killed."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant  # noqa: PLC0415 (the script's half only)

    listing = subprocess.run(
        [*mutmut_command(), "results", "--all", "true"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    mutants = []
    with contextlib.chdir(workdir):  # mutmut reads its settings and mutants/ from the current directory
        for line in listing.splitlines():
            name, separator, status = line.strip().rpartition(": ")
            if not separator or "__mutmut_" not in name:
                continue
            diff = "" if status in KILLED else get_diff_for_mutant(name, path=f"{phase}/{module}")
            mutants.append(Mutant(name, status, diff))
    return mutants


def report(
    phase: str, module: str, mutants: list[Mutant], equivalents: list[Equivalent], seconds: float
) -> bool:
    """Print the score and the survivors; True if every survivor is a listed equivalent."""
    killed = [mutant for mutant in mutants if mutant.status in KILLED]
    unkilled = [mutant for mutant in mutants if mutant.status not in KILLED]
    explained = {
        mutant.name: entry
        for mutant in unkilled
        for entry in equivalents
        if entry.matches(phase, module, mutant)
    }
    total = len(mutants)
    print(f"\nmutation score of {phase}/{module}: {len(killed)} killed / {total} mutants", end="")
    print(f" ({100 * len(killed) / total:.1f}%)" if total else "")
    for status, how in KILLED.items():
        print(f"  killed {how}: {sum(mutant.status == status for mutant in killed)}")
    statuses = sorted({mutant.status for mutant in unkilled})
    for status in statuses:
        print(f"  {status}: {sum(mutant.status == status for mutant in unkilled)}")
    print(f"  of those not killed, listed as equivalent in {EQUIVALENT_MUTANTS.name}: {len(explained)}")
    if explained:
        counted = total - len(explained)
        print(
            f"  score without the equivalents: {len(killed)} / {counted} ({100 * len(killed) / counted:.1f}%)"
        )
    print(f"  time: {seconds / 60:.1f} min")
    unexplained = [mutant for mutant in unkilled if mutant.name not in explained]
    if unexplained:
        print(
            "\nNot killed and not listed as equivalent (kill each with a test, or list it with its reason):"
        )
        for mutant in unexplained:
            print(f"\n## {mutant.label}: {mutant.status}  ({mutant.name})\n{mutant.diff.rstrip()}")
    if explained:
        print("\nEquivalent (listed, with the reason):")
        for mutant in unkilled:
            if mutant.name in explained:
                print(f"\n## {mutant.label}: {explained[mutant.name].reason}\n{mutant.diff.rstrip()}")
    return not unexplained


def mutate(repo: Path, phase: str, module: str, tests: list[str], options: argparse.Namespace) -> bool:
    """One mutmut run over `phase`/`module` with `tests`, reported; True if every survivor is explained."""
    workdir = Path(tempfile.mkdtemp(prefix=f"mutation-{module.removesuffix('.py')}-"))
    started = time.monotonic()
    failed = True
    try:
        prepare(repo, phase, module, workdir, tests)
        print(f"mutmut run over {phase}/{module} with {' '.join(tests)}", flush=True)
        run_mutmut(workdir, options.max_children)
        mutants = collect_mutants(workdir, phase, module)
        failed = False
    finally:
        if options.keep or failed:  # a failed run keeps its log and mutants/ to look at
            print(f"scratch directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    equivalents = load_equivalents(EQUIVALENT_MUTANTS)
    return report(phase, module, mutants, equivalents, time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--module",
        action="append",
        choices=sorted(TARGETS),
        help="a module to mutate (repeatable; default: all of them, one after the other)",
    )
    parser.add_argument(
        "--phase", help="the phase whose module is mutated (default: the one that introduces it)"
    )
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1, help="mutants run at once")
    parser.add_argument(
        "--repo", type=Path, default=REPO_ROOT, help="the checkout to test (default: this one)"
    )
    parser.add_argument("--tests", nargs="+", help="test files to run (default: the module's, in TARGETS)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch directories (for `mutmut browse`)"
    )
    options = parser.parse_args()
    repo: Path = options.repo.resolve()
    modules: list[str] = options.module or list(TARGETS)
    runs = []
    for module in modules:
        phase = options.phase or TARGETS[module].phase
        if not (repo / phase / module).is_file():
            parser.error(f"{repo / phase / module} does not exist")
        tests: list[str] = options.tests or [
            test for test in TARGETS[module].tests if (repo / test).is_file()
        ]
        if not tests:
            parser.error(
                f"{repo} has none of the test files of {module} (an older checkout? choose --module)"
            )
        runs.append((phase, module, tests))
    all_explained = [mutate(repo, phase, module, tests, options) for phase, module, tests in runs]
    return 0 if all(all_explained) else 1


if __name__ == "__main__":
    sys.exit(main())
