"""The source formats beyond LMDB: LevelDB, HDF5, class folders, a user's Python dataset.

Readers are tested in process; each format is also served once by a real
server and received with BatchClient.
"""

import multiprocessing
import os

import cv2
import numpy as np
import pytest

from client_layer import BatchClient
from harness.datasets import random_images
from parity import datums, write_hdf5, write_leveldb
from harness.children import ServerProcess, free_port, run_server
from server.sources import Hdf5Source, LevelDbSource, PythonSource, SelectedArrays, SourceError, image_folder_source

pytestmark = pytest.mark.integration

N = 12


def serve(tmp_path, args, batches):
    port = free_port()
    with ServerProcess(["--bind", "tcp://127.0.0.1:%d" % port, "--workers", "2", "--phase", "test", *args],
                       tmp_path / "server.log") as server:
        with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=20) as client:
            received = [client.receive() for _ in range(batches)]
            arrays = {name: np.concatenate([b.array(name) for b in received]) for name in received[0].names}
        assert server.stop() == 0, server.log
    return arrays


# -- LevelDB --------------------------------------------------------------------------------

@pytest.fixture
def leveldb(tmp_path):
    images = random_images(N, (3, 5, 6))
    return write_leveldb(tmp_path / "ldb", datums(images, range(N))), images


def _state(path):
    return sorted((name, os.stat(os.path.join(path, name)).st_size, os.stat(os.path.join(path, name)).st_mtime_ns)
                  for name in os.listdir(path))


def _read_all(source, connection):
    source.open()
    try:
        connection.send([source.read(i)["data"].copy() for i in range(len(source))])
    finally:
        source.close()


def test_leveldb_is_read_by_many_processes_at_once_and_never_touched(leveldb):
    path, images = leveldb
    before = _state(path)
    source = LevelDbSource(str(path))
    source.open()  # a handle held here, as a worker holds one, while two more processes read
    context = multiprocessing.get_context("fork")
    pipes = [context.Pipe() for _ in range(2)]
    readers = [context.Process(target=_read_all, args=(source, theirs)) for _, theirs in pipes]
    for reader in readers:
        reader.start()
    try:
        for ours, _ in pipes:
            assert ours.poll(20)
            assert np.array_equal(np.stack(ours.recv()), images)
    finally:
        for reader in readers:
            reader.join(10)
        source.close()
    assert [reader.exitcode for reader in readers] == [0, 0]
    assert _state(path) == before  # no LOCK, LOG or new MANIFEST in the database itself
    assert source.describe(3) == "LevelDB %s key '00000003'" % path


