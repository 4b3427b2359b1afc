"""Reading and transforming a batch at a time: the same bits as sample by sample, and bad
records left to the per-sample path instead of being mis-parsed."""

import os

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.batch_layout import BatchLayout, RowWriter
from server.caffe_proto import Datum, encoded_datum, image_to_datum
from server.sources import Hdf5Source, hdf5
from server.sources.datum_db import datum_sample
from server.sources.raw_datums import parse_raw_datums
from server.transform import TransformParams

pytestmark = pytest.mark.unit


def raw_record(image, label, **fields):
    datum = image_to_datum(image, label)
    for name, value in fields.items():
        setattr(datum, name, value)
    return datum.SerializeToString()


def parsed(records):
    """{position: (image, label)} of what parse_raw_datums put in blocks, and the rest."""
    blocks, rest = parse_raw_datums(records)
    found = {}
    for block in blocks:
        for position, image, label in zip(block.positions.tolist(), block.images, block.labels.tolist()):
            found[position] = (image, label)
    return found, rest.tolist()


def test_raw_datums_of_several_shapes_and_labels_parse_as_protobuf_parses_them():
    rng = np.random.default_rng(3)
    labels = [0, 1, 127, 128, 300, 2**31 - 1, -1, -2**31]
    images = [rng.integers(0, 256, (3, 4, 5), np.uint8) if i % 3 else rng.integers(0, 256, (1, 6, 2), np.uint8)
              for i in range(len(labels))]
    records = [raw_record(image, label) for image, label in zip(images, labels)]
    found, rest = parsed(records)
    assert rest == [] and sorted(found) == list(range(len(records)))
    for position, record in enumerate(records):
        expected = datum_sample(record)
        image, label = found[position]
        assert np.array_equal(image, expected["data"]) and np.float32(label) == expected["label"]


def test_records_that_are_not_plain_raw_datums_are_left_to_the_per_sample_path():
    image = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    good = raw_record(image, 3)
    float_datum = Datum(channels=1, height=1, width=2, float_data=[1.5, 2.5], label=1).SerializeToString()
    records = [
        good,
        float_datum,
        encoded_datum(b"\xff\xd8 not really a jpeg", 2).SerializeToString(),
        good[:-3],  # truncated: its own length, no layout
        b"\x08" * len(good),  # garbage of the same length as a good record
        None,  # missing
        raw_record(image, 3, encoded=False),  # an explicit encoded: false is still raw
        good[:30] + b"\x00" + good[31:],  # a pixel changed: still a good record
        good,
    ]
    found, rest = parsed(records)
    assert rest == [1, 2, 3, 4, 5]
    assert sorted(found) == [0, 6, 7, 8]
    assert np.array_equal(found[7][0], datum_sample(records[7])["data"])


def test_a_field_numbered_0_is_left_to_protobuf_which_refuses_it():
    """Found by the property below: a record with a field 0 (not a protobuf field) was read as a
    raw Datum without a label."""
    good = raw_record(np.arange(60, dtype=np.uint8).reshape(3, 4, 5), 3)
    odd = good[:-2] + b"\x00\x07" + good[-2:]
    assert parsed([odd]) == ({}, [0])
    with pytest.raises(Exception, match="Wire format was corrupt"):
        datum_sample(odd)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_mutated_record_is_parsed_exactly_as_protobuf_would_or_left_alone(data):
    image = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    template = raw_record(image, data.draw(st.integers(-2**31, 2**31 - 1)))
    record = bytearray(data.draw(st.sampled_from([template, raw_record(image, 5)])))
    for _ in range(data.draw(st.integers(1, 4))):
        record[data.draw(st.integers(0, len(record) - 1))] = data.draw(st.integers(0, 255))
    records = [template, bytes(record)]
    found, rest = parsed(records)
    assert 0 in found
    if 1 in found:  # then it must be a raw Datum that protobuf reads the same way
        expected = datum_sample(bytes(record))
        assert np.array_equal(found[1][0], expected["data"]) and np.float32(found[1][1]) == expected["label"]
    else:
        assert rest == [1]


