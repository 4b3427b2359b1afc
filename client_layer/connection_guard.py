"""``ConnectionGuard``: bounds the memory that peers can make ZeroMQ hold for a PULL socket.

libzmq's ZMQ_MAXMSGSIZE limits each frame, not a multipart message, and its
high-water mark counts complete messages only: a peer that sends frames with
the "more" flag and never a last one makes libzmq keep every frame, out of
the application's sight, until memory runs out.

The kernel sees what libzmq does not show. For each TCP connection of the
socket (the socket monitor's CONNECTED and ACCEPTED events carry its file
descriptor) ``TCP_INFO`` counts the bytes received and ``FIONREAD`` those the
kernel still queues; the difference is what libzmq has read. Less what the
application has taken from the socket (``taken``), that is what libzmq holds.
A thread checks it every ``CHECK_INTERVAL_S``. Over ``limit`` it shuts down
every connection: libzmq drops their half-received messages (servers
reconnect by themselves), and the guard logs it.

A socket that takes nothing from its peers (the server's PUSH socket) knows
what each connection holds: all it read beyond its handshake. With a
``connection_limit`` the guard cuts only a connection over it, and logs it
at most once per ``CUT_LOG_INTERVAL_S``. ``connections`` counts the open
connections of every transport (the server sizes its slots by it); only TCP
ones are measured.

Connections that closed keep their last count, so a normal disconnect only
overstates what is held by the message it cut short; a cut starts the count
afresh. The check needs Linux 4.1 or later (``tcpi_bytes_received``).
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import termios
import threading
import time
from typing import Callable, Dict, Optional, Set, Tuple

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("zfeed.client")

CHECK_INTERVAL_S = 0.02  # a fast peer sends about 2 GB/s over loopback: 40 MB past the limit at most
# libzmq's framing and handshakes are counted as read but never taken: room per frame and per connection.
FRAME_OVERHEAD_BYTES = 64
CONNECTION_SLACK_BYTES = 64 * 1024
CUT_LOG_INTERVAL_S = 10.0
_TCP_INFO_BYTES = 232
_BYTES_RECEIVED_OFFSET = 128  # struct tcp_info: tcpi_bytes_received (a __u64), Linux >= 4.1
_OPENED = zmq.EVENT_CONNECTED | zmq.EVENT_ACCEPTED
_CLOSED = zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED


def _read_by_libzmq(fd: int, peer: object) -> Optional[int]:
    """Bytes libzmq has read from connection ``fd``; None if ``fd`` is no longer that connection."""
    try:
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as connection:
            if connection.getpeername() != peer:
                return None
            info = connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
            queued = fcntl.ioctl(connection.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return None
    if len(info) < _BYTES_RECEIVED_OFFSET + 8:
        return None
    received = struct.unpack_from("=Q", info, _BYTES_RECEIVED_OFFSET)[0]
    return received - struct.unpack("=i", queued)[0]


def _peer_of(fd: int) -> Optional[object]:
    """The peer address of TCP connection ``fd``; None for another transport or a closed fd."""
    try:
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as connection:
            if connection.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) != socket.IPPROTO_TCP:
                return None
            return connection.getpeername()
    except OSError:
        return None


def _shut_down(fd: int, peer: object) -> None:
    """Shut connection ``fd`` down both ways, unless it is no longer ``peer``'s."""
    try:
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as connection:
            if connection.getpeername() == peer:
                connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone


class ConnectionGuard:
    """Watches ``zmq_socket``'s TCP connections from a thread; see the module docstring.

    ``limit()`` is called at each check; the receiving thread reports each
    message it takes with ``took``. With ``connection_limit`` instead, each
    connection may hold that many bytes beyond ``CONNECTION_SLACK_BYTES``.
    Attach before the socket binds or connects: it is the socket's monitor.
    """

    def __init__(self, zmq_socket: zmq.Socket, limit: Optional[Callable[[int], int]], describe: Callable[[], str],
                 connection_limit: Optional[int] = None):
        self._limit = limit  # live connection count -> bytes libzmq may hold
        self._connection_limit = connection_limit
        self._describe = describe
        self._monitor = zmq_socket.get_monitor_socket(_OPENED | _CLOSED)
        self._connections: Dict[int, Tuple[object, int]] = {}  # fd -> (peer address, bytes read)
        self._unmeasured: Set[int] = set()  # fds of connections of other transports
        self._cuts_unlogged = 0
        self._cut_logged_at = -CUT_LOG_INTERVAL_S
        self._closed_read = 0
        self._taken = 0
        self.cuts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zfeed-connection-guard", daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        """Connections open now, of any transport."""
        return len(self._connections) + len(self._unmeasured)

    def took(self, nbytes: int, frames: int) -> None:
        self._taken += nbytes + frames * FRAME_OVERHEAD_BYTES

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._monitor.poll(int(CHECK_INTERVAL_S * 1000)):
                    self._handle_event(recv_monitor_message(self._monitor))
                    continue
                self._check()
        except zmq.ZMQError:
            pass  # the socket and its monitor were closed
        finally:
            self._monitor.close(0)

    def _handle_event(self, event: dict) -> None:
        fd = event["value"]
        if event["event"] & _OPENED:
            peer = _peer_of(fd)
            if peer is not None:
                self._connections[fd] = (peer, 0)
            else:
                self._unmeasured.add(fd)
        elif fd in self._connections:
            self._closed_read += self._connections.pop(fd)[1]
        else:
            self._unmeasured.discard(fd)

    def _check(self) -> None:
        for fd, (peer, _) in list(self._connections.items()):
            read = _read_by_libzmq(fd, peer)
            if read is None:
                self._closed_read += self._connections.pop(fd)[1]
            else:
                self._connections[fd] = (peer, read)
        if self._connection_limit is not None:
            for fd, (peer, read) in list(self._connections.items()):
                if read - CONNECTION_SLACK_BYTES > self._connection_limit:
                    self._cut_one(fd, peer, read)
            return
        held = (self._closed_read + sum(read for _, read in self._connections.values())
                - self._taken - CONNECTION_SLACK_BYTES * len(self._connections))
        limit = self._limit(len(self._connections))
        if held > limit:
            self._cut_all(held, limit)

    def _cut_all(self, held: int, limit: int) -> None:
        self.cuts += 1
        log.warning("ZeroMQ holds %.0f MB of unfinished messages for this trainer (%s), more than the %.0f MB "
                    "max_batch_mb and prefetch allow: a peer sends a message that never ends; closing all "
                    "%d connections (servers reconnect by themselves)",
                    held / 2**20, self._describe(), limit / 2**20, len(self._connections))
        for fd, (peer, _) in self._connections.items():
            _shut_down(fd, peer)
        self._connections.clear()
        self._closed_read, self._taken = 0, 0

    def _cut_one(self, fd: int, peer: object, read: int) -> None:
        _shut_down(fd, peer)
        del self._connections[fd]
        self._cuts_unlogged += 1
        self.cuts += 1
        now = time.monotonic()
        if now - self._cut_logged_at >= CUT_LOG_INTERVAL_S:
            log.warning("closed a trainer connection from %s:%d (%s) that sent %.1f MB: trainers send only their "
                        "handshake, this peer sends a message that never ends (%d such connections closed since "
                        "the last report)", peer[0], peer[1], self._describe(), read / 2**20, self._cuts_unlogged)
            self._cut_logged_at, self._cuts_unlogged = now, 0

    def close(self) -> None:
        """Stop the thread (before the socket closes, so the monitor goes first)."""
        self._stop.set()
        self._thread.join(timeout=5)
