"""bench/ablation.py and bench/costs.py, run for real in their smallest configuration: every variant and every
row they promise is there, and a results file re-renders to the same page.

They check the harnesses' shape, never how fast anything is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import ablation, costs, results
from conftest import require_tool

SMOKE = ["--duration", "1", "--name", "test"]


def test_an_ablation_smoke_run_measures_every_variant_and_renders_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("wrk")
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)  # never the published file, nor bench/results/
    assert ablation.main([*SMOKE, "--runs", "1", "--warmup", "0", "--idle-connections", "200"]) == 0
    measured_output = capsys.readouterr().out
    path = tmp_path / "exploratory-ablation-test.json"
    contents = results.read_document(path, "ablation")

    one_worker, pinning = (results.from_json(contents[key]) for key in ("one_worker", "pinning"))
    names = [info.name for info in one_worker.targets]
    switches = [f"{ablation.PHASE} without {switch}" for switch in ablation.ONE_WORKER_SWITCHES]
    assert names == [ablation.BEFORE, ablation.EVERY_SWITCH_OFF, *switches, ablation.PHASE, ablation.FROZEN]
    for name in names:
        for scenario in ablation.ONE_WORKER_SCENARIOS[:-1]:  # the last, idle, is checked below
            measurement = one_worker.measurement(name, scenario)
            assert measurement is not None and measurement.failure is None, (name, scenario)
            assert [run.requests > 0 for run in measurement.runs] == [True]
        idle = one_worker.idle_for(name)
        assert idle is not None and idle.connections_held == 200, name
    assert [info.name for info in pinning.targets] == [ablation.PHASE, ablation.PINNED]
    assert pinning.settings.workers == 2

    page = ablation.markdown(contents, str(path))
    # A row in each scenario's table and in the memory table.
    assert page.count("phase6_perf without shared_buffer") == len(ablation.ONE_WORKER_SCENARIOS)
    assert results.for_terminal(page) in measured_output
    assert ablation.main(["--from-results", str(path)]) == 0
    assert capsys.readouterr().out == results.for_terminal(page) + "\n"


def test_a_costs_smoke_run_splits_the_time_and_counts_the_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("wrk")
    require_tool("strace")
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    assert costs.main([*SMOKE, "--runs", "1"]) == 0
    measured_output = capsys.readouterr().out
    path = tmp_path / "exploratory-costs-test.json"
    contents = results.read_document(path, "costs")

    rows = {(row["target"], row["scenario"]): row for row in contents["rows"]}
    present = list(costs.available_targets())  # nginx is a peer, which a reader may not have installed
    assert set(rows) == {(target, scenario) for target in present for scenario in costs.SCENARIOS}
    for (target, _), row in rows.items():
        assert row["requests"] > 0 and row["traced_requests"] > 0 and len(row["runs"]) == 1
        assert row["user_us_per_request"] + row["system_us_per_request"] > 0
        if target == "phase7_io_uring":  # its sends and receives are operations on the ring
            assert row["calls"].get("io_uring_enter", 0) > 0 and "recvfrom" not in row["calls"], row["calls"]
        elif target != "nginx":  # Python's socket send() and recv_into() are these two system calls
            assert row["calls"].get("sendto", 0) > 0 and row["calls"].get("recvfrom", 0) > 0, row["calls"]

    page = costs.markdown(contents, str(path))
    assert page.count("| phase6_perf |") == len(costs.SCENARIOS)
    assert results.for_terminal(page) in measured_output
    assert (
        "keepalive-64 run 1/1 phase6_perf: user CPU " in measured_output and "Split(" not in measured_output
    )
    assert costs.main(["--from-results", str(path)]) == 0
    assert capsys.readouterr().out == results.for_terminal(page) + "\n"


def test_the_costs_table_shows_the_median_of_the_runs_and_their_range() -> None:
    assert costs.median_and_range([12.0, 30.5, 20.25]) == "20.2 µs (12.0\N{EN DASH}30.5)"
    assert costs.median_and_range([7.0]) == "7.0 µs"


def test_each_costs_run_is_printed_as_the_table_shows_it() -> None:
    run = costs.Split(
        requests=45_123, user_us_per_request=12.34, system_us_per_request=20.06, other_cpu_share=0.01
    )
    assert costs.run_summary(run) == "user CPU 12.3 µs, system CPU 20.1 µs per request (45,123 requests)"
