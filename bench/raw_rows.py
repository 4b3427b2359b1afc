"""The transport ceiling for rows of a data set: raw pyzmq into a Caffe Python layer, no zfeed.

    python -m bench.raw_rows send --hdf5 FILE --port N --batch 64 --batches-per-message K

The sender (Python 3.11) holds the file's ``data`` and ``label`` datasets in
memory as float32 and pushes them in file order, ``K`` batches a message:
one frame of consecutive rows (a view of the held array, sent without a
copy) and one of their labels, wrapping to the start when the next message
would pass the end. ``RawRowsLayer`` (``bench/raw_rows_layer.py``, in the
Caffe Python) pulls the messages and copies one batch per ``forward()``
into its tops. No header, no checks, no workers, no transform: what is
left is moving the bytes from one process's memory over loopback into
Caffe's blobs, which is what any networked data layer must do, and the
ceiling for zfeed on the same bytes.

Unlike ``bench.transport``, which sends one buffer over and over (it stays
in the CPU's cache) and never copies what it receives, the rows here come
from a data set in memory and end in the blob, as they do for zfeed.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import zmq

SENDER_LIFETIME_S = 600.0  # a sender left behind ends itself
QUEUED_MESSAGES = 4  # the same prefetch as zfeed's layer


def send(hdf5_path: str, port: int, batch: int, batches_per_message: int) -> None:
    import h5py

    with h5py.File(hdf5_path, "r") as f:
        data = np.ascontiguousarray(f["data"][...], dtype=np.float32)
        label = np.ascontiguousarray(f["label"][...], dtype=np.float32)
    rows = batch * batches_per_message
    if rows > len(data):
        raise SystemExit("raw_rows: %d rows a message, the file has %d" % (rows, len(data)))
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.SNDHWM, QUEUED_MESSAGES)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind("tcp://127.0.0.1:%d" % port)
    start = 0
    end = time.monotonic() + SENDER_LIFETIME_S
    while time.monotonic() < end:
        if not socket.poll(1000, zmq.POLLOUT):
            continue
        if start + rows > len(data):
            start = 0
        socket.send_multipart([data[start:start + rows], label[start:start + rows]], copy=False)
        start += rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_rows")
    parser.add_argument("role", choices=["send"])
    parser.add_argument("--hdf5", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches-per-message", type=int, default=1)
    args = parser.parse_args(argv)
    send(args.hdf5, args.port, args.batch, args.batches_per_message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
