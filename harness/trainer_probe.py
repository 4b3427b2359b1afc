"""A trainer stand-in for the multi-host tests and benchmark: receive batches, record their headers as JSON.

Usage: python -m harness.trainer_probe OUT.json COUNT (--connect ADDR ... | --bind ADDR) [--timeout S] [--idle S]
[--work S] [--ready-file PATH]
Writes PATH (empty) once its socket exists, then receives COUNT batches (or until --idle seconds pass without one,
when COUNT is 0), spending --work seconds on each batch as a training step would, and writes
[{"stream", "seq", "epochs", "indices", "bytes", "wire_bytes", "at"}] ("at": seconds from the first batch to
this one) plus the receive time. Runs in whatever network
namespace it is started in.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from client_layer import BatchClient, NoDataError


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("count", type=int)
    parser.add_argument("--connect", action="append", default=[])
    parser.add_argument("--bind", default=None)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--work", type=float, default=0.0)
    parser.add_argument("--ready-file", type=Path, default=None)
    args = parser.parse_args()
    records = []
    started = None
    with BatchClient(args.connect or None, args.bind, timeout_s=args.timeout) as client:
        if args.ready_file is not None:
            args.ready_file.touch()  # the socket exists: servers may start now
        while args.count == 0 or len(records) < args.count:
            try:
                batch = client.receive()
            except NoDataError:
                if args.count == 0 and records:
                    break
                raise
            if started is None:
                started = time.monotonic()
                client.timeout_s = args.idle if args.count == 0 else args.timeout
            records.append({"stream": batch.stream, "seq": batch.seq, "epochs": batch.epochs.tolist(),
                            "indices": batch.indices.tolist(),
                            "bytes": sum(batch.spec(n).nbytes for n in batch.names),
                            "wire_bytes": batch.wire_bytes, "at": time.monotonic() - started})
            time.sleep(args.work)
        elapsed = time.monotonic() - started if started else 0.0
    Path(args.out).write_text(json.dumps({"batches": records, "seconds": elapsed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
