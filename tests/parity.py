"""Helpers of the real-Caffe parity and migration tests: datasets in every format Caffe
reads, zfeed servers started from prototxts, and many Caffe nets run in one process."""

import json
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import cv2
import h5py
import lmdb
import numpy as np
import plyvel

from caffe_runner import run_caffe_script
from harness.children import ServerProcess, free_port
from server.caffe_proto import Datum, encoded_datum, image_to_datum
from server.tools import rewrite_prototxt

IMAGES = Path(__file__).resolve().parent / "images"
PROTOTXT = Path(__file__).resolve().parent / "prototxt"


# -- datasets ------------------------------------------------------------------------------

def datums(images: np.ndarray, labels: Sequence[int], encode: str = "", quality: int = 95) -> List[bytes]:
    """Serialised Datums: raw (uint8 data or float32 float_data) or encoded as ``encode``."""
    values = []
    for image, label in zip(images, labels):
        if encode:
            params = [cv2.IMWRITE_JPEG_QUALITY, quality] if encode == ".jpg" else []
            ok, data = cv2.imencode(encode, image.transpose(1, 2, 0), params)
            assert ok
            datum = encoded_datum(data.tobytes(), int(label))
        elif image.dtype == np.float32:
            datum = Datum(channels=image.shape[0], height=image.shape[1], width=image.shape[2],
                          label=int(label), float_data=image.ravel().tolist())
        else:
            datum = image_to_datum(image, int(label))
        values.append(datum.SerializeToString())
    return values


def write_lmdb_values(path: Path, values: Sequence[bytes]) -> Path:
    """An LMDB keyed "%08d"."""
    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(b"%08d" % i, value)
    env.close()
    return path


def write_leveldb(path: Path, values: Sequence[bytes]) -> Path:
    """A LevelDB keyed "%08d"; uncompressed, as Caffe's wheel has no snappy."""
    db = plyvel.DB(str(path), create_if_missing=True, error_if_exists=True, compression=None)
    with db.write_batch() as batch:
        for i, value in enumerate(values):
            batch.put(b"%08d" % i, value)
    db.close()
    return path


def write_hdf5(path: Path, arrays: Dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
    return path


def write_images(folder: Path, images: Sequence[np.ndarray], labels: Sequence[int],
                 suffix: str = ".png", names: Sequence[str] = ()) -> Path:
    """Image files (CHW arrays written as BGR) and an ImageData list ``list.txt`` naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, label) in enumerate(zip(images, labels)):
        name = names[i] if names else "img %d%s" % (i, suffix)
        assert cv2.imwrite(str(folder / name), image.transpose(1, 2, 0))
        lines.append("%s %d" % (name, label))
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def photo_patches(count: int, side: int, seed: int = 0) -> np.ndarray:
    """``count`` side x side BGR patches (C x H x W uint8) cut at random from Caffe's example photos."""
    photos = [cv2.imread(str(IMAGES / name), cv2.IMREAD_COLOR) for name in ("cat.jpg", "fish-bike.jpg")]
    rng = np.random.default_rng(seed)
    patches = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y = rng.integers(0, photo.shape[0] - side)
        x = rng.integers(0, photo.shape[1] - side)
        patches.append(photo[y:y + side, x:x + side].transpose(2, 0, 1))
    return np.stack(patches)


# -- servers and nets ----------------------------------------------------------------------

@contextmanager
def servers_for(nets: Dict[str, tuple], workdir: Path) -> Iterator[Dict[str, str]]:
    """One zfeed server per ``name: (net, phase[, extra arguments])``, serving the net
    ``--from-prototxt`` for that phase; yields their endpoints by name. Every server has
    logged that it serves before this yields; all are killed on exit."""
    with ExitStack() as stack:
        endpoints, started = {}, []
        for name, (net, phase, *extra) in nets.items():
            endpoint = "tcp://127.0.0.1:%d" % free_port()
            args = ["--from-prototxt", str(net), "--phase", phase, "--working-dir", str(workdir),
                    "--bind", endpoint, "--workers", "1", "--seed", "3", *(extra[0] if extra else ())]
            started.append(stack.enter_context(ServerProcess(args, workdir / ("%s-%s.log" % (name, phase)))))
            endpoints[name] = endpoint
        for server in started:
            server.wait_ready()
        yield endpoints


def rewrite(net: Path, out: Path, **endpoints: str) -> Path:
    """``rewrite_prototxt NET OUT --train/--test ENDPOINT``, checked."""
    argv = [str(net), str(out), "--timeout-s", "30"]
    for phase, endpoint in endpoints.items():
        argv += ["--%s" % phase, endpoint]
    assert rewrite_prototxt.main(argv) == 0
    return out


def run_nets(spec_path: Path, nets: List[dict], cwd: Path = None, timeout: float = 240) -> None:
    """Run ``nets`` (see tests/caffe_scripts/run_nets.py) in one Caffe process."""
    spec_path.write_text(json.dumps({"cwd": str(cwd) if cwd else None, "nets": nets}))
    run_caffe_script("run_nets", spec_path, timeout=timeout)
