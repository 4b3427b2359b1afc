"""Optional CURVE encryption and authentication of the server's socket.

With ``--curve-secret-key`` the PUSH socket is a CURVE server: every byte on
the wire is encrypted, and only trainers whose public keys were given with
``--allow-client-key`` complete the handshake. A refused trainer is logged
(once per key) and receives nothing. ZeroMQ's ZAP handler runs in a thread of
the supervisor (pyzmq's ThreadAuthenticator).
"""

from __future__ import annotations

import logging
import struct
from typing import List, Optional, Set, Tuple

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger("zfeed.server")


class CurveError(ValueError):
    """A key file cannot be used; the message names it."""


KEY_CHARACTERS = 40  # a 32-byte CURVE key in Z85 text


def _checked_key(path: str, which: str, text: bytes) -> bytes:
    """``text`` if it is a Z85 CURVE key; CurveError naming ``path`` otherwise."""
    if len(text) != KEY_CHARACTERS:
        raise CurveError("CURVE key file %s: its %s is %d characters, a key is %d (is the file cut short?): "
                         "make keys with python -m server.tools.keygen" % (path, which, len(text), KEY_CHARACTERS))
    try:
        z85.decode(text)
    except (ValueError, KeyError, struct.error):
        raise CurveError("CURVE key file %s: its %s holds characters that are not Z85 text: "
                         "make keys with python -m server.tools.keygen" % (path, which)) from None
    return text


def _read_certificate(path: str) -> Tuple[bytes, Optional[bytes]]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveError("cannot read CURVE key %s: %s (make keys with python -m server.tools.keygen)"
                         % (path, exc)) from None
    return _checked_key(path, "public-key", public), secret


def load_public_key(path: str) -> bytes:
    """The public key in the key file ``path``; CurveError naming the file if it is unusable."""
    return _read_certificate(path)[0]


def load_key_pair(path: str) -> Tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; CurveError naming the file if unusable."""
    public, secret = _read_certificate(path)
    if secret is None:
        raise CurveError("%s holds no secret key: give the .key_secret file" % path)
    _checked_key(path, "secret-key", secret)
    if zmq.curve_public(secret) != public:
        raise CurveError("CURVE key file %s: its public and secret keys do not match (an edited file?): "
                         "make keys with python -m server.tools.keygen" % path)
    return public, secret


class AllowedKeys:
    """ZAP credentials provider: accepts the listed public keys, logs the others."""

    def __init__(self, keys: Set[bytes]):
        self.keys = keys
        self._refused: Set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        if key not in self._refused:
            self._refused.add(key)
            log.warning("refused a trainer with unknown CURVE key %s", key.decode("ascii", "replace"))
        return False


class CurveServer:
    """Makes sockets CURVE servers that admit only the allowed trainers."""

    def __init__(self, secret_key_file: str, allowed_key_files: List[str]):
        if not allowed_key_files:
            raise CurveError("--curve-secret-key needs at least one --allow-client-key")
        self.public, self.secret = load_key_pair(secret_key_file)
        self.allowed = AllowedKeys({load_public_key(path) for path in allowed_key_files})
        self._authenticator: Optional[ThreadAuthenticator] = None

    def start(self, context: zmq.Context) -> None:
        self._authenticator = ThreadAuthenticator(context, log=logging.getLogger("zfeed.server.zap"))
        self._authenticator.start()
        self._authenticator.configure_curve_callback("*", credentials_provider=self.allowed)

    def secure(self, socket: zmq.Socket) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def stop(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
