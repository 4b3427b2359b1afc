"""Caffe's own data layers and zfeed, fed the same files, give the same blobs (real Caffe).

Every case is one Data, ImageData or HDF5Data layer, written as a Caffe user
writes it. zfeed serves it with ``--from-prototxt`` and the layer is swapped
for a ZmqDataLayer by ``rewrite_prototxt``; real Caffe runs both nets. All
servers run at once and all nets run in one Caffe process (``parity_runs``),
so the suite costs one Caffe start.

What "the same" means:
- TEST phase, lossless data (raw and float Datums, PNG, LevelDB, HDF5,
  resized PNG): bit-identical float32 blobs, batch after batch, across the
  end of the data set.
- JPEG: Caffe's wheel decodes with IJG libjpeg 9d, zfeed's OpenCV with
  libjpeg-turbo. Grayscale and 4:4:4 JPEGs decode (nearly) identically;
  4:2:0 ones differ at sharp colour edges, where libjpeg 9 upsamples chroma
  in the DCT domain and libjpeg-turbo with a triangle filter. Stated bound,
  in pixel levels of the decoded image: mean |difference| <= 1.5, 99.9% of
  values within 16, every value within 64 (measured on Caffe's example
  photos and patches of them: see docs/migration.md, "Parity with Caffe").
- TRAIN phase: random crops and flips cannot match draw for draw (different
  RNGs), so every output of either side must be one Caffe can produce (a
  crop, maybe mirrored, of Caffe's own uncropped transform of that sample),
  and crop offsets and flips must cover their whole range with uniform
  frequencies (a chi-square test).
- Shuffling: ImageData's order comes from Caffe's RNG, so both sides must
  give a new permutation of every image at each pass; HDF5Data's must
  permute the files and the rows within each file, keeping a file's rows
  together.
"""

import shutil

import numpy as np
import pytest

from harness.datasets import random_images, write_lmdb
from parity import (IMAGES, datums, photo_patches, rewrite, run_nets, servers_for, write_hdf5,
                    write_images, write_leveldb, write_lmdb_values)
from server.caffe_proto import write_mean_binaryproto

pytestmark = pytest.mark.caffe

N = 30
BATCH = 8
ITERATIONS = 5  # 40 samples: wraps past the end of the 30-sample sets, as Caffe does
JPEG_MEAN_BOUND = 1.5
JPEG_P999_BOUND = 16
JPEG_MAX_BOUND = 64

TRAIN_BATCH, TRAIN_ITERATIONS = 30, 20  # 600 samples: 20 per crop/flip outcome
CHI_SQUARE_LIMIT = 75.0  # 29 degrees of freedom: p ~ 1e-5, so a fair draw fails once in 1e5 runs

SHUFFLE_IMAGES, SHUFFLE_BATCH = 12, 4
HDF5_SHUFFLE_ROWS = (5, 7, 4)


def data_layer(source, transform="", param="", backend="backend: LMDB", tops=("data", "label"),
               batch=BATCH, phase="TEST"):
    return """layer { name: "data" type: "Data" %s include { phase: %s }
  transform_param { %s }
  data_param { source: "%s" batch_size: %d %s %s } }
""" % (" ".join('top: "%s"' % t for t in tops), phase, transform, source, batch, backend, param)


def image_data_layer(source, param, transform="", batch=BATCH):
    return """layer { name: "images" type: "ImageData" top: "data" top: "label" include { phase: TEST }
  transform_param { %s }
  image_data_param { source: "%s" batch_size: %d %s } }
""" % (transform, source, batch, param)


def hdf5_layer(source, tops, param="", batch=6):
    return """layer { name: "rows" type: "HDF5Data" %s include { phase: TEST }
  hdf5_data_param { source: "%s" batch_size: %d %s } }
""" % (" ".join('top: "%s"' % t for t in tops), source, batch, param)


