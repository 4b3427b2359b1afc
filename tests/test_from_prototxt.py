"""``--from-prototxt``: a data layer read into the server's options, and every bad one refused
at start-up with one message naming the layer field and the file (no Caffe needed)."""

import logging

import lmdb
import numpy as np
import pytest

from harness.datasets import random_images, write_lmdb
from parity import write_hdf5
from server.caffe_proto import write_mean_binaryproto
from server.config import ConfigError, parse_config, prepare

pytestmark = pytest.mark.unit

N = 6


@pytest.fixture
def workdir(tmp_path):
    """A Caffe working directory: an LMDB, a mean file, HDF5 files and their list."""
    write_lmdb(tmp_path / "db", random_images(N, (3, 12, 14)), range(N))
    write_mean_binaryproto(str(tmp_path / "mean.binaryproto"), np.zeros((3, 12, 14), np.float32))
    write_mean_binaryproto(str(tmp_path / "small_mean.binaryproto"), np.zeros((3, 10, 10), np.float32))
    write_hdf5(tmp_path / "rows.h5", {"data": np.zeros((4, 5), np.float32), "label": np.arange(4)})
    (tmp_path / "h5.txt").write_text("rows.h5\n")
    return tmp_path


def net(workdir, layer, name="net.prototxt"):
    path = workdir / name
    path.write_text('name: "n"\n# a comment\n' + layer)
    return path


def data_layer(source="db", transform="", extra="", phase="TEST", name="data"):
    return """layer {
  name: "%s" type: "Data" top: "data" top: "label"
  include { phase: %s }
  transform_param { %s }
  data_param { source: "%s" batch_size: 2 backend: LMDB %s }
}
""" % (name, phase, transform, source, extra)


def hdf5_layer(tops=("data", "label"), extra=""):
    return """layer {
  name: "h5" type: "HDF5Data" %s
  hdf5_data_param { source: "h5.txt" batch_size: 2 } %s
}
""" % (" ".join('top: "%s"' % t for t in tops), extra)


def config_of(workdir, layer, *extra, phase="test"):
    return parse_config(["--from-prototxt", str(net(workdir, layer)), "--phase", phase,
                         "--working-dir", str(workdir), *extra])


# -- what a layer becomes -----------------------------------------------------------------

def test_data_layer_sets_source_batch_and_transform(workdir):
    config = config_of(workdir, data_layer(transform='crop_size: 8 mirror: true mean_file: "mean.binaryproto" '
                                                     'scale: 0.5'))
    assert config.source == "lmdb:%s" % (workdir / "db")
    assert (config.batch_size, config.crop_size, config.mirror, config.scale) == (2, 8, True, 0.5)
    assert config.mean_file == str(workdir / "mean.binaryproto")
    assert config.shuffle is False  # Caffe's Data layer reads the database in order
    assert config.arrays == ("data", "label")
    prepared = prepare(config)
    assert [(s.name, s.dtype, s.shape) for s in prepared.layout.batch_specs(2)] == [("data", np.float32, (2, 3, 8, 8)), ("label", np.float32, (2,))]


def test_default_backend_is_leveldb_as_in_caffe(workdir):
    config = config_of(workdir, data_layer().replace("backend: LMDB", ""))
    assert config.source == "leveldb:%s" % (workdir / "db")


def test_image_data_layer_sets_list_root_size_color_and_shuffle(workdir):
    layer = """layer { name: "img" type: "ImageData" top: "data" top: "label"
      image_data_param { source: "list.txt" root_folder: "pics/" new_height: 20 new_width: 30
                         is_color: false shuffle: true batch_size: 3 } }"""
    config = config_of(workdir, layer)
    assert config.source == "imagelist:%s" % (workdir / "list.txt")
    assert (config.root_folder, config.base_dir) == ("pics/", str(workdir))
    assert (config.resize_hw, config.color, config.shuffle, config.batch_size) == ((20, 30), "gray", True, 3)


def test_hdf5_layer_serves_its_tops_as_datasets(workdir):
    config = config_of(workdir, hdf5_layer(("label", "data")))
    assert config.source == "hdf5:%s" % (workdir / "h5.txt") and config.datasets == ("label", "data")
    prepared = prepare(config)
    assert prepared.layout.transform is None
    assert [(s.name, s.dtype, s.shape) for s in prepared.layout.batch_specs(2)] == [("label", np.float32, (2,)), ("data", np.float32, (2, 5))]