TRANSFORMS = [
    ("uint8 crops, many windows", TransformParams(phase="train", crop_size=3, mirror=True), True, 40),
    ("uint8 crops, few windows", TransformParams(phase="train", crop_size=5, mirror=True), True, 40),
    ("uint8 centre crops", TransformParams(phase="test", crop_size=4), True, 9),
    ("uint8, no crop, mirror", TransformParams(phase="train", mirror=True), True, 9),
    ("uint8, no crop, no mirror", TransformParams(phase="train", scale=1 / 256), True, 9),
    ("float, mean file, scale", TransformParams(phase="train", crop_size=4, mirror=True, scale=0.017,
                                                mean=np.random.default_rng(1).random((3, 6, 7), np.float32) * 255),
     False, 40),
    ("float, mean values", TransformParams(phase="test", crop_size=4, scale=0.5,
                                           mean=np.float32([104, 117, 123]).reshape(3, 1, 1)), False, 9),
    ("float, scale only", TransformParams(phase="train", scale=1 / 256), False, 9),
]


@pytest.mark.parametrize("name, transform, pixels_on_wire, count", TRANSFORMS, ids=[t[0] for t in TRANSFORMS])
def test_a_block_is_written_bit_for_bit_as_sample_by_sample_writes(name, transform, pixels_on_wire, count):
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, (count, 3, 6 if transform.crop_size != 5 else 5, 7), np.uint8)
    labels = rng.integers(0, 1000, count).astype(np.float32)
    layout = BatchLayout.from_sample({"data": images[0], "label": labels[0]}, transform, pixels_on_wire)
    assert layout.pixels_on_wire == pixels_on_wire
    draws = rng.random((count, 3))
    rows = rng.permutation(count + 3)[:count]  # rows in any order, some rows left unwritten
    by_sample, by_block = (layout.zeros(count + 3)
                           for _ in range(2))
    writer = RowWriter(layout, by_sample, draws)
    for position in range(count):
        writer.write(position, int(rows[position]), {"data": images[position], "label": labels[position]})
    writer.finish()
    writer = RowWriter(layout, by_block, draws)
    half = count // 2  # two blocks, into scattered rows
    writer.write_block(np.arange(half), rows[:half], {"data": images[:half], "label": labels[:half]})
    writer.write_block(np.arange(half, count), rows[half:], {"data": images[half:], "label": labels[half:]})
    writer.finish()
    for array in by_sample:
        assert by_sample[array].tobytes() == by_block[array].tobytes(), array
    into_contiguous_rows = {name: np.zeros_like(array) for name, array in by_sample.items()}
    writer = RowWriter(layout, into_contiguous_rows, draws)
    writer.write_block(np.arange(half), np.arange(3, 3 + half), {"data": images[:half], "label": labels[:half]})
    assert into_contiguous_rows["data"][3:3 + half].tobytes() == by_sample["data"][rows[:half]].tobytes()
    # A block that selects its samples from a store (SampleBlock.rows: a worker's held rows, npz arrays).
    store_order = rng.permutation(count)
    store = {"data": images[store_order], "label": labels[store_order]}
    store_rows = np.argsort(store_order)  # sample i is store row store_rows[i]
    for targets in (rows, np.arange(3, 3 + count)):  # scattered rows, and consecutive ones (gathered in place)
        from_store = {name: np.zeros_like(array) for name, array in by_sample.items()}
        writer = RowWriter(layout, from_store, draws)
        writer.write_block(np.arange(half), targets[:half], store, store_rows[:half])
        writer.write_block(np.arange(half, count), targets[half:], store, store_rows[half:])
        for array in by_sample:
            assert from_store[array][targets].tobytes() == by_sample[array][rows].tobytes(), array


