"""Optional CURVE encryption and authentication of the server's socket.

With ``--curve-secret-key`` the PUSH socket is a CURVE server: every byte on
the wire is encrypted, and only trainers whose public keys were given with
``--allow-client-key`` complete the handshake. A refused trainer is logged
(once per key) and receives nothing. ZeroMQ's ZAP handler runs in a thread of
the supervisor (pyzmq's ThreadAuthenticator). Key files are read as the layer reads them
(``client_layer/curve_keys.py``).
"""

from __future__ import annotations

import logging
from typing import List, Optional, Set

import zmq
from zmq.auth.thread import ThreadAuthenticator

from client_layer.curve_keys import load_key_pair, load_public_key

log = logging.getLogger("zfeed.server")


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
        """Loads the keys (``curve_keys``): CurveKeyError naming a file that cannot be used."""
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
