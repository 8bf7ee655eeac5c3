"""What a server costs: CPU time and memory of its whole process tree, read from /proc.

Requests per second alone would mislead on this machine: wrk saturates its own core before the fastest servers
saturate theirs, so their req/s is the client's limit. CPU seconds spent by the server per request are not: we
read the user and system time of the server and everything it spawned (nginx's worker, gunicorn's worker,
granian's worker) before and after each run. The tradeoff: /proc counts in clock ticks (10 ms at 100 Hz), so a
run must last seconds, not milliseconds, for the difference to mean anything.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_KIB_LINE = re.compile(r"^(?P<key>\w+):\s+(?P<kib>\d+) kB$", re.MULTILINE)


@dataclass(frozen=True)
class ProcessStat:
    """The fields of /proc/PID/stat we use. CPU times are in clock ticks."""

    pid: int
    parent_pid: int
    user_ticks: int
    system_ticks: int
    waited_children_user_ticks: int
    waited_children_system_ticks: int

    @property
    def cpu_ticks(self) -> int:
        """Own CPU time plus that of its exited (and reaped) children, so a worker that died still counts."""
        return (
            self.user_ticks
            + self.system_ticks
            + self.waited_children_user_ticks
            + self.waited_children_system_ticks
        )


def parse_stat(text: str) -> ProcessStat:
    """Parse one /proc/PID/stat line. The command name (field 2) may hold spaces and parentheses, so split
    after its last ')'. Field numbers below are those of proc(5), counted from 1."""
    pid_text, _, rest = text.partition(" (")
    fields = rest[rest.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): field N is fields[N - 3].
    return ProcessStat(
        pid=int(pid_text),
        parent_pid=int(fields[4 - 3]),
        user_ticks=int(fields[14 - 3]),
        system_ticks=int(fields[15 - 3]),
        waited_children_user_ticks=int(fields[16 - 3]),
        waited_children_system_ticks=int(fields[17 - 3]),
    )


def _read_stat(pid: int, proc: Path) -> ProcessStat | None:
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (FileNotFoundError, ProcessLookupError):  # it exited between listing and reading
        return None


def all_stats(proc: Path = PROC) -> list[ProcessStat]:
    """Every process on the machine, as one snapshot."""
    stats = (_read_stat(int(entry.name), proc) for entry in proc.iterdir() if entry.name.isdigit())
    return [stat for stat in stats if stat is not None]


def tree(root_pid: int, stats: list[ProcessStat]) -> list[ProcessStat]:
    """The root and all its descendants, found by following parent pids down from the root."""
    children: dict[int, list[ProcessStat]] = {}
    for stat in stats:
        children.setdefault(stat.parent_pid, []).append(stat)
    found: list[ProcessStat] = []
    generation = [stat for stat in stats if stat.pid == root_pid]
    while generation:
        found.extend(generation)
        generation = [child for parent in generation for child in children.get(parent.pid, [])]
    return found


def tree_pids(root_pid: int, proc: Path = PROC) -> list[int]:
    return [stat.pid for stat in tree(root_pid, all_stats(proc))]


def tree_cpu_seconds(root_pid: int, proc: Path = PROC) -> float:
    """User + system CPU seconds used so far by the process tree under root_pid."""
    ticks = sum(stat.cpu_ticks for stat in tree(root_pid, all_stats(proc)))
    return ticks / CLOCK_TICKS_PER_SECOND


def machine_cpu_seconds(proc: Path = PROC) -> float:
    """CPU seconds all processes have spent busy since boot, over every CPU (the `cpu` line of /proc/stat):
    around a run, it shows how much of the machine something other than the server and wrk used."""
    fields = (proc / "stat").read_text().splitlines()[0].split()
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy.
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_SECOND


def memory_kib(status_text: str) -> dict[str, int]:
    """The `kB` lines of /proc/PID/status (VmRSS, VmHWM, ...) as a dict of KiB."""
    return {match["key"]: int(match["kib"]) for match in _KIB_LINE.finditer(status_text)}


def _tree_memory_bytes(root_pid: int, key: str, proc: Path) -> int:
    total_kib = 0
    for pid in tree_pids(root_pid, proc):
        try:
            total_kib += memory_kib((proc / str(pid) / "status").read_text()).get(key, 0)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total_kib * 1024


def tree_rss_bytes(root_pid: int, proc: Path = PROC) -> int:
    """Resident memory of the tree now. Pages shared between processes (nginx master and worker) count twice:
    an overestimate, the same for every multi-process server."""
    return _tree_memory_bytes(root_pid, "VmRSS", proc)


def tree_peak_rss_bytes(root_pid: int, proc: Path = PROC) -> int:
    """The sum of each process's peak resident memory (VmHWM) since it started."""
    return _tree_memory_bytes(root_pid, "VmHWM", proc)


def tree_open_fds(root_pid: int, proc: Path = PROC) -> int:
    """File descriptors held by the tree: with the listening sockets as a baseline, it counts connections."""
    total = 0
    for pid in tree_pids(root_pid, proc):
        try:
            total += len(os.listdir(proc / str(pid) / "fd"))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total
