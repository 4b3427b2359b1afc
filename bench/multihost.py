"""Across hosts: images/s from 1 and 2 server hosts, and uint8 vs float32 over shaped links.

``python -m bench.multihost`` creates hosts as network namespaces joined by a
bridge (harness/netns.py; needs root), runs real servers in the server hosts
and a receiving trainer (harness/trainer_probe.py, which validates every batch)
in the trainer host, on the JPEG LMDB of bench/dataset.py with crop 227,
mirror and mean values, batch 64.

- Scale-out: one server host (1 loader worker) against two server hosts (1
  worker each, ``--shard 0/2`` and ``1/2``): images/s at the trainer, and the
  ratio. All hosts share this machine's 2 cores, so two server hosts cannot
  show more than the cores allow.
- Wire: one server host whose outgoing link is shaped with ``tc tbf`` to
  1 and 10 Gbit/s: bytes per batch on the wire and batches/s with
  ``--wire-format float32``, uint8 pixels (the default), and uint8 pixels
  with ``--compress lz4`` and ``--compress zstd``.
Each figure is the median of ``--rounds`` runs, all in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import List

from bench.dataset import jpeg_lmdb
from harness import netns
from harness.children import PYTHON, ChildProcess, ServerProcess

PORT = 5555
BATCH = 64
PAYLOADS = [("float32", ["--wire-format", "float32"]), ("uint8", []),
            ("uint8 + lz4", ["--compress", "lz4"]), ("uint8 + zstd -3", ["--compress", "zstd"])]
TRANSFORM = ["--crop-size", "227", "--mirror", "--mean-value", "104,117,123", "--batch-size", str(BATCH)]


def _receive(net: "netns.Network", addresses: List[str], batches: int, workdir: Path) -> dict:
    out = workdir / "trainer.json"
    argv = [PYTHON, "-m", "harness.trainer_probe", str(out), str(batches), "--timeout", "60"]
    argv += [a for address in addresses for a in ("--connect", address)]
    with ChildProcess(net.hosts["trainer"].command(argv), workdir / "trainer.log") as trainer:
        status = trainer.wait(300)
        if status != 0:
            raise trainer.error("exited with status %d" % status)
    report = json.loads(out.read_text())
    first_excluded = report["batches"][1:]  # the clock starts at the first batch
    return {"images_per_s": len(first_excluded) * BATCH / report["seconds"],
            "batches_per_s": len(first_excluded) / report["seconds"],
            "bytes_per_batch": statistics.mean(batch["wire_bytes"] for batch in report["batches"])}


def run_servers(server_count: int, batches: int, workdir: Path, extra=(), rate: str = "") -> dict:
    source = "lmdb:%s" % jpeg_lmdb()
    names = ["server%d" % i for i in range(server_count)] + ["trainer"]
    with netns.Network(names) as net, ExitStack() as servers:
        for i in range(server_count):
            host = net.hosts["server%d" % i]
            if rate:
                net.shape(host.name, rate)
            shard = ["--shard", "%d/%d" % (i, server_count)] if server_count > 1 else []
            servers.enter_context(ServerProcess(
                ["--source", source, "--bind", "tcp://%s:%d" % (host.address, PORT), "--workers", "1",
                 *TRANSFORM, *shard, *extra], workdir / ("server%d.log" % i), prefix=host.command([])))
        return _receive(net, ["tcp://%s:%d" % (net.hosts["server%d" % i].address, PORT)
                              for i in range(server_count)], batches, workdir)


def median_of(rounds: int, measure) -> dict:
    runs = [measure() for _ in range(rounds)]
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.multihost", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="one round of 20 batches")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batches = 1, 20
    reason = netns.available()
    if reason:
        print("multihost benchmark not run: %s" % reason)
        return 1
    with tempfile.TemporaryDirectory(prefix="zfeed-multihost-") as folder:
        work = Path(folder)
        one = median_of(args.rounds, lambda: run_servers(1, args.batches, work))
        two = median_of(args.rounds, lambda: run_servers(2, args.batches, work))
        print("| server hosts | images/s at the trainer host | ratio |")
        print("| --- | --- | --- |")
        print("| 1 (1 worker) | %.0f | 1.00 |" % one["images_per_s"])
        print("| 2 (1 worker each, sharded) | %.0f | %.2f |" % (two["images_per_s"],
                                                                two["images_per_s"] / one["images_per_s"]))
        print()
        print("| link | payload | MB per batch on the wire | batches/s | ratio to float32 | ratio to uint8 |")
        print("| --- | --- | --- | --- | --- | --- |")
        for rate in ("1gbit", "10gbit"):
            measured = {label: median_of(args.rounds, lambda: run_servers(1, args.batches, work, extra, rate))
                        for label, extra in PAYLOADS}
            for label, _extra in PAYLOADS:
                m = measured[label]
                print("| %s | %s | %.2f | %.1f | %.2f | %.2f |" % (
                    rate, label, m["bytes_per_batch"] / 1e6, m["batches_per_s"],
                    m["batches_per_s"] / measured["float32"]["batches_per_s"],
                    m["batches_per_s"] / measured["uint8"]["batches_per_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
