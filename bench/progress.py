"""A progress bar while the bench runs (rich): step i of n, time elapsed, and what is being measured.

On a terminal the bar is redrawn in place; in a log (CI, `make bench > log`) each step is printed once, on its
own line. Notes (a skipped peer, a failed server) are printed above the bar and stay on screen.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar


class Progress:
    def __init__(self, total_steps: int, stream: TextIO = sys.stderr) -> None:
        self.console = Console(file=stream, highlight=False)
        self.bar = Bar(
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}", markup=False),
            console=self.console,
            transient=True,
        )
        self.task = self.bar.add_task("starting", total=total_steps)

    def __enter__(self) -> Progress:
        self.bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.bar.stop()

    def step(self, what: str) -> None:
        """A new step begins: `what` names it, e.g. 'nginx | keepalive-64 | run 2/3'."""
        self.bar.update(self.task, advance=1, description=what)
        if not self.console.is_terminal:
            task = self.bar.tasks[0]
            self.console.print(f"[{task.completed:.0f}/{task.total:.0f}] {what}", markup=False)

    def note(self, text: str) -> None:
        self.console.print(text, markup=False)
