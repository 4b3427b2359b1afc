"""The PUSH socket and zero-copy sending of batches held in shared slots.

``BatchSender.send`` puts a batch's header and its arrays' frames on the
socket without copying them and keeps the caller's token (the batch) until
ZeroMQ's tracker says it is done with every frame; ``release_sent``
returns the tokens whose frames are gone, so their slots can be reused.
Only slots are ever queued, so the slots bound what is in flight.

NOTE [ Bytes ZeroMQ holds ]
A message ZeroMQ has finished with is not yet surely in the kernel: libzmq
copies the end of it into a buffer of ``ZMQ_FILL_BYTES`` that it writes to
the kernel with the next messages' beginnings, and with CURVE it finishes
with each frame once encrypted, before writing it. A SIGKILL loses what it
holds (the trainer's ZeroMQ drops the message cut short), while what is in
the kernel still arrives. Every message's last frame is tracked, so a
message is released only once ZeroMQ has taken all of it from its queue.
libzmq fills that buffer anew only once it has written it whole, so if a
message were still partly in it, every message released after it (but the
newest, which it may be encrypting) would lie in the buffer too.
``maybe_unwritten`` therefore keeps a released message until the messages
released after it, the newest aside, hold ``ZMQ_FILL_BYTES``. This holds
for one trainer connection; with several, a message can stay in the buffer
of a trainer that stopped reading while others go on.

Trainers send the PUSH socket nothing but their handshake, so what a peer
can make ZeroMQ hold for it is bounded too: no frame over
``INBOUND_LIMIT_BYTES`` (ZMQ_MAXMSGSIZE), and no connection that has sent
more than that (and the guard's slack) in all: ``ConnectionGuard`` closes it.
The guard is also the socket's monitor: ``trainers`` counts its connections.
"""

from __future__ import annotations

import secrets
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np
import zmq

from client_layer import wire
from client_layer.connection_guard import ConnectionGuard
from server.curve import CurveServer

SHUTDOWN_LINGER_MS = 2000
COPY_BELOW_BYTES = 65536  # pyzmq's own threshold for copying rather than sharing a buffer
# ZeroMQ's high-water mark is per trainer: batches queued for one trainer hold their slots,
# so a trainer that stops reading may keep at most this many; the others get the rest.
# With 2, the ~8 MB messages of HDF5 rows reached a Caffe net at 0.86 of raw pyzmq's rate,
# with 3 at 0.93 (bench.small_samples).
QUEUED_PER_TRAINER = 3
# Kernel send buffer per trainer connection (Linux doubles it), fixed rather than autotuned
# up to tcp_wmem's 4 MiB, which holds dozens of small batches that a trainer restarting
# never sees; it holds a quarter of an ~8 MB message. The trainer's receive buffer is the same
# (client_layer/receiver.py).
SEND_BUFFER_BYTES = 1024 * 1024
# What one trainer connection may send the server in all, besides the guard's slack: room
# for a CURVE handshake many times over. A stream of empty frames costs libzmq 64 bytes
# per 2 bytes read, so this bounds what a peer holds to a few MB.
INBOUND_LIMIT_BYTES = 64 * 1024
# libzmq's buffer of bytes for the kernel, per connection (its out_batch_size, fixed at 8192 in
# libzmq 4.3): NOTE [ Bytes ZeroMQ holds ].
ZMQ_FILL_BYTES = 8192


def new_server_id() -> str:
    """A random id for this server process, sent in every header's origin: trainers tell
    two servers claiming the same shard apart by it."""
    return secrets.token_hex(8)


class SenderError(RuntimeError):
    """The socket cannot be set up; the message names the endpoint."""


