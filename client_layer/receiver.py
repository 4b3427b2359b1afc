"""``BatchClient``: the ZeroMQ PULL side of zfeed, with no knowledge of Caffe.

    with BatchClient("tcp://dataserver:5555") as client:
        for batch in client:
            batch.array("data"), batch.indices, batch.epochs

ZeroMQ's I/O thread receives up to ``prefetch`` messages in the background
while the caller works; ``receive()`` hands over the next batch without a
copy (a message of several small batches is handed over one batch at a time).
Every wait is bounded: ``receive()`` logs that it is waiting every
``WAIT_LOG_INTERVAL_S`` and raises ``NoDataError`` after ``timeout_s``.
"""

from __future__ import annotations

import atexit
import logging
import time
import weakref
from collections import deque
from typing import Deque, List, Optional, Sequence, Union

import zmq
import zmq.auth

from client_layer import wire

log = logging.getLogger("zfeed.client")

WAIT_LOG_INTERVAL_S = 5.0
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
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive, got %r" % timeout_s)
        self.timeout_s = float(timeout_s)
        self.max_batch_bytes = int(max_batch_bytes)
        self.wait_s = 0.0  # total time receive() spent waiting
        self.rejected = 0  # malformed messages dropped
        self.last_rejection = ""  # why the last one was dropped
        self.batches_received = 0
        self.samples_received = 0
        self._received: Deque[wire.Batch] = deque()  # the rest of the last message's batches
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PULL)
        _open_clients.add(self)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, max(1, int(prefetch)))
        self._socket.setsockopt(zmq.MAXMSGSIZE, max(wire.MAX_FRAME_BYTES, wire.MAX_HEADER_BYTES))
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
            public, secret = zmq.auth.load_certificate(secret_key_file)
            server_public, _ = zmq.auth.load_certificate(server_key_file)
        except (OSError, ValueError) as exc:
            self.close()
            raise ValueError("cannot read CURVE key: %s" % exc) from None
        if secret is None:
            self.close()
            raise ValueError("%s holds no secret key: give this trainer's .key_secret file" % secret_key_file)
        self._socket.curve_secretkey = secret
        self._socket.curve_publickey = public
        self._socket.curve_serverkey = server_public

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

    def receive(self) -> wire.Batch:
        """The next valid batch. Raises ``NoDataError`` after ``timeout_s`` without one.

        A malformed message (``wire.WireError``) is dropped, logged and counted
        in ``rejected``: whoever can reach the socket must not be able to stop
        training by sending garbage.
        """
        if self._received:
            return self._count(self._received.popleft())
        started = time.monotonic()
        deadline = started + self.timeout_s
        next_log = started + WAIT_LOG_INTERVAL_S
        try:
            while True:
                if self._socket.poll(int(max(0.0, min(deadline, next_log) - time.monotonic()) * 1000) + 1):
                    frames = self._socket.recv_multipart(copy=False)
                    try:
                        batches = wire.decode_batch(frames, self.max_batch_bytes).split()
                        self._received.extend(batches[1:])
                        return self._count(batches[0])
                    except wire.WireError as exc:
                        self.rejected += 1
                        self.last_rejection = str(exc)
                        log.warning("dropped a malformed message (%s): %s", self.endpoints, exc)
                        continue
                now = time.monotonic()
                if now >= deadline:
                    raise NoDataError(self._no_data_message(now - started))
                if now >= next_log:
                    log.warning("waiting for data for %.0f s (%s)", now - started, self.endpoints)
                    next_log = now + WAIT_LOG_INTERVAL_S
        finally:
            self.wait_s += time.monotonic() - started

    def _count(self, batch: wire.Batch) -> wire.Batch:
        self.batches_received += 1
        self.samples_received += batch.size
        return batch

    def __iter__(self) -> "BatchClient":
        return self

    def __next__(self) -> wire.Batch:
        return self.receive()

    def close(self) -> None:
        if not self._socket.closed:
            self._socket.close(0)
        if not self._context.closed:
            self._context.term()

    def __enter__(self) -> "BatchClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
