"""A one-line progress bar on a terminal's stderr: nothing is drawn into a pipe or a file (a log
gets no carriage-return frames), and nothing before ``delay_s`` (quick commands stay quiet)."""
from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


class Progress:
    def __init__(self, label: str, delay_s: float = 1.0, stream: TextIO | None = None):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.delay_s = delay_s
        self.t0 = time.perf_counter()
        self.shown = False

    def __call__(self, fraction: float, note: str = "") -> None:
        """Draw ``fraction`` (0..1) done, with ``note`` after the bar."""
        if not self.enabled or time.perf_counter() - self.t0 < self.delay_s:
            return
        self.shown = True
        n = int(WIDTH * min(1.0, max(0.0, fraction)))
        self.stream.write(f"\r{self.label} [{'#' * n}{'.' * (WIDTH - n)}] {note or f'{100 * fraction:3.0f}%'}")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * (len(self.label) + WIDTH + 20) + "\r")
            self.stream.flush()
