"""BVLC's own nets move to zfeed in one line, and train in real Caffe.

LeNet (``lenet_train_test.prototxt``), CaffeNet (``caffenet_train_val.prototxt``)
and the HDF5 classification example, unchanged from BVLC Caffe, with small
stand-in datasets at the relative paths they name (a Caffe root laid out in
a temporary folder): each phase's data layer is served by ``python -m server
--from-prototxt NET --phase PHASE``, the nets are rewritten by
``rewrite_prototxt``, and real Caffe

- runs the original and the rewritten net in the TEST phase with the same
  weights: data, labels, loss and accuracy are bit-identical (CaffeNet:
  the served rows of the data blob, see below);
- trains the rewritten nets with BVLC's own solvers (patched only for the
  net path, CPU mode and a short test) for a few iterations.

CaffeNet's batches of 256 and 50 would take minutes on a CPU, so its
servers override the batch size (``--batch-size``), which the ZmqDataLayer
follows; everything else comes from the prototxt as it is.
"""

import json
import re

import cv2
import numpy as np
import pytest

from caffe_runner import run_caffe_script
from parity import PROTOTXT, datums, photo_patches, rewrite, run_nets, servers_for, write_hdf5, write_lmdb_values
from server.caffe_proto import write_mean_binaryproto

pytestmark = pytest.mark.caffe

LENET_TRAIN, LENET_TEST = 320, 100
LENET_ITERATIONS = 40
CAFFENET_BATCH = {"train": 4, "test": 2}
CAFFENET_ITERATIONS = 2
HDF5_ITERATIONS = 30


def digit_images(count, side, seed):
    """scikit-learn's 8x8 digits, upscaled to side x side uint8 (1 channel), and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))[:count]
    images = [cv2.resize(np.rint(image * (255 / 16)).astype(np.uint8), (side, side),
                         interpolation=cv2.INTER_LINEAR) for image in digits.images[order]]
    return np.stack(images)[:, np.newaxis], digits.target[order]


def build_caffe_root(root):
    """Stand-in datasets where the three nets look for theirs, relative to a Caffe root."""
    mnist = root / "examples" / "mnist"
    mnist.mkdir(parents=True)
    images, labels = digit_images(LENET_TRAIN + LENET_TEST, 28, seed=0)
    write_lmdb_values(mnist / "mnist_train_lmdb", datums(images[:LENET_TRAIN], labels[:LENET_TRAIN]))
    write_lmdb_values(mnist / "mnist_test_lmdb", datums(images[LENET_TRAIN:], labels[LENET_TRAIN:]))

    imagenet = root / "examples" / "imagenet"
    imagenet.mkdir(parents=True)
    photos = photo_patches(12, 256, seed=1)
    labels = np.arange(12) * 83 % 1000  # ImageNet labels: below the 1000 outputs of fc8
    write_lmdb_values(imagenet / "ilsvrc12_train_lmdb", datums(photos[:8], labels[:8]))
    write_lmdb_values(imagenet / "ilsvrc12_val_lmdb", datums(photos[8:], labels[8:]))
    (root / "data" / "ilsvrc12").mkdir(parents=True)
    (root / "models" / "bvlc_reference_caffenet").mkdir(parents=True)  # the solver's snapshot_prefix
    write_mean_binaryproto(str(root / "data" / "ilsvrc12" / "imagenet_mean.binaryproto"),
                           photos[:8].mean(axis=0).astype(np.float32))

    hdf5 = root / "examples" / "hdf5_classification" / "data"
    hdf5.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for split, count in (("train", 200), ("test", 50)):
        points = rng.normal(0, 1, (count, 4)).astype(np.float32)
        write_hdf5(hdf5 / ("%s.h5" % split), {"data": points,
                                              "label": (points[:, 0] + points[:, 1] > 0).astype(np.float32)})
        (hdf5 / ("%s.txt" % split)).write_text("examples/hdf5_classification/data/%s.h5\n" % split)


def patch_solver(text, net, test_iter=1):
    """BVLC's solver, for a short CPU run of ``net``: only the fields that must change."""
    replacements = {"net": '"%s"' % net, "test_iter": str(test_iter), "test_interval": "1000",
                    "solver_mode": "CPU", "display": "0"}
    for field, value in replacements.items():
        text, count = re.subn(r"(?m)^%s:.*$" % field, "%s: %s" % (field, value), text)
        assert count == 1, field
    return text + "random_seed: 1\n"


