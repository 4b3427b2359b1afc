"""The demo's data set: scikit-learn's handwritten digits as Caffe LMDBs.

``build_dataset(folder)`` turns the 1,797 8x8 digits that ship inside
scikit-learn (no download) into what a Caffe user would have: PNG files in
one sub-folder per class, then raw-Datum LMDBs written by zfeed's own
``convert_imageset`` (which also upscales them) and a mean written by
``compute_image_mean``. The split is stratified and fixed by ``seed``:
``TEST_PER_CLASS`` images of every digit are the test set, the rest train.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np

from server.caffe_proto import write_mean_binaryproto
from server.tools.compute_image_mean import compute_image_mean
from server.tools.convert_imageset import convert_imageset, scan_class_folder

CLASS_COUNT = 10
TEST_PER_CLASS = 30  # 300 test images: 3 test batches of 100 cover them exactly
IMAGE_SIDE = 16  # the 8x8 originals, upscaled bilinearly by convert_imageset
DIGITS_MAX = 16.0  # load_digits() pixel values run from 0 to 16


@dataclass(frozen=True)
class DigitsDataset:
    """Paths and sizes of a built data set; labels are the digits 0-9."""

    train_lmdb: Path
    test_lmdb: Path
    mean_file: Path  # float mean of the train images, 1 x IMAGE_SIDE x IMAGE_SIDE
    train_count: int
    test_count: int
    image_shape: Tuple[int, int, int]  # C x H x W as stored in the LMDBs
    class_count: int = CLASS_COUNT


def load_digits_uint8() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (N, 8, 8) uint8 images in 0..255 and (N,) int labels."""
    from sklearn.datasets import load_digits  # slow import; only this function needs it

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / DIGITS_MAX)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def split_per_class(labels: np.ndarray, test_per_class: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train, test) index arrays, sorted; ``test_per_class`` random picks of each label are test."""
    rng = np.random.default_rng(seed)
    test = [rng.permutation(np.flatnonzero(labels == label))[:test_per_class]
            for label in np.unique(labels)]
    test_indices = np.sort(np.concatenate(test))
    train_indices = np.setdiff1d(np.arange(len(labels)), test_indices)
    return train_indices, test_indices


def write_class_folders(folder: Path, images: np.ndarray, labels: np.ndarray,
                        indices: np.ndarray) -> None:
    """Write ``images[i]`` as ``folder/<label>/<i>.png`` for every i in ``indices``."""
    for index in indices:
        path = folder / str(labels[index]) / ("%04d.png" % index)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), images[index]):
            raise OSError("cannot write %s" % path)


def _convert(image_folder: Path, lmdb_path: Path, shuffle: bool, seed: int) -> int:
    entries, classes = scan_class_folder(str(image_folder))
    # Sorted folder names give the labels; they must be the digits themselves.
    if classes != [str(label) for label in range(CLASS_COUNT)]:
        raise ValueError("%s: expected class folders 0-%d, found %s"
                         % (image_folder, CLASS_COUNT - 1, classes))
    return convert_imageset(entries, str(lmdb_path), root_folder=str(image_folder), gray=True,
                            resize=(IMAGE_SIDE, IMAGE_SIDE), shuffle=shuffle, seed=seed,
                            check_size=True)


def build_dataset(folder: Path, seed: int = 0) -> DigitsDataset:
    """Build PNGs, LMDBs and the mean under ``folder`` (which must not hold them yet).

    Writes ``images/{train,test}/<digit>/*.png``, ``train_lmdb`` (shuffled
    once with ``seed``, as Caffe's convert_imageset --shuffle would),
    ``test_lmdb`` (class order) and ``mean.binaryproto``.
    """
    images, labels = load_digits_uint8()
    train_indices, test_indices = split_per_class(labels, TEST_PER_CLASS, seed)
    paths = {}
    counts = {}
    for name, indices in (("train", train_indices), ("test", test_indices)):
        image_folder = folder / "images" / name
        write_class_folders(image_folder, images, labels, indices)
        paths[name] = folder / ("%s_lmdb" % name)
        counts[name] = _convert(image_folder, paths[name], shuffle=name == "train", seed=seed)
    mean_file = folder / "mean.binaryproto"
    mean = compute_image_mean(str(paths["train"]))
    write_mean_binaryproto(os.fspath(mean_file), mean)
    return DigitsDataset(paths["train"], paths["test"], mean_file, counts["train"], counts["test"],
                         tuple(int(d) for d in mean.shape))
