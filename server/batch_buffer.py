"""Preallocated batch slots in memory shared with the loader workers.

One anonymous shared mapping holds ``slot_count`` slots, each with room for
every array of one batch. It is created before the workers are forked, so
they inherit it: no name in /dev/shm, nothing left behind whatever way the
server dies. Workers write samples straight into their slot; the supervisor
sends the slot's arrays from there without a copy and reuses the slot once
ZeroMQ has released it.

With compression, each slot also has packed room: as many bytes again, into
which a worker compresses the slot's frames (``wire.pack_frames``), so that
compressed frames are sent from shared memory without a copy too.
"""

from __future__ import annotations

import mmap
from typing import Dict, List, Sequence, Tuple

import numpy as np

from client_layer.wire import ArraySpec

_ALIGN = 64


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


class BatchSlots:
    """``slot_count`` slots of the arrays ``specs`` describe (a whole slot each),
    each with packed room for compressed frames when ``packed``."""

    def __init__(self, specs: Sequence[ArraySpec], slot_count: int, packed: bool = False):
        self.specs = list(specs)
        self.slot_count = slot_count
        self.slot_bytes = slot_bytes_for(self.specs, packed)
        self._mapping = mmap.mmap(-1, max(self.slot_bytes * slot_count, 1),
                                  flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self._views: List[Dict[str, np.ndarray]] = []
        self._packed: List[Dict[str, np.ndarray]] = []
        for slot in range(slot_count):
            offset = slot * self.slot_bytes
            views, offset = self._slot_views(offset, typed=True)
            self._views.append(views)
            self._packed.append(self._slot_views(offset, typed=False)[0] if packed else {})

    def _slot_views(self, offset: int, typed: bool) -> Tuple[Dict[str, np.ndarray], int]:
        views = {}
        for spec in self.specs:
            if typed:
                views[spec.name] = np.frombuffer(self._mapping, dtype=spec.dtype, offset=offset,
                                                 count=spec.nbytes // spec.dtype.itemsize).reshape(spec.shape)
            else:
                views[spec.name] = np.frombuffer(self._mapping, dtype=np.uint8, count=spec.nbytes, offset=offset)
            offset += _aligned(spec.nbytes)
        return views, offset

    def arrays(self, slot: int) -> Dict[str, np.ndarray]:
        """The arrays of ``slot``, views into shared memory, in the order of ``specs``."""
        return self._views[slot]

    def packed(self, slot: int) -> Dict[str, np.ndarray]:
        """The packed room of ``slot``: per array, a uint8 view as long as the array's bytes."""
        return self._packed[slot]


def slot_bytes_for(specs: Sequence[ArraySpec], packed: bool) -> int:
    """Bytes of one slot of the arrays ``specs`` describe, with packed room when ``packed``."""
    arrays = sum(_aligned(spec.nbytes) for spec in specs)
    return arrays * 2 if packed else arrays
