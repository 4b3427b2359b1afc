"""``ShardOverlap``: notices two data servers that serve a trainer the same shard.

NOTE [ Overlapping shards ]
Every header names its origin (``wire.StreamOrigin``): a random id of the
server process, its shard ``i/n``, its seed and its data set's size. Two
servers with the same shard of the same data (with ``n`` > 1), or unsharded
with the same seed, send the same samples twice: a mistake in their
settings. Unsharded servers with different seeds are replicas, as
``--seed hostname`` makes them, and are left alone.

A server that restarts comes back with a new id for the same shard, so a
new id alone proves nothing. What does: the older server still delivering
after the newer one's first message, more than a server that is gone could
still have queued for this trainer (``leftover_bytes()``: the trainer's
``prefetch`` and socket buffers, and the server's own queue and buffers). The
first such pair for a shard is logged once, with both ids, and counted in
``overlaps``.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Set, Tuple

from client_layer.wire import StreamOrigin

log = logging.getLogger("zfeed.client")

REMEMBERED_SERVERS = 8  # per shard: ids of servers that restarted before are forgotten
# What a server holds for one trainer (server/sender.py): QUEUED_PER_TRAINER messages and
# one being written; a kernel send buffer of SEND_BUFFER_BYTES, which Linux doubles.
SERVER_QUEUED_MESSAGES = 4
SERVER_BUFFER_BYTES = 2 * 1024 * 1024


def leftover_bytes(prefetch: int, largest_message: int, receive_buffer_bytes: int) -> int:
    """The most that a server that is gone can still deliver to a trainer: its queue and
    buffers, and the trainer's (``prefetch`` messages, one being received, and a kernel
    receive buffer of ``receive_buffer_bytes``, doubled by Linux)."""
    return ((prefetch + 1 + SERVER_QUEUED_MESSAGES) * largest_message
            + 2 * receive_buffer_bytes + SERVER_BUFFER_BYTES)

ShardKey = Tuple[int, int, int, Optional[int]]  # samples, shard index, shard count, seed when unsharded


class _Shard:
    def __init__(self) -> None:
        self.servers: List[str] = []  # in order of first message, the newest last
        self.late_bytes: Dict[str, int] = {}  # bytes from each older server since the newest began


class ShardOverlap:
    """Fed every valid message's origin and size (``saw``); see the module docstring."""

    def __init__(self, leftover_bytes: Callable[[], int], describe: Callable[[], str]):
        self._leftover_bytes = leftover_bytes
        self._describe = describe
        self._shards: Dict[ShardKey, _Shard] = {}
        self._reported: Set[ShardKey] = set()
        self.overlaps = 0

    def saw(self, origin: Optional[StreamOrigin], message_bytes: int) -> None:
        if origin is None:
            return
        key = (origin.samples, origin.shard_index, origin.shard_count,
               origin.seed if origin.shard_count == 1 else None)
        shard = self._shards.setdefault(key, _Shard())
        if origin.server not in shard.servers:
            shard.servers = shard.servers[-(REMEMBERED_SERVERS - 1):] + [origin.server]
            shard.late_bytes = {}
            return
        newest = shard.servers[-1]
        if origin.server == newest or key in self._reported:
            return
        late = shard.late_bytes.get(origin.server, 0) + message_bytes
        shard.late_bytes[origin.server] = late
        if late > self._leftover_bytes():
            self._reported.add(key)
            self.overlaps += 1
            log.warning("two data servers serve this trainer the same samples (%s): servers %s and %s both serve "
                        "shard %d/%d of %d samples%s; give each server its own --shard i/n (the same n, i from 0 "
                        "to n - 1)%s", self._describe(), origin.server, newest, origin.shard_index,
                        origin.shard_count, origin.samples,
                        " with seed %d" % origin.seed if origin.shard_count == 1 else "",
                        ", or unsharded replicas different seeds" if origin.shard_count == 1 else "")
