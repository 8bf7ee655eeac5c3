"""bench/workers.py, run for real in its smallest configuration: every row it promises is there, the trap
shows what it says it shows, and a results file re-renders to the same page.

It checks the harness's shape and the trap's counts, never how fast anything is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import results, workers
from conftest import require_tool

SMOKE = ["--runs", "1", "--duration", "1", "--warmup", "0", "--name", "test"]


def test_a_smoke_run_has_every_row_and_renders_again_from_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("wrk")
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)  # never the published file, nor bench/results/
    assert workers.main(SMOKE) == 0
    measured_output = capsys.readouterr().out
    path = tmp_path / "exploratory-workers-test.json"
    contents = results.read_document(path, "workers")

    rows = {(row["model"], row["workers"]): row for row in contents["models"]}
    assert set(rows) == {(model, count) for model in workers.MODELS for count in (1, 2)}
    for (_, count), row in rows.items():
        [run] = row["runs"]
        assert run["requests"] > 0 and len(run["worker_cpu_s"]) == count

    events = {(row["model"], row["event"]): row for row in contents["resilience"]}
    assert set(events) == {(model, event) for model in workers.RESILIENCE_MODELS for event in workers.EVENTS}
    for model in workers.RESILIENCE_MODELS:
        assert events[model, "kill -9 one worker"]["replacement_ready_s"] > 0
        assert events[model, "SIGTERM"]["exit_status"] == 0
        assert events[model, "SIGHUP twice"]["worker_pids_all_new"]
        assert len(events[model, "SIGHUP twice"]["restart_s"]) == 2

    trap = contents["trap"]
    if trap["tcp_migrate_req"] != 1:  # at 1, the kernel moves the queued clients instead of resetting them
        assert trap["naive"]["reset"] > 0
    assert trap["naive"]["reset"] + trap["naive"]["accepted"] == trap["naive"]["clients"]
    assert trap["kept_open"]["reset"] == 0
    assert trap["kept_open"]["accepted"] == trap["kept_open"]["clients"]

    page = workers.markdown(contents, str(path))
    for anchor in ("workers-models", "workers-projection", "workers-resilience", "workers-trap"):
        assert f"{{#{anchor}}}" in page
    assert "not projected: one GIL" in page  # threads; the two process models are projected
    assert results.for_terminal(page) in measured_output
    assert "--8<--" not in measured_output and "{#workers-" not in measured_output

    assert workers.main(["--from-results", str(path)]) == 0
    assert capsys.readouterr().out == results.for_terminal(page) + "\n"
