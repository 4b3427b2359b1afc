"""``BatchClient``: the ZeroMQ PULL side of zfeed, with no knowledge of Caffe.

    with BatchClient("tcp://dataserver:5555") as client:
        for batch in client:
            batch.array("data"), batch.indices, batch.epochs

ZeroMQ's I/O thread receives up to ``prefetch`` messages in the background
while the caller works; ``receive()`` hands over the next batch without a
copy (a message of several small batches is handed over one batch at a time),
and drops a batch it already handed over, which a restarted server sends
again (NOTE [ Batches sent again ] in ``repeats.py``).
Every wait is bounded: ``receive()`` logs that it is waiting every
``WAIT_LOG_INTERVAL_S`` and raises ``NoDataError`` after ``timeout_s``; it
polls in slices of ``POLL_SLICE_S`` so that a caller's stop request (the
layer's SIGINT under Caffe's tool) ends the wait within one slice.

What a trainer can hold unread is bounded: ``prefetch`` messages in ZeroMQ's
queue (its receive high-water mark; a message holds one batch or several
small ones), one message being received, and
``RECEIVE_BUFFER_BYTES`` of kernel socket buffer (the server bounds its own
side the same way, see ``server/sender.py``).
"""

from __future__ import annotations

import atexit
import logging
import math
import time
import weakref
from collections import deque
from typing import Callable, Deque, List, Optional, Sequence, Set, Union

import zmq

from client_layer import wire
from client_layer.batch import Batch
from client_layer.connection_guard import ConnectionGuard
from client_layer.curve_keys import CurveKeyError, load_key_pair, load_public_key
from client_layer.receiving_thread import yield_to_caller
from client_layer.repeats import RepeatFilter
from client_layer.shard_overlap import ShardOverlap, leftover_bytes
from client_layer.wire_errors import CodecMissingError

log = logging.getLogger("zfeed.client")

WAIT_LOG_INTERVAL_S = 5.0
POLL_SLICE_S = 0.1
# Kernel receive buffer per connection (Linux doubles it for bookkeeping). Fixed, not
# autotuned up to tcp_rmem's 6 MiB: that much is dozens of small batches a restarted
# trainer never sees. 1 MiB holds a quarter of an ~8 MB message (server/assembly.py, NOTE [ Batches per
# message ]); 256 KiB halved the rate of 0.8 MB messages over loopback (bench.small_samples).
RECEIVE_BUFFER_BYTES = 1024 * 1024
# Distinct reasons for dropping a message that are logged; later ones are only counted.
MAX_LOGGED_REJECTION_CAUSES = 20
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_PREFETCH = 4
DEFAULT_MAX_BATCH_BYTES = 2 * 1024**3

Endpoints = Union[str, Sequence[str], None]


# Clients still open at interpreter exit are closed before Python tears down:
# a live ZeroMQ context during C++ static destruction (as in a Caffe process,
# whose net outlives atexit) crashes the process on its way out.
_open_clients: "weakref.WeakSet[BatchClient]" = weakref.WeakSet()


@atexit.register
def _close_open_clients() -> None:
    for client in list(_open_clients):
        client.close()


class NoDataError(TimeoutError):
    """No batch arrived in time; the message names the endpoints and what to check."""


class StreamSetupError(RuntimeError):
    """This trainer cannot read the stream as its servers send it (e.g. a compression
    package is missing): every batch would fail alike, so it is reported once, at once."""