HDF5_TOPS = ("data", "label", "multi", "pixels")
LOSSLESS = {
    "data-raw-crop-mean-file-scale": (data_layer("raw_lmdb", 'crop_size: 10 mean_file: "mean.binaryproto" scale: 0.5'),
                                      ("data", "label")),
    "data-raw-mean-values": (data_layer("raw_lmdb", "crop_size: 9 mean_value: 104 mean_value: 117 "
                                                    "mean_value: 123.5 scale: 0.017"), ("data", "label")),
    "data-raw-one-mean-value": (data_layer("raw_lmdb", "mean_value: 120 scale: 0.00390625"), ("data", "label")),
    "data-raw-one-top": (data_layer("raw_lmdb", "crop_size: 8", tops=("data",)), ("data",)),
    "data-float-datums": (data_layer("float_lmdb", "mean_value: 0.5 scale: 2"), ("data", "label")),
    "data-leveldb-default-backend": (data_layer("raw_leveldb", "crop_size: 10 mean_value: 100", backend=""),
                                     ("data", "label")),
    "data-png": (data_layer("png_lmdb", "crop_size: 10 mean_value: 10 mean_value: 20 mean_value: 30"),
                 ("data", "label")),
    "data-png-gray-force-color": (data_layer("gray_png_lmdb", "force_color: true"), ("data", "label")),
    "data-png-color-force-gray": (data_layer("png_lmdb", "force_gray: true mean_value: 128"), ("data", "label")),
    "data-png-force-encoded-color": (data_layer("gray_png_lmdb", "", param="force_encoded_color: true"),
                                     ("data", "label")),
    "imagedata-png-spaces-root-folder": (image_data_layer("images/list.txt", 'root_folder: "images/"',
                                                          "crop_size: 10 mean_value: 50"), ("data", "label")),
    "imagedata-png-gray": (image_data_layer("images/list.txt", 'root_folder: "images/" is_color: false',
                                            "mean_value: 127 scale: 0.1"), ("data", "label")),
    "imagedata-png-resize": (image_data_layer("sized/list.txt", 'root_folder: "sized/" new_height: 12 '
                                                                "new_width: 14", "crop_size: 11"), ("data", "label")),
    "hdf5-four-tops": (hdf5_layer("h5/list.txt", HDF5_TOPS), HDF5_TOPS),
    "hdf5-four-tops-sent-in-place": (hdf5_layer("h5/list.txt", HDF5_TOPS), HDF5_TOPS),
}
# One batch a message: every batch of consecutive rows is sent from the server's held rows
# (NOTE [ Rows sent in place ]), the one that wraps around the 16 rows is filled by a worker.
SERVER_ARGUMENTS = {"hdf5-four-tops-sent-in-place": ("--max-batches-per-message", "1")}
JPEG = {
    "data-jpeg": (data_layer("jpeg_lmdb", "crop_size: 28 mean_value: 104 mean_value: 117 mean_value: 123"),
                  ("data", "label")),
    "imagedata-jpeg-photos-resize": (image_data_layer("photos/list.txt", 'root_folder: "photos/" new_height: 96 '
                                                      "new_width: 128", batch=2), ("data", "label")),
}
TRAIN_CROPS = data_layer("raw_lmdb", 'crop_size: 10 mirror: true mean_file: "mean.binaryproto" scale: 0.5',
                         batch=TRAIN_BATCH, phase="TRAIN")