class BatchSender:
    """A PUSH socket; ``open`` binds and connects it (after e.g. a monitor is attached)."""

    def __init__(self, context: zmq.Context, stream_id: str, specs: Sequence[wire.ArraySpec],
                 curve: Optional[CurveServer] = None, extra: Optional[dict] = None,
                 codec_name: Optional[str] = None, origin: Optional[wire.StreamOrigin] = None):
        """``specs``: the arrays of a full message; ``extra`` goes into every header (e.g. how
        the trainer finishes uint8 pixels); ``codec_name`` names the compression of packed frames;
        ``origin``: this server's shard of its data, in every header."""
        self.stream_id = stream_id
        self.origin = origin
        self.specs = list(specs)
        self._specs_by_rows = {self.specs[0].shape[0]: self.specs}  # rows of a message -> its specs
        self.extra = extra
        self.codec_name = codec_name
        self.socket = context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.LINGER, SHUTDOWN_LINGER_MS)
        self.socket.setsockopt(zmq.SNDHWM, QUEUED_PER_TRAINER)
        self.socket.setsockopt(zmq.SNDBUF, SEND_BUFFER_BYTES)
        self.socket.setsockopt(zmq.MAXMSGSIZE, INBOUND_LIMIT_BYTES)
        if curve is not None:
            curve.secure(self.socket)
        self._endpoints: List[str] = []
        self._guard = ConnectionGuard(self.socket, None, lambda: ", ".join(self._endpoints),
                                      connection_limit=INBOUND_LIMIT_BYTES)
        self._in_flight: List[Tuple[zmq.MessageTracker, Any, int]] = []  # tracker, token, bytes
        self._released: Deque[Tuple[Any, int]] = deque()  # released, maybe not yet in the kernel

    def open(self, bind: Sequence[str], connect: Sequence[str]) -> None:
        """Bind to ``bind`` and connect to ``connect`` endpoints; SenderError names a failure."""
        self._endpoints = ["bound at %s" % e for e in bind] + ["connected to %s" % e for e in connect]
        for endpoint in bind:
            try:
                self.socket.bind(endpoint)
            except zmq.ZMQError as exc:
                raise SenderError("cannot bind %s: %s (is another server on that port?)" % (endpoint, exc)) from None
        for endpoint in connect:
            try:
                self.socket.connect(endpoint)
            except zmq.ZMQError as exc:
                raise SenderError("cannot connect to %s: %s" % (endpoint, exc)) from None

    @property
    def can_send(self) -> bool:
        """True when a whole batch can go out now without blocking."""
        return bool(self.socket.getsockopt(zmq.EVENTS) & zmq.POLLOUT)

    @property
    def trainers(self) -> int:
        """Connections open on the socket now (a trainer, or a stranger that has not left yet)."""
        return self._guard.connections

    @property
    def in_flight(self) -> int:
        """Batches handed to ZeroMQ whose slots are not released yet."""
        return len(self._in_flight)

    def send(self, seq: int, arrays: Dict[str, np.ndarray], indices: np.ndarray,
             epochs: np.ndarray, token: Any,
             packed: Optional[Tuple[Dict[str, np.ndarray], Dict[str, List[int]]]] = None,
             batch_rows: Optional[int] = None) -> bool:
        """Send the message of batches ``seq``.. from ``arrays`` without copying them; ``token``
        comes back from ``release_sent`` once ZeroMQ no longer needs the arrays.
        ``packed``: the slot's packed room and each array's frame lengths in it;
        ``batch_rows``: rows of one batch, when the message holds several.

        Returns False, having sent nothing, when no trainer can take it now: the
        socket may say it is writable for a peer that is gone an instant later.
        """
        specs = self._specs_for(len(indices))
        parts: List[object] = [wire.encode_header(self.stream_id, seq, specs, indices, epochs, self.extra,
                                                  self.codec_name, batch_rows, self.origin)]
        for spec in specs:
            if packed is None:
                parts.extend(wire.array_frames(spec, arrays[spec.name]))
            else:
                room, lengths = packed
                parts.extend(wire.array_frames(spec, arrays[spec.name], room[spec.name], lengths[spec.name]))
        # Small parts (the header, labels) are copied: cheaper than a tracked zero-copy frame,
        # whose release takes pyzmq's garbage-collector thread. Only zero-copy frames are tracked,
        # and the last frame always is (NOTE [ Bytes ZeroMQ holds ]).
        last = len(parts) - 1
        frames = [zmq.Frame(part, copy=False, track=True) if len(part) >= COPY_BELOW_BYTES or number == last
                  else zmq.Frame(part, copy=True) for number, part in enumerate(parts)]
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False  # libzmq rolls back a partly queued multipart message: nothing left
        self._in_flight.append((zmq.MessageTracker(*(f for f in frames if f.tracker is not None)), token,
                                sum(len(part) for part in parts)))
        return True

    def _specs_for(self, rows: int) -> List[wire.ArraySpec]:
        """The specs of a message of ``rows`` rows (a last message may hold fewer batches)."""
        specs = self._specs_by_rows.get(rows)
        if specs is None:
            specs = self._specs_by_rows[rows] = [s.with_rows(rows) for s in self.specs]
        return specs

    def release_sent(self) -> List[Any]:
        """Tokens of the batches whose frames ZeroMQ has finished with, in send order."""
        states = [(entry, entry[0].done) for entry in self._in_flight]  # each tracker asked once
        released = [(token, size) for (_tracker, token, size), done in states if done]
        if released:
            self._in_flight = [entry for entry, done in states if not done]
            self._released.extend(released)
            self._forget_written()
        return [token for token, _size in released]

    def _forget_written(self) -> None:
        """Forget the oldest released messages while NOTE [ Bytes ZeroMQ holds ] proves them written."""
        between = sum(size for _token, size in self._released) - self._released[0][1] - self._released[-1][1]
        while len(self._released) > 2 and between >= ZMQ_FILL_BYTES:
            self._released.popleft()
            between -= self._released[0][1]

    def maybe_unwritten(self) -> List[Any]:
        """Tokens of the batches whose bytes may not all be in the kernel yet: those ZeroMQ
        holds, and the last ones it released (NOTE [ Bytes ZeroMQ holds ])."""
        return [token for token, _size in self._released] + [token for _tracker, token, _size in self._in_flight]

    def close(self) -> None:
        self._guard.close()  # the monitor goes before the socket
        self.socket.close()
