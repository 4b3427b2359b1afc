"""server.tools.convert_imageset and server.tools.compute_image_mean, without Caffe."""

import cv2
import lmdb
import numpy as np
import pytest

from server.caffe_proto import Datum, image_to_datum, read_mean_binaryproto
from server.sources import datum_image, read_image_list
from server.tools.compute_image_mean import compute_image_mean
from server.tools.compute_image_mean import main as mean_main
from server.tools.convert_imageset import ImagesetError, convert_imageset, scan_class_folder
from server.tools.convert_imageset import main as convert_main

pytestmark = pytest.mark.unit

PNG_SIGNATURE = b"\x89PNG"
JPEG_SIGNATURE = b"\xff\xd8"


def write_images(root, names, shape=(6, 8, 3), seed=0):
    """Write random BGR images under ``root``; returns {relative name: HWC array}."""
    rng = np.random.default_rng(seed)
    images = {}
    for name in names:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / name), image)
        images[name] = image
    return images


def read_db(path):
    """[(key, Datum)] of an LMDB, in key order."""
    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        return [(key.decode(), Datum.FromString(value)) for key, value in txn.cursor()]


def chw(image_hwc):
    return image_hwc.reshape(image_hwc.shape[:2] + (-1,)).transpose(2, 0, 1)


@pytest.fixture
def listed(tmp_path):
    """A list file naming PNGs, one with a space in its name: (list_path, root, images)."""
    root = tmp_path / "images"
    names = ["a/first image.png", "b/second.png", "a/third.png"]
    images = write_images(root, names)
    list_path = tmp_path / "list.txt"
    list_path.write_text("a/first image.png 3\n\nb/second.png 0\r\na/third.png 1  \n")
    return list_path, root, images


def test_read_image_list_splits_at_the_last_space(listed):
    list_path, _, _ = listed
    entries, lines = read_image_list(list_path)
    assert entries == [("a/first image.png", 3), ("b/second.png", 0), ("a/third.png", 1)]
    assert lines == [1, 3, 4]


@pytest.mark.parametrize("line", ["nolabel.png", "x.png 1.5", "x.png 99999999999", " 3"])
def test_read_image_list_names_a_bad_line(tmp_path, line):
    list_path = tmp_path / "list.txt"
    list_path.write_text(f"ok.png 1\n{line}\n")
    with pytest.raises(ValueError, match="list.txt line 2: expected 'PATH LABEL'"):
        read_image_list(list_path)


def test_scan_class_folder_labels_sorted_classes(tmp_path):
    write_images(tmp_path, ["dog/b.png", "dog/a.jpg", "cat/z.png", "cat/sub/y.png", "emu/x.bmp"])
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"")
    (tmp_path / "stray.png").write_bytes(b"")
    entries, classes = scan_class_folder(tmp_path)
    assert classes == ["cat", "dog", "emu"]
    assert entries == [("cat/sub/y.png", 0), ("cat/z.png", 0), ("dog/a.jpg", 1),
                       ("dog/b.png", 1), ("emu/x.bmp", 2)]


def test_raw_from_list_file_stores_chw_bgr_with_caffe_keys(listed, tmp_path):
    list_path, root, images = listed
    entries, _ = read_image_list(list_path)
    assert convert_imageset(entries, str(tmp_path / "db"), root_folder=str(root)) == 3
    records = read_db(tmp_path / "db")
    assert [key for key, _ in records] == ["00000000_a/first image.png", "00000001_b/second.png",
                                           "00000002_a/third.png"]
    for (key, datum), (name, label) in zip(records, entries):
        expected = image_to_datum(chw(images[name]), label)
        assert datum == expected, key


def test_raw_from_class_folder_via_cli(tmp_path):
    images = write_images(tmp_path / "set", ["b/1.png", "a/2.png", "a/1.png"])
    assert convert_main([str(tmp_path / "set"), str(tmp_path / "db")]) == 0
    records = read_db(tmp_path / "db")
    assert [key for key, _ in records] == ["00000000_a/1.png", "00000001_a/2.png",
                                           "00000002_b/1.png"]
    assert [datum.label for _, datum in records] == [0, 0, 1]
    for key, datum in records:
        np.testing.assert_array_equal(datum_image(datum), chw(images[key[9:]]))


def test_resize_uses_bilinear_like_caffe(listed, tmp_path):
    list_path, root, images = listed
    entries, _ = read_image_list(list_path)
    convert_imageset(entries, str(tmp_path / "db"), root_folder=str(root), resize=(3, 5))
    for (_, datum), (name, _) in zip(read_db(tmp_path / "db"), entries):
        expected = cv2.resize(images[name], (5, 3), interpolation=cv2.INTER_LINEAR)
        assert (datum.channels, datum.height, datum.width) == (3, 3, 5)
        np.testing.assert_array_equal(datum_image(datum), chw(expected))


