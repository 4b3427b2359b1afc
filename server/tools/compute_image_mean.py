"""Mean image of an LMDB of Caffe Datums, like Caffe's ``compute_image_mean``.

Run as ``python -m server.tools.compute_image_mean DB OUTPUT.binaryproto``.
The sum is kept in float64 (Caffe sums in float32, which drifts on large
sets); the file holds the float32 mean as Caffe writes it.
"""

import argparse
import os
import sys

import cv2
import lmdb
import numpy as np
from tqdm import tqdm

from server.caffe_proto import Datum, write_mean_binaryproto


def decode_datum(datum):
    """The (C, H, W) image of a Datum.

    Encoded Datums are decoded as stored (``IMREAD_UNCHANGED``: BGR, or one
    channel for a gray file) and must be 8-bit; raw ones give their uint8
    ``data``, or float32 ``float_data`` when ``data`` is empty. Raises
    ValueError when the payload cannot be decoded or does not match the
    declared channels/height/width.
    """
    if datum.encoded:
        image = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError("encoded image cannot be decoded")
        if image.dtype != np.uint8:
            raise ValueError(f"encoded image is {image.dtype}, expected 8-bit")
        if image.ndim == 2:
            image = image[:, :, np.newaxis]
        return image.transpose(2, 0, 1)
    shape = (datum.channels, datum.height, datum.width)
    size = int(np.prod(shape))
    if datum.data:
        values = np.frombuffer(datum.data, np.uint8)
    else:
        values = np.asarray(datum.float_data, np.float32)
    if size == 0 or values.size != size:
        raise ValueError(f"{values.size} values do not fill channels x height x width = {shape}")
    return values.reshape(shape)


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
                image = decode_datum(Datum.FromString(value))
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