UNCROPPED = data_layer("raw_lmdb", 'mean_file: "mean.binaryproto" scale: 0.5', batch=N)
SHUFFLED = {
    "imagedata-shuffle": (image_data_layer("shuffle/list.txt", 'root_folder: "shuffle/" shuffle: true',
                                           batch=SHUFFLE_BATCH), ("data", "label")),
    "hdf5-shuffle": (hdf5_layer("h5/list.txt", ("label",), "shuffle: true", batch=SHUFFLE_BATCH), ("label",)),
}
SHUFFLE_ITERATIONS = {"imagedata-shuffle": 3 * SHUFFLE_IMAGES // SHUFFLE_BATCH,
                      "hdf5-shuffle": 3 * sum(HDF5_SHUFFLE_ROWS) // SHUFFLE_BATCH}


def build_datasets(root):
    images = random_images(N, (3, 12, 14), seed=7)
    labels = [i % 10 for i in range(N)]
    write_lmdb(root / "raw_lmdb", images, labels)
    write_leveldb(root / "raw_leveldb", datums(images, labels))
    floats = np.random.default_rng(2).normal(0, 50, (N, 3, 8, 9)).astype(np.float32)
    write_lmdb_values(root / "float_lmdb", datums(floats, labels))
    write_lmdb_values(root / "png_lmdb", datums(images, labels, ".png"))
    write_lmdb_values(root / "gray_png_lmdb", datums(random_images(N, (1, 12, 14), seed=8), labels, ".png"))
    write_lmdb_values(root / "jpeg_lmdb", datums(photo_patches(N, 32), labels, ".jpg", quality=90))
    mean = np.random.default_rng(1).uniform(0, 255, (3, 12, 14)).astype(np.float32)
    write_mean_binaryproto(str(root / "mean.binaryproto"), mean)
    write_images(root / "images", images, labels)  # "img 0.png", ...: names with spaces
    rng = np.random.default_rng(4)
    sized = [rng.integers(0, 256, (3, rng.integers(8, 20), rng.integers(8, 20)), dtype=np.uint8) for _ in range(N)]
    write_images(root / "sized", sized, labels, names=["s%d.png" % i for i in range(N)])
    (root / "photos").mkdir()
    for name in ("cat.jpg", "fish-bike.jpg", "cat_gray.jpg"):
        shutil.copy(IMAGES / name, root / "photos" / name)
    (root / "photos" / "list.txt").write_text("cat.jpg 0\nfish-bike.jpg 1\ncat_gray.jpg 2\n")
    write_images(root / "shuffle", random_images(SHUFFLE_IMAGES, (3, 6, 7), seed=9), range(SHUFFLE_IMAGES),
                 names=["%d.png" % i for i in range(SHUFFLE_IMAGES)])
    (root / "h5").mkdir()
    starts = np.cumsum((0,) + HDF5_SHUFFLE_ROWS)
    for name, start, rows in zip("abc", starts, HDF5_SHUFFLE_ROWS):
        rng = np.random.default_rng(start)
        write_hdf5(root / "h5" / ("%s.h5" % name), {
            "data": rng.normal(0, 1, (rows, 2, 3, 4)),  # float64, as numpy makes it
            "label": np.arange(start, start + rows, dtype=np.int32),  # the global row number
            "multi": rng.uniform(0, 1, (rows, 4)).astype(np.float32),
            "pixels": rng.integers(0, 256, (rows, 6), dtype=np.uint8)})
    (root / "h5" / "list.txt").write_text("h5/a.h5\nh5/b.h5 h5/c.h5\n")


@pytest.fixture(scope="module")
def parity_runs(tmp_path_factory):
    """{case: (caffe's blobs, zfeed's blobs)} for every case, plus "uncropped" (Caffe only)."""
    root = tmp_path_factory.mktemp("parity")
    build_datasets(root)
    cases = dict(LOSSLESS, **JPEG, **SHUFFLED)
    phases = {name: "test" for name in cases}
    cases["train-crops"], phases["train-crops"] = (TRAIN_CROPS, ("data", "label")), "train"
    nets = {}
    for name, (layer, _) in cases.items():
        nets[name] = (root / ("%s.prototxt" % name), phases[name], SERVER_ARGUMENTS.get(name, ()))
        nets[name][0].write_text('name: "%s"\n%s' % (name, layer))
    (root / "uncropped.prototxt").write_text(UNCROPPED)
    jobs = [dict(net=str(root / "uncropped.prototxt"), phase="test", iterations=1,
                 out=str(root / "uncropped-caffe.npz"), blobs=["data"])]
    with servers_for(nets, root) as endpoints:
        for name, (net, phase, _) in nets.items():
            rewritten = rewrite(net, root / ("%s-zfeed.prototxt" % name), **{phase: endpoints[name]})
            iterations = (TRAIN_ITERATIONS if phase == "train" else SHUFFLE_ITERATIONS.get(name, ITERATIONS))
            for side, path in (("caffe", net), ("zfeed", rewritten)):
                jobs.append(dict(net=str(path), phase=phase, iterations=iterations, blobs=list(cases[name][1]),
                                 out=str(root / ("%s-%s.npz" % (name, side)))))
        run_nets(root / "nets.json", jobs, cwd=root)
    runs = {name: (np.load(root / ("%s-caffe.npz" % name)), np.load(root / ("%s-zfeed.npz" % name)))
            for name in cases}
    runs["uncropped"] = (np.load(root / "uncropped-caffe.npz"), None)
    runs["in-place-server-log"] = (root / "hdf5-four-tops-sent-in-place-test.log").read_text()
    return runs


@pytest.mark.parametrize("case", sorted(LOSSLESS))
def test_lossless_blobs_are_bit_identical(parity_runs, case):
    caffe, zfeed = parity_runs[case]
    for top in LOSSLESS[case][1]:
        assert zfeed[top].shape == caffe[top].shape, top
        assert zfeed[top].dtype == caffe[top].dtype == np.float32
        assert np.array_equal(zfeed[top], caffe[top]), top


def test_hdf5_rows_were_sent_in_place(parity_runs):
    assert "holding the rows of all 16 samples in memory" in parity_runs["in-place-server-log"]


def test_channel_options_give_the_channels_caffe_gives(parity_runs):
    assert parity_runs["data-png-gray-force-color"][0]["data"].shape[2] == 3
    assert parity_runs["data-png-color-force-gray"][0]["data"].shape[2] == 1
    assert parity_runs["data-png-force-encoded-color"][0]["data"].shape[2] == 1  # Caffe ignores it
    assert parity_runs["imagedata-png-gray"][0]["data"].shape[2] == 1
    assert parity_runs["hdf5-four-tops"][0]["multi"].shape[1:] == (6, 4)


@pytest.mark.parametrize("case", sorted(JPEG))
def test_jpeg_blobs_are_within_the_stated_bound(parity_runs, case):
    caffe, zfeed = parity_runs[case]
    assert zfeed["data"].shape == caffe["data"].shape
    assert np.array_equal(zfeed["label"], caffe["label"])
    difference = np.abs(zfeed["data"].astype(np.float64) - caffe["data"])
    p999 = np.percentile(difference, 99.9)
    print("%s: mean |difference| %.3f, 99.9th percentile %.0f, max %.0f"
          % (case, difference.mean(), p999, difference.max()))
    assert difference.mean() <= JPEG_MEAN_BOUND
    assert p999 <= JPEG_P999_BOUND
    assert difference.max() <= JPEG_MAX_BOUND


def crop_outcomes(full, crop):
    """Every output Caffe can make from the uncropped transforms ``full`` (N x C x H x W):
    an array (offsets*2, N, C, crop, crop) and the (h_off, w_off, mirror) of each."""
    height, width = full.shape[2:]
    outcomes, keys = [], []
    for h in range(height - crop + 1):
        for w in range(width - crop + 1):
            window = full[:, :, h:h + crop, w:w + crop]
            outcomes += [window, window[:, :, :, ::-1]]
            keys += [(h, w, False), (h, w, True)]
    return np.stack(outcomes), keys


def identify(outputs, outcomes):
    """For each output row (sample i = row mod N), the index of the outcome it equals (or -1)."""
    found = []
    for row, output in enumerate(outputs):
        matches = np.flatnonzero([np.array_equal(output, o) for o in outcomes[:, row % N]])
        found.append(matches[0] if len(matches) == 1 else -1)
    return np.asarray(found)


@pytest.mark.parametrize("side", [0, 1], ids=["caffe", "zfeed"])
def test_train_phase_crops_and_flips_are_caffes_with_uniform_frequencies(parity_runs, side):
    outputs = parity_runs["train-crops"][side]["data"].reshape(-1, 3, 10, 10)
    full = parity_runs["uncropped"][0]["data"][0]
    outcomes, keys = crop_outcomes(full, 10)
    found = identify(outputs, outcomes)
    assert (found >= 0).all(), "rows %s are no crop Caffe can make" % np.flatnonzero(found < 0)[:10]
    counts = np.bincount(found, minlength=len(keys))
    expected = len(found) / len(keys)
    chi_square = ((counts - expected) ** 2 / expected).sum()
    assert counts.min() > 0, "outcomes never drawn: %s" % [keys[i] for i in np.flatnonzero(counts == 0)]
    assert chi_square < CHI_SQUARE_LIMIT, (chi_square, counts)
    labels = parity_runs["train-crops"][side]["label"].ravel()
    assert labels.tolist() == [i % N % 10 for i in range(len(labels))]  # Data layers read in DB order


@pytest.mark.parametrize("side", [0, 1], ids=["caffe", "zfeed"])
def test_imagedata_shuffle_gives_a_new_permutation_every_pass(parity_runs, side):
    labels = parity_runs["imagedata-shuffle"][side]["label"].ravel().astype(int)
    passes = labels.reshape(3, SHUFFLE_IMAGES)
    for order in passes:
        assert sorted(order) == list(range(SHUFFLE_IMAGES))
    assert len({tuple(order) for order in passes} | {tuple(range(SHUFFLE_IMAGES))}) == 4


def file_blocks(order):
    """Split one pass of global row numbers into runs by file; None when a file's rows are split."""
    starts = np.cumsum((0,) + HDF5_SHUFFLE_ROWS)
    file_of = np.searchsorted(starts, order, side="right") - 1
    blocks, position = [], 0
    while position < len(order):
        file_number = file_of[position]
        rows = HDF5_SHUFFLE_ROWS[file_number]
        block = order[position:position + rows]
        if not (file_of[position:position + rows] == file_number).all():
            return None
        blocks.append((file_number, tuple(block)))
        position += rows
    return blocks


@pytest.mark.parametrize("side", [0, 1], ids=["caffe", "zfeed"])
def test_hdf5_shuffle_permutes_files_and_rows_within_each_file(parity_runs, side):
    order = parity_runs["hdf5-shuffle"][side]["label"].ravel().astype(int)
    total = sum(HDF5_SHUFFLE_ROWS)
    passes = [file_blocks(order[p * total:(p + 1) * total]) for p in range(3)]
    assert all(blocks is not None for blocks in passes), "a file's rows are split within a pass"
    for blocks in passes:
        assert sorted(f for f, _ in blocks) == [0, 1, 2]
        starts = np.cumsum((0,) + HDF5_SHUFFLE_ROWS)
        for file_number, rows in blocks:
            assert sorted(rows) == list(range(starts[file_number], starts[file_number + 1]))
    row_orders = [rows for blocks in passes for _, rows in blocks]
    assert any(list(rows) != sorted(rows) for rows in row_orders)  # rows really are shuffled