def test_leveldb_errors_name_the_path(tmp_path):
    with pytest.raises(SourceError, match="LevelDB %s does not exist" % (tmp_path / "x")):
        LevelDbSource(str(tmp_path / "x"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="is not a LevelDB"):
        LevelDbSource(str(tmp_path / "empty"))


def test_leveldb_served_by_a_real_server(tmp_path, leveldb):
    path, images = leveldb
    arrays = serve(tmp_path, ["--source", "leveldb:%s" % path, "--batch-size", "4", "--epochs", "1"], 3)
    assert np.array_equal(arrays["data"], images.astype(np.float32))
    assert arrays["label"].tolist() == list(range(N))


# -- HDF5 -----------------------------------------------------------------------------------

def hdf5_files(folder, rows=(3, 5, 4)):
    paths, start = [], 0
    for i, count in enumerate(rows):
        paths.append(write_hdf5(folder / ("f%d.h5" % i), {
            "data": np.arange(start * 6, (start + count) * 6, dtype=np.float64).reshape(count, 2, 3),
            "label": np.arange(start, start + count, dtype=np.int64),
            "multi": np.full((count, 3), i, np.uint8)}))
        start += count
    (folder / "list.txt").write_text("\n".join(p.name for p in paths[:2]) + "  " + paths[2].name + "\n")
    return folder / "list.txt"


def test_hdf5_rows_come_file_after_file_with_stored_shapes(tmp_path):
    source = Hdf5Source(str(hdf5_files(tmp_path)), ("label", "data"), base_dir=str(tmp_path))
    source.open()
    try:
        assert len(source) == 12
        sample = source.read(4)
        assert list(sample) == ["label", "data"]
        assert sample["label"] == 4 and sample["data"].shape == (2, 3) and sample["data"][0, 0] == 24
        assert source.describe(8) == "HDF5 file %s row 0" % (tmp_path / "f2.h5")
    finally:
        source.close()


def test_hdf5_shuffled_order_permutes_files_and_rows_within_them(tmp_path):
    source = Hdf5Source(str(hdf5_files(tmp_path)), ("label",), base_dir=str(tmp_path))
    rng = np.random.default_rng(0)
    orders = [source.shuffled_order(rng) for _ in range(20)]
    firsts = set()
    for order in orders:
        assert sorted(order) == list(range(12))
        files = [source.locate(int(i))[0] for i in order]
        assert [f for i, f in enumerate(files) if i == 0 or f != files[i - 1]] in (
            [0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0])  # each file's rows together
        firsts.add(files[0])
    assert firsts == {0, 1, 2}
    assert any(list(order) != sorted(order) for order in orders)


@pytest.mark.parametrize("arrays, datasets, message", [
    ({"data": np.zeros((2, 3)), "label": np.zeros(3)}, ("data", "label"),
     "datasets data, label have different row counts [2, 3]"),
    ({"data": np.array(b"text")}, ("data",), "holds |S4; Caffe reads integer and float datasets only"),
    ({"data": np.float32(1)}, ("data",), "is a scalar; Caffe needs at least one axis"),
    ({"data": np.zeros((0, 3))}, ("data",), "has no rows"),
    ({"data": np.zeros((2, 3))}, ("data", "label"), "has no dataset 'label' (it has 'data')"),
])
def test_bad_hdf5_files_are_refused_naming_file_and_dataset(tmp_path, arrays, datasets, message):
    write_hdf5(tmp_path / "bad.h5", arrays)
    (tmp_path / "list.txt").write_text("bad.h5\n")
    with pytest.raises(SourceError) as refused:
        Hdf5Source(str(tmp_path / "list.txt"), datasets, base_dir=str(tmp_path))
    assert message in str(refused.value) and str(tmp_path / "bad.h5") in str(refused.value)


def test_hdf5_rows_must_have_one_shape_in_every_file_and_files_must_exist(tmp_path):
    write_hdf5(tmp_path / "a.h5", {"data": np.zeros((2, 3))})
    write_hdf5(tmp_path / "b.h5", {"data": np.zeros((2, 4))})
    (tmp_path / "list.txt").write_text("a.h5 b.h5 c.h5")
    with pytest.raises(SourceError, match=r"b.h5 dataset 'data' has rows of shape \(4,\), but .*a.h5 has \(3,\)"):
        Hdf5Source(str(tmp_path / "list.txt"), ("data",), base_dir=str(tmp_path))
    (tmp_path / "list.txt").write_text("a.h5 c.h5")
    with pytest.raises(SourceError, match="cannot open HDF5 file %s/c.h5 \\(listed in" % tmp_path):
        Hdf5Source(str(tmp_path / "list.txt"), ("data",), base_dir=str(tmp_path))
    (tmp_path / "list.txt").write_text("\n")
    with pytest.raises(SourceError, match="names no files"):
        Hdf5Source(str(tmp_path / "list.txt"), ("data",))


def test_hdf5_served_by_a_real_server(tmp_path):
    hdf5_files(tmp_path)
    (tmp_path / "abs.txt").write_text(" ".join(str(tmp_path / ("f%d.h5" % i)) for i in range(3)))
    arrays = serve(tmp_path, ["--source", "hdf5:%s" % (tmp_path / "abs.txt"), "--datasets", "multi,label",
                              "--batch-size", "4", "--epochs", "1"], 3)
    assert list(arrays) == ["multi", "label"]
    assert arrays["label"].tolist() == list(range(12))
    assert arrays["multi"].shape == (12, 3) and arrays["multi"][-1].tolist() == [2, 2, 2]


# -- image folders, Python datasets, array selection -------------------------------------------

def test_class_folders_give_sorted_labels_and_resize(tmp_path):
    for label, name in enumerate(["ant", "bee"]):
        (tmp_path / name).mkdir()
        for i in range(2):
            cv2.imwrite(str(tmp_path / name / ("%d.png" % i)), np.full((4 + i, 6, 3), 10 * label + i, np.uint8))
    source = image_folder_source(str(tmp_path), resize_hw=(3, 5))
    samples = [source.read(i) for i in range(len(source))]
    assert [float(s["label"]) for s in samples] == [0, 0, 1, 1]
    assert all(s["data"].shape == (3, 3, 5) for s in samples)
    assert source.describe(2) == "image %s" % (tmp_path / "bee" / "0.png")
    with pytest.raises(SourceError, match="has no class sub-folders with images"):
        image_folder_source(str(tmp_path / "ant"))


DATASET = '''
import numpy as np

class Squares:
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return {"data": np.full((1, 4, 4), i, np.uint8), "label": i, "extra": np.arange(3) * i}

def make():
    return Squares()

def broken():
    raise RuntimeError("no data here")
'''


def test_python_dataset_by_module_or_file(tmp_path, monkeypatch):
    (tmp_path / "user_data.py").write_text(DATASET)
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec in ("user_data:make", "%s:make" % (tmp_path / "user_data.py")):
        source = PythonSource(spec)
        assert len(source) == 5 and source.read(2)["extra"].tolist() == [0, 2, 4]
    with pytest.raises(SourceError, match="broken\\(\\) failed .*RuntimeError: no data here"):
        PythonSource("user_data:broken")
    with pytest.raises(SourceError, match="cannot load nothing from user_data"):
        PythonSource("user_data:nothing")
    with pytest.raises(SourceError, match="expected python:MODULE:FACTORY"):
        PythonSource("user_data")


def test_python_dataset_served_with_a_transform(tmp_path):
    (tmp_path / "user_data.py").write_text(DATASET)
    arrays = serve(tmp_path, ["--source", "python:%s:make" % (tmp_path / "user_data.py"), "--crop-size", "2",
                              "--scale", "2", "--batch-size", "5", "--epochs", "1"], 1)
    assert list(arrays) == ["data", "label", "extra"]
    assert arrays["data"].shape == (5, 1, 2, 2) and arrays["data"][3].ravel().tolist() == [6.0] * 4
    assert arrays["extra"][4].tolist() == [0, 4, 8]


def test_selected_arrays_keep_only_the_named_ones():
    source = SelectedArrays(_Arrays(), ["b"])
    assert source.read(0) == {"b": 2} and len(source) == 1 and source.describe(0) == "item 0"
    with pytest.raises(ValueError, match="it has no 'c' array"):
        SelectedArrays(_Arrays(), ["c"]).read(0)


class _Arrays:
    def __len__(self):
        return 1

    def read(self, index):
        return {"a": 1, "b": 2}

    def describe(self, index):
        return "item %d" % index


@pytest.mark.parametrize("args, message", [
    (["--source", "lmdb:x", "--new-height", "4"], "give both a height and a width"),
    (["--source", "lmdb:x", "--new-height", "4", "--new-width", "4"], "apply to imagelist: and folder: sources only"),
    (["--source", "lmdb:x", "--datasets", "a"], "--datasets applies to hdf5: sources only"),
    (["--source", "hdf5:x", "--crop-size", "3", "--mirror"], "--crop-size, --mirror: an HDF5 source is served as"),
    (["--source", "python:nowhere_at_all:make"], "cannot load make from nowhere_at_all"),
])
def test_bad_source_options_are_refused_at_start_up(tmp_path, args, message):
    result = run_server(args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_transform_needs_an_image(tmp_path):
    (tmp_path / "flat.py").write_text("import numpy as np\n"
                                      "def make():\n    return [{'x': np.zeros(3)}]\n")
    result = run_server(["--source", "python:%s:make" % (tmp_path / "flat.py"), "--mean-value", "1"])
    assert result.returncode == 2
    assert "--crop-size/--mirror/--mean-file/--mean-value/--scale: the samples of python:" in result.stderr
    assert "have no C x H x W 'data' image to transform (they have x (3,))" in result.stderr