def test_a_block_that_does_not_fit_the_layout_writes_nothing():
    transform = TransformParams(phase="test", crop_size=4)
    images = np.ones((2, 3, 6, 6), np.uint8)
    layout = BatchLayout.from_sample({"data": images[0], "label": np.float32(0)}, transform, True)
    batch = layout.zeros(2)
    writer = RowWriter(layout, batch, np.zeros((2, 3)))
    for arrays, message in [({"data": np.ones((2, 1, 6, 6), np.uint8), "label": np.zeros(2)}, "images are"),
                            ({"data": np.ones((2, 3, 3, 3), np.uint8), "label": np.zeros(2)}, "larger than"),
                            ({"data": np.ones((2, 3, 6, 6), np.float32), "label": np.zeros(2)}, "float32 pixels"),
                            ({"data": images, "label": np.zeros((2, 2))}, "'label' is"),
                            ({"data": images}, "it has arrays")]:
        with pytest.raises(ValueError, match=message):
            writer.write_block(np.arange(2), np.arange(2), arrays)
    assert not batch["data"].any()


def write_h5(path, rows):
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(rows * 2 * 3, dtype=np.float32).reshape(rows, 2, 3)
        f["label"] = np.arange(rows, dtype=np.float64)


def test_hdf5_rows_are_read_in_blocks_as_they_are_read_one_by_one(tmp_path):
    for name, rows in (("a.h5", 5), ("b.h5", 7)):
        write_h5(tmp_path / name, rows)
    (tmp_path / "list.txt").write_text("a.h5\nb.h5\n")
    source = Hdf5Source(str(tmp_path / "list.txt"), ("data", "label"), str(tmp_path))
    source.open()
    indices = np.array([11, 0, 6, 4, 5, 2, 9])
    blocks, rest = source.read_many(indices)
    assert rest.tolist() == [] and sorted(p for b in blocks for p in b.positions.tolist()) == list(range(7))
    for block in blocks:
        for position, row in enumerate(block.positions.tolist()):
            one = source.read(int(indices[row]))
            assert all(np.array_equal(block.arrays[name][position], one[name]) for name in one)
    source.close()


@pytest.mark.parametrize("held_in_memory", [True, False])
def test_an_hdf5_file_truncated_while_served_is_reported_not_served_as_zeros(tmp_path, monkeypatch, held_in_memory):
    if not held_in_memory:
        monkeypatch.setattr(hdf5, "HELD_BYTES", 0)
    write_h5(tmp_path / "a.h5", 2000)
    write_h5(tmp_path / "b.h5", 2000)
    (tmp_path / "list.txt").write_text("a.h5\nb.h5\n")
    source = Hdf5Source(str(tmp_path / "list.txt"), ("data", "label"), str(tmp_path))
    source.open()
    source.read_many(np.arange(10))  # file a is open (and held, if it fits)
    os.truncate(tmp_path / "a.h5", 20000)
    os.truncate(tmp_path / "b.h5", 20000)
    blocks, rest = source.read_many(np.array([1, 2, 2001]))
    if held_in_memory:  # what was read before the truncation is still served, and it is the data
        assert [b.positions.tolist() for b in blocks] == [[0, 1]] and rest.tolist() == [2]
        assert blocks[0].arrays["label"].tolist() == [1, 2]
    else:
        assert blocks == [] and sorted(rest.tolist()) == [0, 1, 2]
        with pytest.raises(ValueError, match="a.h5 is truncated: dataset 'data' ends at byte"):
            source.read(3)
    with pytest.raises(OSError, match="truncated file"):  # never opened before: h5py refuses it
        source.read(2003)
    source.close()


def test_lmdb_keys_are_listed_as_far_as_records_are_read(tmp_path, monkeypatch):
    from harness.datasets import random_images, write_lmdb

    from server.sources import LmdbSource

    monkeypatch.setattr(LmdbSource, "KEYS_LISTED_AT_ONCE", 4)
    images = random_images(10, (1, 2, 3))
    source = LmdbSource(str(write_lmdb(tmp_path / "db", images, range(10))))
    assert len(source) == 10 and source._keys == []  # counted from the statistics, nothing listed
    assert source.describe(5).endswith("key '00000005'")  # outside a worker: its own transaction
    source.open()
    assert np.array_equal(source.read(2)["data"], images[2]) and len(source._keys) == 6
    blocks, rest = source.read_many(np.array([9, 0, 7]))
    assert rest.tolist() == [] and len(source._keys) == 10
    assert np.array_equal(blocks[0].arrays["data"], images[[9, 0, 7]])
    with pytest.raises(IndexError, match="record 10 of an LMDB of 10 records"):
        source.read(10)
    source.close()


