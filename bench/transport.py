"""Part (a), transport: zfeed's send and receive path against raw pyzmq.

Measured: bytes and batches per second from a sender process to a receiver
process over TCP on 127.0.0.1, after a warm-up, for batches of 64 x 3 x 227
x 227 float32 images and 64 float32 labels (the server's layout for
ImageNet-sized crops, 39.6 MB a batch), or another ``MessageShape``.

- raw: a PUSH socket sends the same message over and over from one
  preallocated buffer (header bytes, then the data split into the frames
  ``client_layer.wire.array_spec`` gives, then the labels) with
  ``copy=False``; a PULL socket receives with ``copy=False`` and views every
  frame with ``np.frombuffer``. Same frames, same high-water marks as zfeed:
  the ceiling.
- zfeed: ``server.sender.BatchSender`` sends pre-filled ``BatchSlots`` the way
  the supervisor's loop does (zero-copy frames, a slot reused once its tracker
  says the frames are gone); ``client_layer.BatchClient`` receives, decodes
  and validates every batch, and the receiver views every frame.

No loading, no transform and no Caffe: only what the wire path itself costs.
Run a role by hand with ``python -m bench.transport ROLE --port N``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import zmq

from bench.children import Children
from harness.children import PYTHON, child_env, free_port
from client_layer import wire

RECEIVE_TIMEOUT_S = 30.0
SENDER_LIFETIME_S = 600.0  # a sender left behind ends itself
# As the server's supervisor runs with 2 workers and the default --max-inflight-mb.
SERVER_WORKERS = 2
DEFAULT_MAX_INFLIGHT_MB = 512


@dataclass(frozen=True)
class MessageShape:
    """A message of ``rows`` float32 samples of ``sample_shape`` and their float32 labels."""

    rows: int = 64
    sample_shape: Tuple[int, ...] = (3, 227, 227)

    def arguments(self) -> List[str]:
        return ["--rows", str(self.rows), "--sample-shape", "x".join(map(str, self.sample_shape))]


def batch_specs(shape: MessageShape) -> List[wire.ArraySpec]:
    """The server's specs for this batch (as ``DataServer`` builds them)."""
    return [wire.array_spec("data", np.float32, (shape.rows,) + shape.sample_shape),
            wire.array_spec("label", np.float32, (shape.rows,))]


def slot_count(shape: MessageShape) -> int:
    """The slots the server would use for this batch (``sizing.slot_count_for``)."""
    from server.sizing import slot_count_for

    return slot_count_for(sum(spec.nbytes for spec in batch_specs(shape)), SERVER_WORKERS, DEFAULT_MAX_INFLIGHT_MB)


def _header(seq: int, shape: MessageShape) -> bytes:
    return wire.encode_header("bench", seq, batch_specs(shape), np.arange(shape.rows), np.zeros(shape.rows))


# -- senders -------------------------------------------------------------------------------

def send_raw(port: int, shape: MessageShape) -> None:
    specs = batch_specs(shape)
    data = np.full((shape.rows,) + shape.sample_shape, 1.0, np.float32)
    label = np.arange(shape.rows, dtype=np.float32)
    parts = [_header(0, shape)] + wire.array_frames(specs[0], data) + wire.array_frames(specs[1], label)
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.SNDHWM, slot_count(shape) + 1)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind("tcp://127.0.0.1:%d" % port)
    end = time.monotonic() + SENDER_LIFETIME_S
    while time.monotonic() < end:
        if socket.poll(1000, zmq.POLLOUT):
            socket.send_multipart(parts, copy=False)


def send_zfeed(port: int, shape: MessageShape) -> None:
    from server.batch_buffer import BatchSlots
    from server.sender import BatchSender
    from server.supervisor import POLL_RELEASE_MS

    specs = batch_specs(shape)
    count = slot_count(shape)
    slots = BatchSlots(specs, count)
    for slot in range(count):
        arrays = slots.arrays(slot)
        arrays["data"][...] = slot
        arrays["label"][...] = np.arange(shape.rows)
    context = zmq.Context()
    sender = BatchSender(context, "bench", specs)
    sender.open(["tcp://127.0.0.1:%d" % port], [])
    indices, epochs = np.arange(shape.rows, dtype=np.int64), np.zeros(shape.rows, np.int32)
    free = list(range(count))
    seq = 0
    end = time.monotonic() + SENDER_LIFETIME_S
    # The supervisor's loop without workers: send while a slot is ready and the socket
    # takes it, else wait POLL_RELEASE_MS for room, then collect released slots.
    while time.monotonic() < end:
        while free and sender.can_send:
            slot = free[-1]
            if not sender.send(seq, slots.arrays(slot), indices, epochs, token=slot):
                break  # the trainer went away just now; nothing was queued
            free.pop()
            seq += 1
        if free:
            sender.socket.poll(POLL_RELEASE_MS, zmq.POLLOUT)
        else:
            time.sleep(POLL_RELEASE_MS / 1000)
        free.extend(sender.release_sent())