HDF5_SOLVER = """net: "%s"
test_iter: 1
test_interval: 1000
base_lr: 0.01
lr_policy: "fixed"
momentum: 0.9
solver_mode: CPU
random_seed: 1
"""


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("caffe_root")
    build_caffe_root(root)
    nets = {"lenet": PROTOTXT / "lenet_train_test.prototxt", "caffenet": PROTOTXT / "caffenet_train_val.prototxt",
            "hdf5": PROTOTXT / "hdf5_classification_train_val.prototxt"}
    served = {"%s-%s" % (name, phase): (net, phase, ["--batch-size", str(CAFFENET_BATCH[phase])]
                                          if name == "caffenet" else [])
              for name, net in nets.items() for phase in ("train", "test")}
    results = {"root": root}
    with servers_for(served, root) as endpoints:
        rewritten = {name: rewrite(net, root / ("%s_zfeed.prototxt" % name), train=endpoints[name + "-train"],
                                   test=endpoints[name + "-test"]) for name, net in nets.items()}
        jobs = []
        for name, blobs in (("lenet", ["data", "label", "loss", "accuracy"]),
                            ("hdf5", ["data", "label", "loss", "accuracy"]), ("caffenet", ["data", "label"])):
            weights = str(root / ("%s.caffemodel" % name))
            jobs.append(dict(net=str(nets[name]), phase="test", iterations=1, blobs=blobs, save_weights=weights,
                             out=str(root / ("%s-caffe.npz" % name))))
            jobs.append(dict(net=str(rewritten[name]), phase="test", iterations=1, blobs=blobs, weights=weights,
                             out=str(root / ("%s-zfeed.npz" % name))))
        run_nets(root / "nets.json", jobs, cwd=root)
        solvers = {"lenet": patch_solver((PROTOTXT / "lenet_solver.prototxt").read_text(), rewritten["lenet"]),
                   "caffenet": patch_solver((PROTOTXT / "caffenet_solver.prototxt").read_text(),
                                            rewritten["caffenet"]),
                   "hdf5": HDF5_SOLVER % rewritten["hdf5"]}
        iterations = {"lenet": LENET_ITERATIONS, "caffenet": CAFFENET_ITERATIONS, "hdf5": HDF5_ITERATIONS}
        spec = {"cwd": str(root), "solvers": []}
        for name, text in solvers.items():
            (root / ("%s_solver.prototxt" % name)).write_text(text)
            spec["solvers"].append(dict(solver=str(root / ("%s_solver.prototxt" % name)),
                                        iterations=iterations[name], out=str(root / ("%s-solver.json" % name))))
        (root / "solvers.json").write_text(json.dumps(spec))
        run_caffe_script("run_solver", root / "solvers.json", timeout=240)
    for name in nets:
        results[name] = {"caffe": np.load(root / ("%s-caffe.npz" % name)),
                         "zfeed": np.load(root / ("%s-zfeed.npz" % name)),
                         "solver": json.loads((root / ("%s-solver.json" % name)).read_text()),
                         "rewritten": rewritten[name].read_text()}
    return results


@pytest.mark.parametrize("name", ["lenet", "hdf5"])
def test_rewritten_net_computes_what_the_original_computes(migrated, name):
    caffe, zfeed = migrated[name]["caffe"], migrated[name]["zfeed"]
    for blob in ("data", "label", "loss", "accuracy"):
        assert np.array_equal(zfeed[blob], caffe[blob]), blob


def test_caffenet_data_is_caffes_crop_of_the_mean_subtracted_images(migrated):
    caffe, zfeed = migrated["caffenet"]["caffe"], migrated["caffenet"]["zfeed"]
    served = CAFFENET_BATCH["test"]
    assert zfeed["data"].shape == (1, served, 3, 227, 227)
    assert caffe["data"].shape == (1, 50, 3, 227, 227)
    assert np.array_equal(zfeed["data"][0], caffe["data"][0, :served])
    assert np.array_equal(zfeed["label"][0], caffe["label"][0, :served])


@pytest.mark.parametrize("name", ["lenet", "hdf5"])
def test_rewritten_net_learns_with_bvlcs_solver(migrated, name):
    losses = migrated[name]["solver"]["train_loss"]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * losses[0], losses


def test_caffenet_trains_on_served_batches(migrated):
    result = migrated["caffenet"]["solver"]
    assert result["data_shape"] == [CAFFENET_BATCH["train"], 3, 227, 227]
    assert len(result["train_loss"]) == CAFFENET_ITERATIONS and all(np.isfinite(result["train_loss"]))
    assert set(result["test"]) == {"accuracy", "loss"}


def test_rewrite_keeps_names_tops_rules_and_every_other_line(migrated):
    original = (PROTOTXT / "caffenet_train_val.prototxt").read_text()
    rewritten = migrated["caffenet"]["rewritten"]
    assert rewritten.count('type: "Python"') == 2 and 'type: "Data"' not in rewritten
    assert rewritten.count('name: "data"') == original.count('name: "data"')
    assert rewritten.count("phase: TRAIN") == original.count("phase: TRAIN")
    tail = original[original.index('  name: "conv1"'):]
    assert rewritten.endswith(tail)  # the rest of the net, comments included, byte for byte
    assert "# mean pixel / channel-wise mean instead of mean image" not in rewritten  # was inside a data layer
    assert '"tops": ["data", "label"]' in rewritten