def test_a_shuffled_lmdb_has_its_keys_listed_once_before_the_workers_fork(tmp_path, monkeypatch):
    from harness.datasets import random_images, write_lmdb

    from server.sources import LmdbSource

    monkeypatch.setattr(LmdbSource, "KEYS_LISTED_AT_ONCE", 4)
    path = str(write_lmdb(tmp_path / "db", random_images(10, (1, 2, 3)), range(10)))
    in_order = LmdbSource(path)
    in_order.before_fork(shuffled=False)
    assert in_order._keys == []  # key order: each process lists as far as it reads
    shuffled = LmdbSource(path)
    shuffled.before_fork(shuffled=True)
    assert shuffled._keys == [b"%08d" % i for i in range(10)]


def test_a_long_lmdb_listing_reads_the_file_ahead_once_where_it_reads_most_of_it(tmp_path, monkeypatch):
    """A shuffled pass lists every key: for values in the leaf pages the file is read ahead
    (once per process); a key-order read lists a few keys and reads nothing ahead; encoded
    images in overflow pages, or a file over half the free memory, are not read ahead."""
    from harness.datasets import random_images, write_lmdb

    from server.sources import LmdbSource, datum_db

    read_ahead = []
    monkeypatch.setattr(datum_db, "read_ahead", read_ahead.append)
    monkeypatch.setattr(LmdbSource, "KEYS_LISTED_AT_ONCE", 4)
    path = write_lmdb(tmp_path / "raw", random_images(40, (1, 4, 4)), range(40))
    source = LmdbSource(str(path))
    source.open()
    source.read(1)
    assert read_ahead == [] and len(source._keys) == 4  # key order: a short listing
    source.read_many(np.array([39, 2]))
    source.read_many(np.array([0]))
    assert read_ahead == [str(path / "data.mdb")]
    source.close()

    page = {"psize": 4096, "branch_pages": 1, "entries": 512}
    assert datum_db.listing_reads_most_of(dict(page, leaf_pages=320, overflow_pages=0), 1 << 20)
    assert not datum_db.listing_reads_most_of(dict(page, leaf_pages=5, overflow_pages=2540), 1 << 20)
    too_large = datum_db.available_memory_bytes() // 2 + 1
    assert not datum_db.listing_reads_most_of(dict(page, leaf_pages=320, overflow_pages=0), too_large)


def test_raw_datums_are_served_from_the_workers_memory_once_read(tmp_path):
    """NOTE [ Raw Datums in memory ]: a second read of a record is a gather from the rows the
    process holds, the same bits as the database; records of another shape are not held."""
    from harness.datasets import random_images, write_lmdb

    from server.sources import LmdbSource

    images = list(random_images(12, (1, 2, 3)))
    images[5] = random_images(1, (1, 3, 3))[0]  # another shape: read from the database every time
    source = LmdbSource(str(write_lmdb(tmp_path / "db", images, range(12))))
    source.open()
    first = np.array([3, 1, 5, 4])
    source.read_many(first)
    assert source._rows.held.nonzero()[0].tolist() == [1, 3, 4]
    blocks, rest = source.read_many(np.array([4, 5, 6, 1, 3, 4]))
    assert rest.tolist() == []
    served = {}
    for block in blocks:
        rows = range(len(block.positions)) if block.rows is None else block.rows.tolist()  # held rows: selected
        for position, row in zip(block.positions.tolist(), rows):
            served[position] = (block.arrays["data"][row], block.arrays["label"][row])
    for position, index in enumerate([4, 5, 6, 1, 3, 4]):
        assert np.array_equal(served[position][0], images[index]) and served[position][1] == np.float32(index)
    assert blocks[0].positions.tolist() == [0, 3, 4, 5] and blocks[0].rows.tolist() == [4, 1, 3, 4]  # held: one block
    assert source._rows.held.nonzero()[0].tolist() == [1, 3, 4, 6]
    source.close()