def test_gray_stores_one_channel(listed, tmp_path):
    list_path, root, _ = listed
    entries, _ = read_image_list(list_path)
    convert_imageset(entries, str(tmp_path / "db"), root_folder=str(root), gray=True)
    for (_, datum), (name, _) in zip(read_db(tmp_path / "db"), entries):
        expected = cv2.imread(str(root / name), cv2.IMREAD_GRAYSCALE)
        assert datum.channels == 1
        np.testing.assert_array_equal(datum_image(datum), expected[np.newaxis])


def test_encoded_keeps_the_original_file_bytes(tmp_path):
    write_images(tmp_path / "set", ["x/a.jpg", "x/b.JPEG", "y/c.png"])
    entries, _ = scan_class_folder(tmp_path / "set")
    convert_imageset(entries, str(tmp_path / "db"), root_folder=str(tmp_path / "set"), encoded=True)
    for (_, datum), (name, label) in zip(read_db(tmp_path / "db"), entries):
        assert datum.encoded and datum.label == label
        assert not datum.HasField("channels")
        assert datum.data == (tmp_path / "set" / name).read_bytes()


def test_encoded_and_resized_is_reencoded_to_its_own_format(tmp_path):
    images = write_images(tmp_path / "set", ["x/a.png", "y/b.jpg"])
    entries, _ = scan_class_folder(tmp_path / "set")
    convert_imageset(entries, str(tmp_path / "db"), root_folder=str(tmp_path / "set"),
                     encoded=True, resize=(4, 4))
    (_, png), (_, jpg) = read_db(tmp_path / "db")
    assert png.data.startswith(PNG_SIGNATURE) and jpg.data.startswith(JPEG_SIGNATURE)
    expected = cv2.resize(images["x/a.png"], (4, 4), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(datum_image(png), chw(expected))
    assert datum_image(jpg).shape == (3, 4, 4)


def test_encode_type_forces_the_format(tmp_path):
    write_images(tmp_path / "set", ["x/a.jpg", "x/b.png"])
    entries, _ = scan_class_folder(tmp_path / "set")
    convert_imageset(entries, str(tmp_path / "db"), root_folder=str(tmp_path / "set"),
                     encoded=True, encode_type="png")
    (_, from_jpg), (_, from_png) = read_db(tmp_path / "db")
    assert from_jpg.data.startswith(PNG_SIGNATURE)
    np.testing.assert_array_equal(datum_image(from_jpg),
                                  chw(cv2.imread(str(tmp_path / "set/x/a.jpg"))))
    assert from_png.data == (tmp_path / "set/x/b.png").read_bytes()


def test_encoded_gray_stores_a_gray_file(listed, tmp_path):
    list_path, root, _ = listed
    entries, _ = read_image_list(list_path)
    convert_imageset(entries, str(tmp_path / "db"), root_folder=str(root), encoded=True, gray=True)
    for (_, datum), (name, _) in zip(read_db(tmp_path / "db"), entries):
        expected = cv2.imread(str(root / name), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(datum_image(datum), expected[np.newaxis])


def test_shuffle_is_a_seeded_permutation(tmp_path):
    write_images(tmp_path / "set", [f"c{i % 3}/{i:02d}.png" for i in range(12)], shape=(2, 2, 3))
    entries, _ = scan_class_folder(tmp_path / "set")
    orders = []
    for run, seed in enumerate([7, 7, 8]):
        db = tmp_path / f"db{run}"
        convert_imageset(entries, str(db), root_folder=str(tmp_path / "set"),
                         shuffle=True, seed=seed)
        records = read_db(db)
        assert [key[:9] for key, _ in records] == [f"{i:08d}_" for i in range(12)]
        orders.append([(key[9:], datum.label) for key, datum in records])
    assert orders[0] == orders[1] != orders[2]
    assert orders[0] != entries and sorted(orders[0]) == sorted(entries)


def test_many_records_span_commits_and_grow_the_map(tmp_path):
    names = [f"c/{i:04d}.png" for i in range(1100)]
    write_images(tmp_path / "set", names, shape=(2, 2, 1))
    entries = [(name, i) for i, name in enumerate(names)]
    convert_imageset(entries, str(tmp_path / "db"), root_folder=str(tmp_path / "set"),
                     map_size=1 << 16)
    records = read_db(tmp_path / "db")
    assert len(records) == 1100 and records[-1][1].label == 1099


def test_check_size_rejects_a_different_size_and_removes_the_db(tmp_path):
    write_images(tmp_path / "set", ["c/a.png"], shape=(4, 4, 3))
    write_images(tmp_path / "set", ["c/b.png"], shape=(4, 5, 3))
    entries = [("c/a.png", 0), ("c/b.png", 0)]
    with pytest.raises(ImagesetError, match="c/b.png: size \\(4, 5\\) differs") as excinfo:
        convert_imageset(entries, str(tmp_path / "db"), root_folder=str(tmp_path / "set"),
                         check_size=True)
    assert excinfo.value.index == 1
    assert not (tmp_path / "db").exists()


def test_unreadable_image_names_list_line_and_file(listed, tmp_path, capsys):
    list_path, root, _ = listed
    (root / "b" / "second.png").write_bytes(b"not a png")
    status = convert_main([str(list_path), str(tmp_path / "db"), "--root-folder", str(root)])
    err = capsys.readouterr().err
    assert status == 2
    assert f"convert_imageset: error: {list_path} line 3: {root / 'b/second.png'}: " \
           f"not a readable image\n" in err
    assert "Traceback" not in err and not (tmp_path / "db").exists()


def test_missing_image_names_list_line(listed, tmp_path, capsys):
    list_path, root, _ = listed
    (root / "a" / "third.png").unlink()
    assert convert_main([str(list_path), str(tmp_path / "db"), "--root-folder", str(root)]) == 2
    assert f"{list_path} line 4: {root / 'a/third.png'}: No such file" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    ({"resize": (4, 0)}, "both height and width"),
    ({"encode_type": "png"}, "only applies to encoded"),
])
def test_bad_options_are_refused(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        convert_imageset([], str(tmp_path / "db"), **options)


def test_an_existing_output_is_refused(tmp_path):
    (tmp_path / "db").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        convert_imageset([], str(tmp_path / "db"))


def test_cli_user_mistakes_exit_2_with_one_line(tmp_path, capsys):
    runs = [
        [str(tmp_path / "missing.txt"), str(tmp_path / "db")],
        [str(tmp_path), str(tmp_path / "db"), "--root-folder", "x"],
        [str(tmp_path), str(tmp_path / "db"), "--resize-height", "3"],
    ]
    for args in runs:
        status = convert_main(args)  # an exception here would be a traceback for the user
        err = capsys.readouterr().err
        assert status == 2, err
        assert err.strip().splitlines()[-1].startswith("convert_imageset: error: ")


@pytest.mark.parametrize("encoded", [False, True])
def test_compute_image_mean_matches_numpy(tmp_path, encoded):
    images = write_images(tmp_path / "set", [f"c/{i}.png" for i in range(5)], shape=(3, 4, 3))
    entries = [(name, 0) for name in images]
    convert_imageset(entries, str(tmp_path / "db"), root_folder=str(tmp_path / "set"),
                     encoded=encoded)
    expected = np.mean([chw(image) for image in images.values()], axis=0, dtype=np.float64)
    mean = compute_image_mean(str(tmp_path / "db"))
    assert mean.dtype == np.float32 and mean.shape == (3, 3, 4)
    np.testing.assert_allclose(mean, expected, rtol=1e-6)


def test_compute_image_mean_of_gray_encoded_images_has_one_channel(tmp_path):
    images = write_images(tmp_path / "set", ["c/0.png", "c/1.png"], shape=(3, 4))
    convert_imageset([(name, 0) for name in images], str(tmp_path / "db"),
                     root_folder=str(tmp_path / "set"), encoded=True, gray=True)
    expected = np.mean(list(images.values()), axis=0)[np.newaxis]
    np.testing.assert_allclose(compute_image_mean(str(tmp_path / "db")), expected, rtol=1e-6)


def test_compute_image_mean_cli_writes_a_mean_file(tmp_path):
    images = write_images(tmp_path / "set", ["c/0.png", "c/1.png"], shape=(2, 3, 3))
    convert_imageset([(name, 0) for name in images], str(tmp_path / "db"),
                     root_folder=str(tmp_path / "set"))
    assert mean_main([str(tmp_path / "db"), str(tmp_path / "mean.binaryproto")]) == 0
    np.testing.assert_allclose(read_mean_binaryproto(tmp_path / "mean.binaryproto"),
                               compute_image_mean(str(tmp_path / "db")))


def test_compute_image_mean_names_the_key_of_a_different_size(tmp_path, capsys):
    write_images(tmp_path / "set", ["c/0.png"], shape=(2, 3, 3))
    write_images(tmp_path / "set", ["c/1.png"], shape=(3, 3, 3))
    convert_imageset([("c/0.png", 0), ("c/1.png", 0)], str(tmp_path / "db"),
                     root_folder=str(tmp_path / "set"))
    with pytest.raises(ValueError, match="record '00000001_c/1.png': shape \\(3, 3, 3\\) differs"):
        compute_image_mean(str(tmp_path / "db"))
    assert mean_main([str(tmp_path / "db"), str(tmp_path / "m")]) == 2
    assert "compute_image_mean: error: " in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_compute_image_mean_refuses_empty_or_missing_dbs(tmp_path):
    convert_imageset([], str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no records"):
        compute_image_mean(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no LMDB directory"):
        compute_image_mean(str(tmp_path / "missing"))


def test_datum_image_reads_float_data_and_rejects_bad_sizes():
    datum = Datum(channels=1, height=1, width=2, float_data=[0.5, 2.0])
    np.testing.assert_array_equal(datum_image(datum), [[[0.5, 2.0]]])
    with pytest.raises(ValueError, match="Datum data has 3 bytes for shape"):
        datum_image(Datum(channels=1, height=1, width=2, data=b"abc"))
    with pytest.raises(ValueError, match="1 float_data values for shape"):
        datum_image(Datum(channels=1, height=1, width=2, float_data=[1.0]))
    with pytest.raises(ValueError, match="cannot decode image"):
        datum_image(Datum(encoded=True, data=b"junk"))
