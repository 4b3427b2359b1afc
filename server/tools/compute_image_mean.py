"""Mean image of an LMDB of Caffe Datums, like Caffe's ``compute_image_mean``.

Run as ``python -m server.tools.compute_image_mean DB OUTPUT.binaryproto``.
The sum is kept in float64 (Caffe sums in float32, which drifts on large
sets); the file holds the float32 mean as Caffe writes it.
"""

import argparse
import os
import sys

import lmdb
import numpy as np
from tqdm import tqdm

from server.caffe_proto import Datum, write_mean_binaryproto
from server.sources import datum_image


def compute_image_mean(db_path, *, progress=False):
    """The float32 (C, H, W) mean of every Datum in the LMDB at ``db_path``.

    Raises FileNotFoundError if there is no LMDB directory, ValueError
    naming the record's key when a record is not a Datum, cannot be decoded,
    or differs in size from the first one, and ValueError for an empty DB.
    """
    if not os.path.isdir(db_path):
        raise FileNotFoundError(f"{db_path}: no LMDB directory there")
    total, count = None, 0
    with lmdb.open(db_path, readonly=True, lock=False) as env, env.begin() as txn:
        records = tqdm(txn.cursor(), total=env.stat()["entries"], disable=not progress,
                       file=sys.stderr, unit="rec")
        for key, value in records:
            where = f"{db_path}: record {key.decode('utf-8', 'replace')!r}"
            try:
                image = datum_image(Datum.FromString(value))
            except Exception as exc:  # protobuf's DecodeError differs between backends
                raise ValueError(f"{where}: {exc}") from None
            if total is None:
                total = np.zeros(image.shape, np.float64)
            elif image.shape != total.shape:
                raise ValueError(f"{where}: shape {image.shape} differs from the first "
                                 f"record's {total.shape}")
            total += image
            count += 1
    if count == 0:
        raise ValueError(f"{db_path}: no records")
    return (total / count).astype(np.float32)


def main(argv=None):
    """CLI entry point; returns the exit status (2 for a user mistake)."""
    parser = argparse.ArgumentParser(
        prog="python -m server.tools.compute_image_mean",
        description="Average the images of an LMDB of Caffe Datums into a mean.binaryproto.")
    parser.add_argument("db", help="LMDB directory of Datums (raw or encoded)")
    parser.add_argument("output", help="mean file to write (Caffe BlobProto, num=1)")
    args = parser.parse_args(argv)
    try:
        mean = compute_image_mean(args.db, progress=True)
        write_mean_binaryproto(args.output, mean)
    except (ValueError, OSError, lmdb.Error) as exc:
        print(f"compute_image_mean: error: {exc}", file=sys.stderr)
        return 2
    channel_means = ", ".join(f"{m:.3f}" for m in mean.mean(axis=(1, 2)))
    print(f"compute_image_mean: wrote mean of shape {mean.shape} to {args.output}; "
          f"per-channel means {channel_means}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