def test_a_database_too_large_for_memory_is_read_from_the_database_every_time(tmp_path, monkeypatch):
    from harness.datasets import random_images, write_lmdb

    from server.sources import LmdbSource, row_cache

    monkeypatch.setattr(row_cache, "ROWS_IN_MEMORY_BYTES", 10 * (6 + 4) - 1)
    images = random_images(10, (1, 2, 3))
    source = LmdbSource(str(write_lmdb(tmp_path / "db", images, range(10))))
    source.open()
    for _ in range(2):
        blocks, rest = source.read_many(np.arange(10))
        assert rest.tolist() == [] and np.array_equal(blocks[0].arrays["data"], images)
    assert source._rows is None
    source.close()


WRITER = """
import sys, lmdb
env = lmdb.open(sys.argv[1], map_size=1 << 30)
for round in range(5):
    with env.begin(write=True) as txn:
        for key, value in list(txn.cursor()):
            txn.put(key, value[:-1] + bytes([(value[-1] + 1) % 256]))
env.close()
"""


def test_an_lmdb_overwritten_while_served_is_read_as_the_snapshot_the_reader_began_with(tmp_path):
    """Issue 16.3: a writer committing into a served LMDB; with LMDB's reader lock the
    reader's transaction keeps its pages, so no record vanishes or changes under it."""
    import subprocess
    import sys

    from harness.datasets import random_images, write_lmdb

    from server.sources import LmdbSource

    def read_all(source):
        blocks, rest = source.read_many(np.arange(300))
        assert rest.tolist() == []
        data = np.empty_like(images)
        for block in blocks:  # labels from 128 on take another byte: two record layouts
            data[block.positions] = block.arrays["data"]
        return data

    images = random_images(300, (3, 16, 16), seed=5)
    db = write_lmdb(tmp_path / "db", images, range(300))
    source = LmdbSource(str(db))
    source.open()
    assert np.array_equal(read_all(source), images)
    subprocess.run([sys.executable, "-c", WRITER, str(db)], check=True, timeout=60)
    assert np.array_equal(read_all(source), images)
    source.close()
    source.open()  # a new transaction sees the writer's commits: five times the label's last byte + 1
    assert source.read(0)["label"] == 5
    source.close()


def test_hdf5_files_held_in_memory_are_every_row_as_float32_and_serve_reads(tmp_path, monkeypatch):
    """before_fork holds all files in list order, converted as Caffe converts them; reads and
    batch reads come from memory then; over the bound nothing is held."""
    rng = np.random.default_rng(5)
    parts = [(rng.normal(0, 1, (rows, 2, 3)), np.arange(start, start + rows, dtype=np.int32))
             for start, rows in ((0, 3), (3, 5))]
    for name, (data, label) in zip("ab", parts):
        with h5py.File(tmp_path / ("%s.h5" % name), "w") as f:
            f["data"], f["label"] = data, label
    (tmp_path / "list.txt").write_text("a.h5 b.h5\n")
    source = Hdf5Source(str(tmp_path / "list.txt"), ("data", "label"), str(tmp_path))
    assert source.held_rows() is None  # nothing read before the server asks
    source.before_fork(shuffled=False)
    held = source.held_rows()
    assert held["data"].dtype == held["label"].dtype == np.float32 and held["data"].shape == (8, 2, 3)
    assert np.array_equal(held["data"], np.concatenate([p[0] for p in parts]).astype(np.float32))
    assert held["label"].tolist() == list(range(8))
    source.before_fork(shuffled=True)
    assert source.held_rows() is held  # read once
    source.open()
    assert np.array_equal(source.read(4)["data"], held["data"][4])
    blocks, rest = source.read_many(np.array([7, 0, 3]))
    assert rest.tolist() == [] and blocks[0].rows.tolist() == [7, 0, 3] and blocks[0].arrays["label"] is held["label"]
    source.close()
    monkeypatch.setattr(hdf5, "HELD_BYTES", 8 * (6 + 1) * 4 - 1)
    too_large = Hdf5Source(str(tmp_path / "list.txt"), ("data", "label"), str(tmp_path))
    too_large.before_fork(shuffled=False)
    assert too_large.held_rows() is None
