"""Loading CURVE key files, for the server (``--curve-secret-key``, ``--allow-client-key``)
and the layer (``curve_secret_key``, ``curve_server_key``) alike.

Key files are ZeroMQ's certificates, as ``python -m server.tools.keygen``
writes them: ``NAME.key`` holds a public key, ``NAME.key_secret`` the pair.
Every key is checked to be 40 characters of Z85 text (32 bytes), and a
pair's public key to be the one its secret key gives, so that a file cut
short or edited is refused at start-up, naming the file, rather than
failing the handshake later without a word.

Python 3.8 with pyzmq; nothing from ``server``.
"""

from __future__ import annotations

import struct
from typing import Optional, Tuple

import zmq
import zmq.auth
from zmq.utils import z85

KEY_CHARACTERS = 40  # a 32-byte CURVE key in Z85 text
_MAKE_KEYS = "make keys with python -m server.tools.keygen"


class CurveKeyError(ValueError):
    """A key file cannot be used; the message names it and what to do."""


def _checked_key(path: str, which: str, text: bytes) -> bytes:
    """``text`` if it is a Z85 CURVE key; CurveKeyError naming ``path`` otherwise."""
    try:
        valid = len(text) == KEY_CHARACTERS and len(z85.decode(text)) == 32
    except (ValueError, KeyError, TypeError, struct.error):  # z85.decode fails on characters outside Z85
        valid = False
    if not valid:
        raise CurveKeyError("CURVE key file %s: its %s is not a %d-character Z85 CURVE key (it has %d characters): "
                            "the file is cut short, edited or not a key file; %s"
                            % (path, which, KEY_CHARACTERS, len(text), _MAKE_KEYS))
    return text


def _read_certificate(path: str) -> Tuple[bytes, Optional[bytes]]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError("cannot read CURVE key %s: %s (%s)" % (path, exc, _MAKE_KEYS)) from None
    return _checked_key(path, "public-key", public), secret


def load_public_key(path: str) -> bytes:
    """The public key in the key file ``path``; CurveKeyError naming the file if it is unusable."""
    return _read_certificate(path)[0]


def load_key_pair(path: str) -> Tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; CurveKeyError naming the file if unusable."""
    public, secret = _read_certificate(path)
    if secret is None:
        raise CurveKeyError("%s holds no secret key: give the .key_secret file" % path)
    _checked_key(path, "secret-key", secret)
    if zmq.curve_public(secret) != public:
        raise CurveKeyError("CURVE key file %s: its public and secret keys do not match (an edited file?): %s"
                            % (path, _MAKE_KEYS))
    return public, secret
