"""``RepeatFilter``: drops the batches that a restarted server sends a trainer a second time.

NOTE [ Batches sent again ]
A server restarted with ``--state-dir`` resumes its stream from the first
batch it saved as possibly not yet in the kernel (server/resume_state.py).
That is never after what the trainer has, but it can be before: the batches
sent in the second before a SIGKILL, and those ZeroMQ still held. Batch k's
content depends only on the seed, the epochs and k (server/plan.py), so a
batch whose seq a trainer already has is the same batch again. The trainer
drops it, counts it (``BatchClient.repeated``), and logs the first one it
drops from each server.

A stream is what the origin names (``wire.StreamOrigin``): its shard, seed
and data set size. Not the server id, which is new after a restart, nor the
stream id, whose default (host:pid) is too. Per stream the trainer keeps the
seqs it has been handed (``DeliveredSeqs``): every one below ``low``, and a
bit mask of those within ``WINDOW`` above it. The window lets through, in
any order, the batches of a restarted server and those the old one left in
the socket buffers, which ZeroMQ interleaves. A stream's first batch starts
its record: a trainer that joins a stream takes it from there.

A server that starts its stream afresh (no state, or a state saved for other
settings) says so (``resumed`` false in its origin): its first batch starts
the stream's record over, so that it is served, not dropped as old, and what
the servers before it left in the buffers is handed over unrecorded, as
without a record.

Limits. Several trainers sharing one server's stream each remember only the
batches they were handed: a batch sent again goes to whichever trainer is
ready, which does not know that another had it. That needs acknowledgements
to the server. And when samples were skipped as bad near the restart, the
batches sent again may hold other rows than the first time (a bad sample is
replaced by the next free position, server/assembly.py): those rows can be
repeated or missed.

Python 3.8 with the standard library; nothing from ``server``.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Tuple

from client_layer.batch import Batch

log = logging.getLogger("zfeed.client")

# Seqs remembered above the lowest one not yet handed over: far more than a restarted server
# can overtake its predecessor's leftovers by (a few messages of at most 64 batches each). A gap
# that falls out of it is given up. A trainer sharing a stream with others sees a gap at every
# batch they take, and pays for each batch in proportion to the window: 1.5 us at 8192.
WINDOW = 8192
REMEMBERED_SERVERS = 8  # per stream: a server id seen before is not a new server

StreamKey = Tuple[int, int, int, int]  # shard index, shard count, seed, samples


class DeliveredSeqs:
    """The batch seqs of one stream handed over: every seq below ``low``, and bit ``i`` of
    the mask for seq ``low + i`` (bit 0 is always clear: ``low`` itself is still awaited)."""

    def __init__(self, first_seq: int):
        self.low = first_seq
        self._mask = 0

    def add(self, seq: int) -> bool:
        """Record ``seq`` as handed over; False (and nothing changes) when it already was,
        or is below ``low``. ``low`` then rises past every seq handed over, and to within
        ``WINDOW`` of ``seq``."""
        offset = seq - self.low
        if offset < 0 or (self._mask >> offset) & 1:
            return False
        if offset == 0 and not self._mask:  # the next seq in order: nothing else to do
            self.low += 1
            return True
        self._mask |= 1 << offset
        if offset >= WINDOW:
            self._shift(offset - WINDOW + 1)
        mask = self._mask
        self._shift((~mask & (mask + 1)).bit_length() - 1)  # past the trailing ones
        return True

    def _shift(self, count: int) -> None:
        self._mask >>= count
        self.low += count


class _Stream:
    def __init__(self) -> None:
        self.servers: List[str] = []  # the ids seen, the newest last
        self.recorded: List[str] = []  # the ids whose batches ``delivered`` records
        self.delivered: Optional[DeliveredSeqs] = None
        self.dropping_from: Optional[str] = None  # the server whose repeats were logged last


class RepeatFilter:
    """Says of each batch, in the order received, whether to hand it over (``is_new``);
    see the module docstring. Batches without an origin (not from a zfeed server) always are."""

    def __init__(self, describe: Callable[[], str]):
        self._describe = describe
        self._streams: Dict[StreamKey, _Stream] = {}
        self.repeated = 0  # batches dropped because this trainer already had them

    def is_new(self, batch: Batch) -> bool:
        """False for a batch this trainer already has from its stream; a server that started the
        stream afresh starts its record over, and what the servers before it left is handed over."""
        origin = batch.origin
        if origin is None:
            return True
        key = (origin.shard_index, origin.shard_count, origin.seed, origin.samples)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream()
        if origin.server not in stream.servers:
            stream.servers = stream.servers[-(REMEMBERED_SERVERS - 1):] + [origin.server]
            if origin.resumed and stream.delivered is not None:
                stream.recorded = stream.recorded[-(REMEMBERED_SERVERS - 1):] + [origin.server]
            else:
                stream.delivered = DeliveredSeqs(batch.seq)
                stream.recorded = [origin.server]
        elif origin.server not in stream.recorded:
            return True  # left in the buffers by a server before the one that started afresh
        if stream.delivered.add(batch.seq):
            return True
        self.repeated += 1
        if stream.dropping_from != origin.server:
            stream.dropping_from = origin.server
            log.info("dropping batches this trainer already has, from batch %d of shard %d/%d of %d samples "
                     "(server %s, %s): a restarted server sends again what it may not have delivered; they are "
                     "counted in BatchClient.repeated (%d so far)", batch.seq, origin.shard_index,
                     origin.shard_count, origin.samples, origin.server, self._describe(), self.repeated)
        return False
