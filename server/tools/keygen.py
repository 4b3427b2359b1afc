"""Make a CURVE key pair for zfeed: ``python -m server.tools.keygen DIR NAME``.

Writes DIR/NAME.key (public: give it to the other side) and
DIR/NAME.key_secret (secret: keep it on this machine, mode 0600). Make one
pair for the server and one per trainer; the server allows trainers by their
public key files (``--allow-client-key``), trainers check the server's
(``curve_server_key`` in the layer's param_str).
"""

import argparse
import os
import sys

import zmq.auth


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.tools.keygen", description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="where to write the key files (created if missing)")
    parser.add_argument("name", help="base name of the two files, e.g. server or trainer-1")
    args = parser.parse_args(argv)
    os.makedirs(args.directory, exist_ok=True)
    public, secret = zmq.auth.create_certificates(args.directory, args.name)
    os.chmod(secret, 0o600)
    print("public key: %s\nsecret key: %s" % (public, secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