class ReceiveInterrupted(Exception):
    """The caller's stop request ended a wait; no message was taken from the socket."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_list(endpoints: Endpoints) -> List[str]:
    if endpoints is None:
        return []
    if isinstance(endpoints, str):
        return [endpoints]
    return list(endpoints)


class BatchClient:
    """Receives zfeed batches from servers it connects to (``address``) or that dial in (``bind``)."""

    def __init__(self, address: Endpoints = None, bind: Endpoints = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, prefetch: int = DEFAULT_PREFETCH,
                 max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
                 curve_secret_key: Optional[str] = None, curve_server_key: Optional[str] = None):
        self.connect_to = _as_list(address)
        self.bind_to = _as_list(bind)
        if not self.connect_to and not self.bind_to:
            raise ValueError("BatchClient needs an address to connect to or an endpoint to bind")
        if not _is_number(timeout_s) or not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError("timeout_s must be a positive, finite number of seconds, got %r" % (timeout_s,))
        if isinstance(prefetch, bool) or not (isinstance(prefetch, int) and prefetch >= 1):
            raise ValueError("prefetch must be an integer of at least 1, got %r" % (prefetch,))
        self.timeout_s = float(timeout_s)
        self.max_batch_bytes = int(max_batch_bytes)
        self._prefetch = prefetch
        self.wait_s = 0.0  # total time receive() spent waiting
        self.rejected = 0  # messages dropped: malformed, or refused by the caller (reject())
        self.last_rejection = ""  # why the last one was dropped
        self._logged_causes: Set[str] = set()
        self.batches_received = 0
        self.samples_received = 0
        self._received: Deque[Batch] = deque()  # the rest of the last message's batches
        self._context = zmq.Context()
        yield_to_caller(self._context)  # NOTE [ The receiving thread yields ]
        self._socket = self._context.socket(zmq.PULL)
        _open_clients.add(self)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, prefetch)
        self._socket.setsockopt(zmq.RCVBUF, RECEIVE_BUFFER_BYTES)
        # Per frame in libzmq; the guard bounds whole messages.
        self._socket.setsockopt(zmq.MAXMSGSIZE, max(wire.MAX_FRAME_BYTES, wire.MAX_HEADER_BYTES))
        self._largest_message = 0
        self._guard = ConnectionGuard(self._socket, self.unread_limit, lambda: self.endpoints)
        self._repeats = RepeatFilter(lambda: self.endpoints)
        self._shards = ShardOverlap(lambda: leftover_bytes(prefetch, self._largest_message, RECEIVE_BUFFER_BYTES),
                                    lambda: self.endpoints)
        if curve_secret_key or curve_server_key:
            self._use_curve(curve_secret_key, curve_server_key)
        try:
            for endpoint in self.bind_to:
                self._socket.bind(endpoint)
            for endpoint in self.connect_to:
                self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError("cannot use endpoint %s: %s" % (self.endpoints, exc)) from None

    def _use_curve(self, secret_key_file: Optional[str], server_key_file: Optional[str]) -> None:
        if not (secret_key_file and server_key_file):
            self.close()
            raise ValueError("CURVE needs both this trainer's secret key file and the server's public key file")
        try:
            public, secret = load_key_pair(secret_key_file)
            server_public = load_public_key(server_key_file)
        except CurveKeyError:  # a ValueError naming the file
            self.close()
            raise
        self._socket.curve_secretkey = secret
        self._socket.curve_publickey = public
        self._socket.curve_serverkey = server_public

    def unread_limit(self, connections: int) -> int:
        """Bytes ZeroMQ may hold for this socket with ``connections`` open: one message of
        up to ``max_batch_bytes`` being received, and ``prefetch`` complete plus one partial
        per connection of the largest valid batch taken so far."""
        return self.max_batch_bytes + (self._prefetch + connections) * self._largest_message

    @property
    def overlapping_shards(self) -> int:
        """Pairs of servers seen serving the same shard (NOTE [ Overlapping shards ])."""
        return self._shards.overlaps

    @property
    def repeated(self) -> int:
        """Batches dropped because this trainer already had them (NOTE [ Batches sent again ])."""
        return self._repeats.repeated

    @property
    def endpoints(self) -> str:
        parts = ["connected to %s" % e for e in self.connect_to] + ["bound at %s" % e for e in self.bind_to]
        return ", ".join(parts)

    def _no_data_message(self, waited: float) -> str:
        if self.bind_to:
            hint = ("are the data servers running with --connect pointing at this host, "
                    "and is the port reachable from them?")
        else:
            hint = ("is the data server running (python -m server --bind tcp://*:PORT), "
                    "is the address right, and is the port reachable from this host?")
        if self.rejected:
            # Messages did arrive: what was wrong with them is the likelier cause.
            return ("no usable batch within %.1f s (%s): %d malformed messages dropped so far, the last because %s"
                    % (waited, self.endpoints, self.rejected, self.last_rejection))
        return "no batch within %.1f s (%s): %s" % (waited, self.endpoints, hint)

    def next_received(self) -> Optional[Batch]:
        """The next batch of a message already received, without waiting; None when the
        next batch needs a new message (``receive``)."""
        return self._count(self._received.popleft()) if self._received else None

    def receive(self, stop_requested: Optional[Callable[[], bool]] = None) -> Batch:
        """The next valid batch. Raises ``NoDataError`` after ``timeout_s`` without one,
        and ``ReceiveInterrupted`` when ``stop_requested()`` turns true while it waits
        (checked every ``POLL_SLICE_S``).

        A malformed message (``wire.WireError``) is dropped and counted (``reject``):
        whoever can reach the socket must not be able to stop training by sending
        garbage. A batch compressed with a codec this Python lacks raises
        ``StreamSetupError`` until a first batch has been read: then it is this
        trainer's set-up, not a stray message.
        """
        ready = self.next_received()
        if ready is not None:
            return ready
        started = time.monotonic()
        deadline = started + self.timeout_s
        next_log = started + WAIT_LOG_INTERVAL_S
        try:
            while True:
                slice_end = min(deadline, next_log, time.monotonic() + POLL_SLICE_S)
                if self._socket.poll(int(max(0.0, slice_end - time.monotonic()) * 1000) + 1):
                    frames = self._socket.recv_multipart(copy=False)
                    size = sum(len(frame) for frame in frames)
                    self._guard.took(size, len(frames))
                    try:
                        message = wire.decode_batch(frames, self.max_batch_bytes)
                    except CodecMissingError as exc:
                        if not self.batches_received:
                            raise StreamSetupError("the data server (%s) compresses its batches: %s"
                                                   % (self.endpoints, exc)) from None
                        self.reject(str(exc))
                        continue
                    except wire.WireError as exc:
                        self.reject(str(exc))
                        continue
                    self._largest_message = max(self._largest_message, size)  # valid messages only
                    self._shards.saw(message.origin, size)
                    self._received.extend(batch for batch in message.split() if self._repeats.is_new(batch))
                    if self._received:
                        return self._count(self._received.popleft())
                if stop_requested is not None and stop_requested():
                    raise ReceiveInterrupted("stopped while waiting for data (%s)" % self.endpoints)
                now = time.monotonic()
                if now >= deadline:
                    raise NoDataError(self._no_data_message(now - started))
                if now >= next_log:
                    log.warning("waiting for data for %.0f s (%s)", now - started, self.endpoints)
                    next_log = now + WAIT_LOG_INTERVAL_S
        finally:
            self.wait_s += time.monotonic() - started

    def _count(self, batch: Batch) -> Batch:
        self.batches_received += 1
        self.samples_received += batch.size
        return batch

    def reject(self, cause: str) -> None:
        """Count a dropped message; log each distinct ``cause`` once (the first
        ``MAX_LOGGED_REJECTION_CAUSES`` of them), so that a flood costs no log flood."""
        self.rejected += 1
        self.last_rejection = cause
        if cause in self._logged_causes or len(self._logged_causes) > MAX_LOGGED_REJECTION_CAUSES:
            return
        self._logged_causes.add(cause)
        if len(self._logged_causes) > MAX_LOGGED_REJECTION_CAUSES:
            log.warning("dropped more messages for other reasons (%s); from now on they are only counted "
                        "(%d so far)", self.endpoints, self.rejected)
        else:
            log.warning("dropped a message (%s): %s; more dropped for this reason are only counted",
                        self.endpoints, cause)

    def __iter__(self) -> "BatchClient":
        return self

    def __next__(self) -> Batch:
        return self.receive()

    def close(self) -> None:
        guard = getattr(self, "_guard", None)
        if guard is not None:
            guard.close()
        if not self._socket.closed:
            self._socket.close(0)
        if not self._context.closed:
            self._context.term()

    def __enter__(self) -> "BatchClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
