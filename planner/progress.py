"""A one-line progress bar (tqdm) on a terminal's stderr: nothing is drawn into a pipe or a file (a
log gets no carriage-return frames), and nothing before ``delay_s`` (quick commands stay quiet)."""
from __future__ import annotations

import sys
from typing import TextIO

STEPS = 1000
"""Resolution of the bar: callers report a fraction done."""


class Progress:
    def __init__(self, label: str, delay_s: float = 1.0, stream: TextIO | None = None):
        from tqdm import tqdm

        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty())
        self._bar = tqdm(total=STEPS, desc=label, file=self.stream, disable=not self.enabled, delay=delay_s,
                         leave=False, dynamic_ncols=True, bar_format="{desc} {bar} {postfix} [{elapsed}]")

    def __call__(self, fraction: float, note: str = "") -> None:
        """Show ``fraction`` (0..1) done, with ``note`` after the bar."""
        if not self.enabled:
            return
        self._bar.n = int(STEPS * min(1.0, max(0.0, fraction)))
        self._bar.set_postfix_str(note or f"{100 * fraction:3.0f}%", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
