"""Small real data sets for tests and benchmarks: npz files, Datum LMDBs, image lists."""

from pathlib import Path
from typing import Sequence

import cv2
import lmdb
import numpy as np

from server.caffe_proto import encoded_datum, image_to_datum


def random_images(count: int, shape=(3, 12, 14), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count,) + tuple(shape), dtype=np.uint8)


def smooth_images(count: int, shape=(3, 40, 48), seed: int = 0) -> np.ndarray:
    """Compressible uint8 images, as photographs are: gradients with a few noisy pixels."""
    channels, height, width = shape
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 4, (count,) + tuple(shape)) * (rng.random((count,) + tuple(shape)) < 0.05)
    base = np.stack([(x * 2 + y * 3 + channel * 40) for channel in range(channels)])
    return ((base[np.newaxis] + noise + np.arange(count).reshape(-1, 1, 1, 1)) % 256).astype(np.uint8)


def write_npz(path: Path, images: np.ndarray, labels: Sequence[int]) -> Path:
    np.savez(path, data=images, label=np.asarray(labels))
    return path


def write_lmdb(path: Path, images: np.ndarray, labels: Sequence[int], encode: str = "") -> Path:
    """Datums keyed "%08d" in order; ``encode`` ".png"/".jpg" stores encoded images."""
    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for i, (image, label) in enumerate(zip(images, labels)):
            if encode:
                ok, data = cv2.imencode(encode, image.transpose(1, 2, 0))
                assert ok
                datum = encoded_datum(data.tobytes(), int(label))
            else:
                datum = image_to_datum(image, int(label))
            txn.put(b"%08d" % i, datum.SerializeToString())
    env.close()
    return path


def write_image_list(folder: Path, images: np.ndarray, labels: Sequence[int]) -> Path:
    """PNG files (one with a space in its name) and a Caffe ImageData list naming them."""
    lines = []
    for i, (image, label) in enumerate(zip(images, labels)):
        name = "img %d.png" % i if i == 0 else "img%d.png" % i
        cv2.imwrite(str(folder / name), image.transpose(1, 2, 0))
        lines.append("%s %d" % (name, label))
    list_path = folder / "list.txt"
    list_path.write_text("\n".join(lines) + "\n")
    return list_path


def corrupt_records(db: Path, values: dict) -> None:
    """Overwrite records "%08d" % i of an LMDB with the given raw bytes."""
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:
        for index, value in values.items():
            txn.put(b"%08d" % index, value)
    env.close()
