"""What a server costs: CPU time and memory of its whole process tree, read with psutil.

Requests per second alone would mislead on this machine: wrk saturates its own core before the fastest servers
saturate theirs, so their req/s is the client's limit. CPU seconds spent by the server per request are not: we
read the user and system time of the server and everything it spawned (nginx's worker, gunicorn's worker,
granian's worker) before and after each run. The tradeoff: the kernel counts CPU time in clock ticks (10 ms at
100 Hz), so a run must last seconds, not milliseconds, for the difference to mean anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import psutil

from bench.results import NOISY_OTHER_SHARE

NOISY_REPEATS = 2  # a run disturbed by other processes is repeated at most this often; the quietest is kept
REPEAT_BUDGET_SHARE = 0.25  # and repeats add at most this share of runs to the whole bench


def tree(root_pid: int) -> list[psutil.Process]:
    """The root and all its descendants; empty if the root has exited."""
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds used so far by the tree, counting the children each process has reaped, so a
    worker that died still counts."""
    total = 0.0
    for process in tree(root_pid):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # it exited between listing and reading
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def machine_cpu_seconds() -> float:
    """CPU seconds all processes have spent busy since boot, over every CPU: around a run, it shows how much
    of the machine something other than the server and wrk used. Idle and iowait are not busy."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal


def _peak_rss_bytes(process: psutil.Process) -> int:
    # The peak (VmHWM) is the one figure psutil does not give: one line of /proc/PID/status.
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _tree_sum(root_pid: int, figure: Callable[[psutil.Process], int]) -> int:
    total = 0
    for process in tree(root_pid):
        try:
            total += figure(process)
        except (psutil.NoSuchProcess, FileNotFoundError):  # it exited between listing and reading
            continue
    return total


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of the tree now. Pages shared between processes (nginx master and worker) count twice:
    an overestimate, the same for every multi-process server."""
    return _tree_sum(root_pid, lambda process: process.memory_info().rss)


def tree_peak_rss_bytes(root_pid: int) -> int:
    """The sum of each process's peak resident memory since it started."""
    return _tree_sum(root_pid, _peak_rss_bytes)


def tree_established_connections(root_pid: int, port: int) -> int:
    """Connections to `port` that the tree holds open: a connection the server has closed (or half-closed)
    is not ESTABLISHED, and one socket shared by two processes counts once."""
    held: set[tuple[object, object]] = set()
    for process in tree(root_pid):
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        held.update(
            (connection.laddr, connection.raddr)
            for connection in connections
            if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port
        )
    return len(held)


# --------------------------------------------------------------------------------------- disturbed runs


class TimedRun(Protocol):
    @property
    def other_cpu_share(self) -> float:
        """The share of a core that processes other than the server and the client used during the run."""
        ...


RunT = TypeVar("RunT", bound=TimedRun)


@dataclass
class RepeatBudget:
    """Repeats of noisy runs left for a whole bench, so that a busy machine cannot make it run for ever."""

    left: int

    @classmethod
    def for_runs(cls, planned_runs: int) -> RepeatBudget:
        return cls(round(planned_runs * REPEAT_BUDGET_SHARE))

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def quietest_of(
    run_once: Callable[[], RunT], budget: RepeatBudget, on_repeat: Callable[[float], None]
) -> tuple[RunT, list[RunT]]:
    """Run once; while other processes used more than NOISY_OTHER_SHARE of a core, say so and run again (at
    most NOISY_REPEATS times, within the budget). Returns the quietest run and the others, to be discarded."""
    attempts = [run_once()]
    while (
        attempts[-1].other_cpu_share > NOISY_OTHER_SHARE and len(attempts) <= NOISY_REPEATS and budget.take()
    ):
        on_repeat(attempts[-1].other_cpu_share)
        attempts.append(run_once())
    kept = min(attempts, key=lambda attempt: attempt.other_cpu_share)
    return kept, [attempt for attempt in attempts if attempt is not kept]
