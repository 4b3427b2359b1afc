"""A raw ZMTP 3.0 peer over tcp on 127.0.0.1, for tests of what hostile peers can make a socket hold."""

import socket
import struct
import time

# A raw ZMTP 3.0 peer (NULL mechanism).
ZMTP_GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL" + bytes(16) + b"\x00" + bytes(31)


def zmtp_ready(socket_type):
    """The READY command of a peer that declares itself a ``socket_type`` (b"PUSH", b"PULL") socket."""
    body = b"\x05READY" + bytes([11]) + b"Socket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return b"\x04" + bytes([len(body)]) + body


def more_frames(frame_bytes, count=1):
    """``count`` frames of ``frame_bytes`` zero bytes, each flagged "more"."""
    if frame_bytes < 256:
        return (b"\x01" + bytes([frame_bytes]) + bytes(frame_bytes)) * count
    return (b"\x03" + struct.pack(">Q", frame_bytes) + bytes(frame_bytes)) * count


def endless_message(port, budget, stop, socket_type=b"PUSH", chunk=None):
    """Send ``chunk`` (by default one 8 MiB frame) of frames flagged "more" and never a last
    frame, as a ``socket_type`` peer, reconnecting when cut, until ``budget`` bytes are sent
    or ``stop`` is set; returns how many connections were cut."""
    chunk = more_frames(8 << 20) if chunk is None else chunk
    sent, cut = 0, 0
    while sent < budget and not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
                connection.sendall(ZMTP_GREETING + zmtp_ready(socket_type))
                while sent < budget and not stop.is_set():
                    connection.sendall(chunk)
                    sent += len(chunk)
        except OSError:
            cut += 1
            time.sleep(0.05)
    return cut
