"""The server's periodic throughput line."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("zfeed.server")


class ThroughputLog:
    """Counts sent batches and logs rates every ``interval_s`` seconds."""

    def __init__(self, interval_s: float, batch_size: int):
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.total_batches = 0
        self._window_batches = 0
        self._window_bytes = 0
        self._window_start = time.monotonic()

    def sent(self, batches: int, wire_bytes: int) -> None:
        """``batches`` more batches left, ``wire_bytes`` in all."""
        self.total_batches += batches
        self._window_batches += batches
        self._window_bytes += wire_bytes

    def maybe_log(self, batches_waiting: int, workers_busy: int) -> None:
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed < self.interval_s:
            return
        rate = self._window_batches / elapsed
        log.info("%.1f batches/s, %.0f images/s, %.1f MB/s; %d batches waiting, %d workers busy; %d sent",
                 rate, rate * self.batch_size, self._window_bytes / elapsed / 1e6,
                 batches_waiting, workers_busy, self.total_batches)
        self._window_batches = 0
        self._window_bytes = 0
        self._window_start = now