# -- receivers -----------------------------------------------------------------------------

def _touch(arrays) -> float:
    """Read one value of each received array or view: proof the bytes are there, no copy."""
    total = 0.0
    for array in arrays:
        total += float(np.frombuffer(array, dtype=np.uint8)[0])
    return total


def _measure(receive_one, warmup_s: float, seconds: float) -> Dict[str, float]:
    receive_one()  # the first batch: connection made
    warm_end = time.monotonic() + warmup_s
    while time.monotonic() < warm_end:
        receive_one()
    batches = nbytes = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        nbytes += receive_one()
        batches += 1
    return {"batches": batches, "bytes": nbytes, "seconds": time.monotonic() - start}


def receive_raw(port: int, warmup_s: float, seconds: float, shape: MessageShape) -> Dict[str, float]:
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.setsockopt(zmq.RCVHWM, 4)  # BatchClient's default prefetch
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, int(RECEIVE_TIMEOUT_S * 1000))
    socket.connect("tcp://127.0.0.1:%d" % port)

    def receive_one() -> int:
        frames = socket.recv_multipart(copy=False)
        _touch([frame.buffer for frame in frames[1:]])
        return sum(len(frame.buffer) for frame in frames)

    try:
        return _measure(receive_one, warmup_s, seconds)
    finally:
        socket.close(0)
        context.term()


def receive_zfeed(port: int, warmup_s: float, seconds: float, shape: MessageShape) -> Dict[str, float]:
    from client_layer import BatchClient

    header_bytes = len(_header(0, shape))
    with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=RECEIVE_TIMEOUT_S) as client:
        def receive_one() -> int:
            batch = client.receive()
            # Batch.array() copies an array that came in several frames; chunks() does not.
            _touch(chunk for name in batch.names for _start, chunk in batch.chunks(name))
            return header_bytes + sum(spec.nbytes for spec in batch.specs)

        return _measure(receive_one, warmup_s, seconds)


ROLES = {"raw": (send_raw, receive_raw), "zfeed": (send_zfeed, receive_zfeed)}


# -- the part ------------------------------------------------------------------------------

def run(children: Children, rounds: int, seconds: float, warmup_s: float,
        shape: MessageShape = MessageShape()) -> Dict[str, dict]:
    """``rounds`` alternating raw/zfeed runs of ``shape``d messages; the median MB/s and batches/s of each."""
    runs: Dict[str, List[Dict[str, float]]] = {"raw": [], "zfeed": []}
    for round_number in range(rounds):
        for kind in ("raw", "zfeed"):
            port = free_port()
            role = [PYTHON, "-m", "bench.transport"] + shape.arguments()
            sender = children.start("transport-%s-send-%d" % (kind, round_number),
                                    role + ["%s-send" % kind, "--port", str(port)], child_env())
            receiver = children.start("transport-%s-recv-%d" % (kind, round_number),
                                      role + ["%s-recv" % kind, "--port", str(port),
                                              "--seconds", str(seconds), "--warmup", str(warmup_s)],
                                      child_env())
            try:
                try:
                    result = children.result(receiver, warmup_s + seconds + RECEIVE_TIMEOUT_S + 10)
                finally:
                    sender.check_running()  # its error first
            finally:
                children.stop(sender)
            result["mb_s"] = result["bytes"] / result["seconds"] / 1e6
            result["batches_s"] = result["batches"] / result["seconds"]
            runs[kind].append(result)
            print("  transport round %d %-5s %7.0f MB/s %6.1f batches/s"
                  % (round_number + 1, kind, result["mb_s"], result["batches_s"]), file=sys.stderr)
    return {kind: {"mb_s": statistics.median(r["mb_s"] for r in results),
                   "batches_s": statistics.median(r["batches_s"] for r in results),
                   "runs": results}
            for kind, results in runs.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transport")
    parser.add_argument("role", choices=["%s-%s" % (k, r) for k in ROLES for r in ("send", "recv")])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=MessageShape.rows)
    parser.add_argument("--sample-shape", default="x".join(map(str, MessageShape.sample_shape)))
    args = parser.parse_args(argv)
    shape = MessageShape(args.rows, tuple(int(d) for d in args.sample_shape.split("x")))
    kind, _, side = args.role.partition("-")
    send, receive = ROLES[kind]
    if side == "send":
        send(args.port, shape)
    else:
        print(json.dumps(receive(args.port, args.warmup, args.seconds, shape)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
