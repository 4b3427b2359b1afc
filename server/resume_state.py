"""``--state-dir``: where a restarted server resumes its stream.

The state is the first batch sequence number that may not be in the kernel
yet (the batches ZeroMQ holds, and the last ones it released: NOTE [ Bytes
ZeroMQ holds ] in server/sender.py) and the stream position below which
every sample has been sent (server/assembly.py, ``low_water_position``, and
those batches), written atomically at most every ``SAVE_INTERVAL_S`` and at
shutdown. A batch in the kernel's socket buffer reaches a trainer that stays
connected, so a restart loses no sample. It sends again the batches from the
saved one on that the trainer may already have: those ZeroMQ held at
shutdown, and after a SIGKILL those sent since the last save. The trainer
drops them (NOTE [ Batches sent again ] in client_layer/repeats.py), so it
gets every batch once. The state is only reused by a server serving the
same stream (same source, size, seed, batch size, shuffling, epochs, phase
and shard); otherwise it is ignored with a log line, and the server's
headers say that it started afresh.

A state that cannot be written (a full disk, a directory gone read-only)
never stops the server: the failure is logged once, the temporary file is
removed, and saving resumes when it works again (logged too). Until then the
file on disk is the last one saved, so a restart sends again the batches
sent since (which the trainer drops), and loses none.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Optional, Tuple

log = logging.getLogger("zfeed.server")

SAVE_INTERVAL_S = 1.0
STATE_FILE = "zfeed-state.json"


class ResumeState:
    def __init__(self, path: str, stream: dict):
        self.path = path
        self.stream = stream
        self._saved: Optional[Tuple[int, int]] = None
        self._saved_at = 0.0
        self._failing = False

    @classmethod
    def for_config(cls, config, dataset_size: int) -> Optional["ResumeState"]:
        if not config.state_dir:
            return None
        stream = {"source": config.source, "size": dataset_size, "seed": config.seed,
                  "batch_size": config.batch_size, "shuffle": config.shuffle, "epochs": config.epochs,
                  "phase": config.phase, "shard": [config.shard.index, config.shard.count]}
        return cls(os.path.join(config.state_dir, STATE_FILE), stream)

    def load(self) -> Optional[Tuple[int, int]]:
        """(next seq, first position) to resume from; None without a matching state."""
        try:
            with open(self.path, encoding="utf-8") as f:
                state = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable state %s (%s): starting the stream afresh", self.path, exc)
            return None
        if state.get("stream") != self.stream:
            log.warning("ignoring state %s: it is for another stream (%s): starting afresh",
                        self.path, state.get("stream"))
            return None
        seq, position = int(state["seq"]), int(state["position"])
        log.info("resuming from %s: batch %d, stream position %d", self.path, seq, position)
        self._saved = (seq, position)
        return seq, position

    def save(self, seq: int, position: int, force: bool = False) -> None:
        """Write (seq, position) atomically, at most every ``SAVE_INTERVAL_S`` unless ``force``;
        a failure is logged (once until a save works again), never raised."""
        now = time.monotonic()
        if (seq, position) == self._saved or (not force and now - self._saved_at < SAVE_INTERVAL_S):
            return
        temporary = self.path + ".tmp"
        self._saved_at = now  # also after a failure: retry at the same pace, not on every loop
        try:
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump({"stream": self.stream, "seq": seq, "position": position}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            self._remove(temporary)
            if not self._failing:
                log.warning("cannot save the stream position to %s (%s): serving on; a restart now would "
                            "resume from the last position saved, sending again the batches sent since",
                            self.path, exc.strerror or exc)
                self._failing = True
            return
        if self._failing:
            log.info("saving the stream position to %s again", self.path)
            self._failing = False
        self._saved = (seq, position)

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.remove(path)
        except OSError:
            pass  # never written, or the directory is gone: nothing is left behind either way
