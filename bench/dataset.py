"""The loader benchmark's data set: an LMDB of JPEG-encoded 256x256 Datums.

``IMAGE_COUNT`` colour images are cut from the BVLC example photos in
``bench/data/`` by random square-ish crops, resized to 256x256 and encoded
as JPEG quality 90; the label of an image is the index of its photo (0-2).
``server.tools.convert_imageset`` writes them to the LMDB, storing each file
as is (``encoded``), as Caffe's ``convert_imageset --encoded`` does. The
result is cached under ``bench/.cache/`` and only rebuilt when missing.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from server.tools.convert_imageset import convert_imageset

DATA_DIR = Path(__file__).resolve().parent / "data"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
PHOTOS = ("cat.jpg", "fish-bike.jpg", "cat_gray.jpg")
IMAGE_COUNT = 512
IMAGE_SIDE = 256
JPEG_QUALITY = 90
SEED = 2014
CLASS_COUNT = len(PHOTOS)


def _cut(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop of 40-100% of the short side, aspect 3:4 to 4:3, resized to 256x256."""
    height, width = photo.shape[:2]
    side = rng.uniform(0.4, 1.0) * min(height, width)
    aspect = rng.uniform(0.75, 4 / 3)
    crop_h = int(min(height, side * aspect ** 0.5))
    crop_w = int(min(width, side / aspect ** 0.5))
    top = rng.integers(0, height - crop_h + 1)
    left = rng.integers(0, width - crop_w + 1)
    crop = photo[top:top + crop_h, left:left + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(crop, (IMAGE_SIDE, IMAGE_SIDE), interpolation=cv2.INTER_AREA)


def _write_images(folder: Path) -> list:
    photos = [cv2.imread(str(DATA_DIR / name), cv2.IMREAD_COLOR) for name in PHOTOS]
    rng = np.random.default_rng(SEED)
    entries = []
    for i in range(IMAGE_COUNT):
        label = i % len(photos)
        name = "%04d.jpg" % i
        image = _cut(photos[label], rng)
        if not cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError("cannot write %s" % (folder / name))
        entries.append((name, label))
    return entries


def jpeg_lmdb() -> Path:
    """The path of the benchmark LMDB, built first if it is not in the cache."""
    path = CACHE_DIR / ("jpeg%d-%dpx-q%d-lmdb" % (IMAGE_COUNT, IMAGE_SIDE, JPEG_QUALITY))
    if path.is_dir():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="building-", dir=CACHE_DIR))
    try:
        images = work / "images"
        images.mkdir()
        entries = _write_images(images)
        convert_imageset(entries, str(work / "lmdb"), root_folder=str(images), encoded=True,
                         shuffle=True, seed=SEED)
        (work / "lmdb").rename(path)  # only a complete LMDB ever has the final name
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path
