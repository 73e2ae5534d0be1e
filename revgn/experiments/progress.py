"""A one-line progress bar on stderr, shown only when both stdout and stderr are terminals (so
logs, pipes and CI output stay clean)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, stream=None, enabled: bool | None = None):
        self.total, self.label, self.done = max(total, 1), label, 0
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = all(getattr(s, "isatty", lambda: False)() for s in (self.stream, sys.stdout))
        self.enabled = enabled
        self.start = time.perf_counter()

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        frac = min(self.done / self.total, 1.0)
        filled = int(30 * frac)
        elapsed = time.perf_counter() - self.start
        eta = elapsed * (1 - frac) / frac if frac > 0 else 0.0
        self.stream.write(f"\r{self.label} [{'#' * filled}{'-' * (30 - filled)}] "
                          f"{self.done}/{self.total} {elapsed:4.0f}s eta {eta:4.0f}s "
                          f"{note[:40]:<40}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
