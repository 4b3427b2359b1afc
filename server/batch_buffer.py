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

ArrayLayout = Tuple[str, np.dtype, Tuple[int, ...]]

_ALIGN = 64


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


class BatchSlots:
    """``slot_count`` slots of the arrays in ``layout`` (name, dtype, batch shape),
    each with packed room for compressed frames when ``packed``."""

    def __init__(self, layout: Sequence[ArrayLayout], slot_count: int, packed: bool = False):
        self.layout = [(name, np.dtype(dtype), tuple(shape)) for name, dtype, shape in layout]
        self.slot_count = slot_count
        self.slot_bytes = slot_bytes_for(self.layout, packed)
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
        for name, dtype, shape in self.layout:
            nbytes = int(np.prod(shape)) * dtype.itemsize
            if typed:
                views[name] = np.frombuffer(self._mapping, dtype=dtype, count=nbytes // dtype.itemsize,
                                            offset=offset).reshape(shape)
            else:
                views[name] = np.frombuffer(self._mapping, dtype=np.uint8, count=nbytes, offset=offset)
            offset += _aligned(nbytes)
        return views, offset

    def arrays(self, slot: int) -> Dict[str, np.ndarray]:
        """The arrays of ``slot``, views into shared memory, in layout order."""
        return self._views[slot]

    def packed(self, slot: int) -> Dict[str, np.ndarray]:
        """The packed room of ``slot``: per array, a uint8 view as long as the array's bytes."""
        return self._packed[slot]


def slot_bytes_for(layout: Sequence[ArrayLayout], packed: bool) -> int:
    """Bytes of one slot of ``layout``, with packed room when ``packed``."""
    arrays = sum(_aligned(int(np.prod(shape)) * np.dtype(dtype).itemsize) for _, dtype, shape in layout)
    return arrays * 2 if packed else arrays