def test_one_top_serves_no_label_and_options_may_override_order_and_batch(workdir):
    layer = data_layer().replace('top: "label"', "")
    config = config_of(workdir, layer, "--shuffle", "--batch-size", "5", "--seed", "3")
    assert (config.shuffle, config.batch_size, config.seed, config.arrays) == (True, 5, 3, ("data",))
    assert [s.name for s in prepare(config).layout.batch_specs(5)] == ["data"]


def test_ignored_fields_are_logged(workdir, caplog):
    with caplog.at_level(logging.WARNING, logger="zfeed.server"):
        config_of(workdir, data_layer(extra="rand_skip: 5 force_encoded_color: true crop_size: 3"))
    text = caplog.text
    assert "data_param.rand_skip is ignored" in text and "data_param.force_encoded_color is ignored" in text
    assert "data_param.crop_size is deprecated and ignored, by Caffe too" in text


def test_the_phase_picks_the_layer_and_stages_and_levels_count(workdir):
    layers = (data_layer(phase="TRAIN", name="train_data")
              + data_layer(phase="TEST", name="test_data").replace("include { phase: TEST }",
                                                                   "include { phase: TEST stage: 'deploy' }")
              + data_layer(phase="TEST", name="plain_test").replace("include { phase: TEST }",
                                                                    "include { phase: TEST not_stage: 'deploy' }"))
    assert config_of(workdir, layers, phase="train").layer.endswith("layer 'train_data' (Data)")
    assert config_of(workdir, layers).layer.endswith("layer 'plain_test' (Data)")
    assert config_of(workdir, layers, "--stage", "deploy").layer.endswith("layer 'test_data' (Data)")


# -- refused at start-up: one line naming the file, the line, the layer and the field ------

