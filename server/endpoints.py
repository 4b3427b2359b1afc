"""The one check of a ZeroMQ endpoint given on a command line: the server's ``--bind`` and
``--connect``, and the addresses ``rewrite_prototxt`` writes into a layer's ``param_str``."""

from __future__ import annotations

MAX_PORT = 65535


def endpoint_problem(endpoint: str) -> str:
    """What is wrong with ``endpoint`` ('' if nothing): it must be ``tcp://HOST:PORT`` (for
    ``--connect`` also ``tcp://SOURCE;HOST:PORT``; HOST may be ``*``, ``[IPv6]`` or an
    interface) with a port from 1 to ``MAX_PORT``, or ``ipc://PATH``."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return ""
    host, colon, port = endpoint[len("tcp://"):].rpartition(";")[2].rpartition(":")
    if (not endpoint.startswith("tcp://") or not colon or not host or not port.isdigit()
            or not 1 <= int(port) <= MAX_PORT):
        return "expected tcp://HOST:PORT with a port from 1 to %d (or ipc://PATH)" % MAX_PORT
    return ""
