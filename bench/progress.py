"""A status line while the bench runs: step i of n, time elapsed, and what is being measured.

On a terminal the line is redrawn in place once a second, so a 5 s run visibly progresses; in a log (CI,
`make bench > log`) each step is printed once, on its own line. Notes (a skipped peer, a failed server) are
always printed on their own line and stay on screen.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

REDRAW_SECONDS = 1.0


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes:d}:{seconds:02d}"


class Progress:
    def __init__(self, total_steps: int, stream: TextIO = sys.stderr) -> None:
        self.total_steps = total_steps
        self.stream = stream
        self.interactive = stream.isatty()
        self.started = time.monotonic()
        self.step_number = 0
        self.current = "starting"
        self.step_started = self.started
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._redrawer = threading.Thread(target=self._redraw_every_second, daemon=True)

    def __enter__(self) -> Progress:
        if self.interactive:
            self._redrawer.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        if self.interactive:
            self._redrawer.join()
            with self._lock:
                self.stream.write("\r\033[K")
                self.stream.flush()

    def status(self) -> str:
        now = time.monotonic()
        return (
            f"[{self.step_number}/{self.total_steps}] {clock(now - self.started)} elapsed"
            f" | {self.current} ({clock(now - self.step_started)})"
        )

    def step(self, what: str) -> None:
        """A new step begins: `what` names it, e.g. 'nginx | keepalive-64 | run 2/3'."""
        with self._lock:
            self.step_number += 1
            self.current = what
            self.step_started = time.monotonic()
            self._draw()

    def note(self, text: str) -> None:
        with self._lock:
            prefix = "\r\033[K" if self.interactive else ""
            self.stream.write(f"{prefix}{text}\n")
            if self.interactive:
                self._draw()
            self.stream.flush()

    def _draw(self) -> None:
        if self.interactive:
            self.stream.write(f"\r\033[K{self.status()}")
        else:
            self.stream.write(self.status() + "\n")
        self.stream.flush()

    def _redraw_every_second(self) -> None:
        while not self._stop.wait(REDRAW_SECONDS):
            with self._lock:
                self._draw()