REFUSED = {
    "missing source": (data_layer(source="no_such_db"),
                       "net.prototxt:3 layer 'data' (Data): data_param.source (relative to {w}): "
                       "LMDB {w}/no_such_db does not exist"),
    "unreadable lmdb": (data_layer(source="not_an_lmdb"),
                        "net.prototxt:3 layer 'data' (Data): data_param.source (relative to {w}): "
                        "cannot open LMDB {w}/not_an_lmdb"),
    "mean file and values": (data_layer(transform='mean_file: "mean.binaryproto" mean_value: 3'),
                             "net.prototxt:3 layer 'data' (Data): transform_param has both mean_file and "
                             "mean_value; Caffe takes one or the other"),
    "crop larger than image": (data_layer(transform="crop_size: 13"),
                               "net.prototxt:3 layer 'data' (Data): transform_param.crop_size 13 is larger "
                               "than the 12x14 images of lmdb:{w}/db"),
    "mean file of the wrong size": (data_layer(transform='mean_file: "small_mean.binaryproto"'),
                                    "net.prototxt:3 layer 'data' (Data): transform_param.mean_file "
                                    "{w}/small_mean.binaryproto is 3x10x10 (C x H x W) but the images are 3x12x14"),
    "hdf5 dataset missing": (hdf5_layer(("data", "labels")),
                             "net.prototxt:3 layer 'h5' (HDF5Data): hdf5_data_param.source (relative to {w}): "
                             "HDF5 file {w}/rows.h5 has no dataset 'labels' (it has 'data', 'label')"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_layer_is_refused_at_start_up_naming_field_and_file(workdir, case):
    (workdir / "not_an_lmdb").mkdir()
    (workdir / "not_an_lmdb" / "data.mdb").write_bytes(b"garbage" * 100)
    layer, message = REFUSED[case]
    with pytest.raises(ConfigError) as refused:  # python -m server logs it as one line and exits 2
        prepare(config_of(workdir, layer))
    error = str(refused.value)
    assert "\n" not in error and str(workdir / "net.prototxt") in error
    assert message.format(w=workdir) in error


# -- refused, in process -----------------------------------------------------------------

@pytest.mark.parametrize("layer, extra, message", [
    (data_layer(transform="force_color: true force_gray: true"), [],
     "layer 'data' (Data): force_color and force_gray are both set"),
    (data_layer(transform="mean_value: 1 mean_value: 2"), [],
     "layer 'data' (Data): transform_param.mean_value has 2 values but the images have 3 channels"),
    (data_layer(transform="crop_size: 4"), ["--crop-size", "3"],
     "--crop-size: with --from-prototxt the data layer sets these"),
    (data_layer(), ["--root-folder", "x/"], "--root-folder: with --from-prototxt the data layer sets these"),
    (data_layer(extra="batch_size: 0").replace("batch_size: 2", ""), [],
     "data_param.batch_size must be at least 1, it is 0"),
    (data_layer().replace('source: "db"', ""), [], "data_param.source is not set"),
    (data_layer().replace("data_param", "image_data_param").replace("backend: LMDB", "")
     .replace('type: "Data"', 'type: "ImageData"').replace("batch_size: 2", "new_height: 5"), [],
     "image_data_param.new_height/new_width: give both a height and a width"),
    (hdf5_layer(extra="transform_param { scale: 2 }"), [],
     "layer 'h5' (HDF5Data) has a transform_param; HDF5 data is served as stored"),
    (data_layer(extra="crop_szie: 3"), [], 'net.prototxt:7: layer \'data\' (Data): '),
    (data_layer(transform="mirror: maybe"), [], "net.prototxt:6: layer 'data' (Data): "),
    (data_layer().replace("include { phase: TEST }", "include { phase: TEST } exclude { stage: 'x' }"), [],
     "has both include and exclude rules"),
    (data_layer(phase="TRAIN"), [], "has no Data, ImageData, HDF5Data layer for phase TEST (its layer types: Data)"),
    (data_layer() + data_layer(name="other"), [],
     "has 2 data layers for phase TEST ('data', 'other'): one zfeed server serves one layer"),
    (data_layer(), ["--layer", "nope"], "has no layer named 'nope'"),
    (data_layer(phase="TRAIN"), ["--layer", "data"], "layer 'data' does not run in phase TEST"),
    (data_layer() + 'layer { name: "conv" type: "Convolution" }', ["--layer", "conv"],
     "layer 'conv' is a Convolution layer; zfeed serves Data, ImageData, HDF5Data layers"),
    ('layers { name: "old" type: DATA }', [], "the net uses Caffe's old V1 'layers' format"),
    (data_layer().rstrip().rstrip("}"), [], "unexpected end of file: '}' missing"),
    (data_layer(), ["--working-dir", "/no/such/dir"], "--working-dir /no/such/dir is not a directory"),
])
def test_bad_layers_and_option_mixes_are_refused(workdir, layer, extra, message):
    with pytest.raises(ConfigError) as refused:
        prepare(config_of(workdir, layer, *extra))
    assert message in str(refused.value)


def test_misspelt_field_is_named_with_its_line(workdir):
    with pytest.raises(ConfigError, match=r"net.prototxt:7: layer 'data' \(Data\): .*crop_szie"):
        config_of(workdir, data_layer(extra="crop_szie: 3"))


def test_missing_prototxt_is_named(workdir):
    with pytest.raises(ConfigError, match="cannot read prototxt %s/none.prototxt" % workdir):
        parse_config(["--from-prototxt", str(workdir / "none.prototxt")])


def test_source_and_prototxt_exclude_each_other(workdir):
    with pytest.raises(ConfigError, match="not allowed with argument"):
        parse_config(["--source", "lmdb:x", "--from-prototxt", "y"])


def test_prototxt_options_need_from_prototxt():
    with pytest.raises(ConfigError, match="--layer applies only with --from-prototxt"):
        parse_config(["--source", "lmdb:x", "--layer", "data"])


def test_an_lmdb_with_a_corrupt_first_record_is_refused(workdir):
    env = lmdb.open(str(workdir / "db"))
    with env.begin(write=True) as txn:
        txn.put(b"%08d" % 0, b"\x08\x01not a datum")
    env.close()
    with pytest.raises(ConfigError, match="data_param.source .* cannot read the first sample"):
        prepare(config_of(workdir, data_layer()))
