"""The pool of batch slots, sized by the trainers connected within ``--max-inflight-mb``.

NOTE [ Slots per trainer ]
ZeroMQ keeps up to ``PINNED_PER_TRAINER`` messages for each trainer (its
high-water mark, ``sender.QUEUED_PER_TRAINER``, and one being written to the
kernel), and their slots stay taken until they have left: a trainer that
stops reading pins its share for as long as it stays connected. So the slots
in use may be the loader workers' working set (``sizing.slot_count_for``)
plus that share for each connected trainer (``BatchSender.trainers``), out of
a pool mapped once for the whole budget (``slot_capacity_for``). The free
slots are a stack, so slots beyond what is in use stay untouched pages. A
stalled trainer then costs the others nothing beyond its own share. When the
budget cannot give every trainer its share, the pool logs which trainer is
over it: trainers that stop reading may then leave the others nothing.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Iterable, List, Sequence

from client_layer.frames import ArraySpec
from server.batch_buffer import BatchSlots, slot_bytes_for
from server.sender import QUEUED_PER_TRAINER

log = logging.getLogger("zfeed.server")

PINNED_PER_TRAINER = QUEUED_PER_TRAINER + 1
MAX_TRAINER_SHARES = 256  # trainers whose share the pool maps room for, budget allowing


def slot_capacity_for(slot_bytes: int, working_slots: int, max_inflight_mb: float) -> int:
    """Slots of the pool: the working set and ``PINNED_PER_TRAINER`` per trainer, for as many
    trainers (up to ``MAX_TRAINER_SHARES``) as the budget and the machine's memory hold."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(working_slots, min(int(max_inflight_mb * 2**20 // slot_bytes), memory // slot_bytes,
                                  working_slots + PINNED_PER_TRAINER * MAX_TRAINER_SHARES))


class SlotPool:
    """``slots`` (BatchSlots of ``specs``) and which of them are free; see the module docstring."""

    def __init__(self, specs: Sequence[ArraySpec], working_slots: int, max_inflight_mb: float, packed: bool):
        capacity = slot_capacity_for(slot_bytes_for(specs, packed), working_slots, max_inflight_mb)
        self.slots = BatchSlots(specs, capacity, packed=packed)
        self.working_slots = working_slots
        # A stack: the most recently released slot is reused first, so idle slots stay untouched pages.
        self._free: List[int] = list(range(capacity - 1, -1, -1))
        self._over_budget = False

    def describe(self) -> str:
        return "%d batch slots of %.1f MB (%d for the workers, %d per trainer connected)" % (
            self.slots.slot_count, self.slots.slot_bytes / 2**20, self.working_slots, PINNED_PER_TRAINER)

    def spare(self, trainers: int) -> int:
        """Slots that may take a new batch now, with ``trainers`` connected."""
        in_use = self.slots.slot_count - len(self._free)
        return min(len(self._free), self.working_slots + PINNED_PER_TRAINER * trainers - in_use)

    def take(self) -> int:
        return self._free.pop()

    def release(self, slots: Iterable[int]) -> None:
        self._free.extend(slots)

    def check_budget(self, trainers: int) -> None:
        """Log once when more trainers are connected than the pool has shares for (two or more:
        a single trainer starves no one)."""
        covered = (self.slots.slot_count - self.working_slots) // PINNED_PER_TRAINER
        if trainers <= max(1, covered):
            self._over_budget = False
        elif not self._over_budget:
            self._over_budget = True
            needed_mb = (self.working_slots + PINNED_PER_TRAINER * trainers) * self.slots.slot_bytes / 2**20
            log.warning("trainer %d is over the --max-inflight-mb budget: its %d batch slots of %.1f MB hold the "
                        "loader workers' %d and %d for each of %d trainers; should trainers stop reading, the "
                        "others may get no batches (--max-inflight-mb %.0f would cover %d trainers)",
                        trainers, self.slots.slot_count, self.slots.slot_bytes / 2**20, self.working_slots,
                        PINNED_PER_TRAINER, covered, math.ceil(needed_mb), trainers)
