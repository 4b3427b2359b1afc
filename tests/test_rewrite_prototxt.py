"""rewrite_prototxt and the prototxt scanner, without Caffe (real Caffe runs the rewritten
nets in test_parity_caffe.py and test_migration_caffe.py)."""

import json

import pytest
from google.protobuf import text_format

from server.caffe_proto import LayerParameter
from server.prototxt import TEST, TRAIN, data_layers, net_state, scan_net
from server.tools.rewrite_prototxt import main

pytestmark = pytest.mark.unit

NET = """# My net { with braces in a comment }
name: "net"
state { stage: "s" }
  layer {
    name: "data"   # the training data
    type: "Data"
    top: "data"
    top: "label"
    include { phase: TRAIN }
    transform_param { mirror: true crop_size: 3 }
    data_param { source: "train_lmdb" batch_size: 4 backend: LMDB }
  }
layer <
  name: "data" type: 'ImageData' top: "data" top: "label"
  include: { phase: TEST }
  image_data_param { source: "val {list}.txt" root_folder: "a \\"quoted\\" dir/" }
>
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: [1, 2] weird_fork_field: { x: 1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" loss_weight: 1 }
"""


def test_scanner_finds_blocks_through_comments_strings_and_angle_brackets():
    net = scan_net(NET, "net.prototxt")
    assert [(b.name, b.type, b.line) for b in net.layers] == [
        ("data", "Data", 4), ("data", "ImageData", 13), ("conv", "Convolution", 18), ("loss", "SoftmaxWithLoss", 20)]
    assert NET[net.layers[1].start:net.layers[1].end].startswith("layer <") and NET[net.layers[1].end - 1] == ">"
    test_layers = data_layers(net, net_state(net, TEST))
    assert [layer.type for layer in test_layers] == ["ImageData"]
    assert test_layers[0].param.image_data_param.root_folder == 'a "quoted" dir/'
    assert [layer.type for layer in data_layers(net, net_state(net, TRAIN))] == ["Data"]
    assert list(net_state(net, TRAIN, level=2, stages=["t"]).stage) == ["s", "t"]


def rewrite(tmp_path, *args, text=NET):
    source = tmp_path / "net.prototxt"
    source.write_text(text)
    status = main([str(source), str(tmp_path / "out.prototxt"), *args])
    return status, (tmp_path / "out.prototxt").read_text() if status == 0 else ""


def layer_blocks(text):
    net = scan_net(text, "out.prototxt")
    return [(block, text_format.Parse(text[block.body_start:block.body_end], LayerParameter()))
            for block in net.layers if block.type == "Python"]


def test_data_layers_become_zfeed_layers_and_everything_else_stays(tmp_path, capsys):
    status, text = rewrite(tmp_path, "--train", "tcp://feed:5555", "--test", "tcp://feed:5556", "--timeout-s", "9")
    assert status == 0
    assert text.startswith(NET[:NET.index("  layer {")])  # comments and the state, byte for byte
    assert text.endswith(NET[NET.index('layer { name: "conv"'):])
    blocks = layer_blocks(text)
    assert [layer.name for _, layer in blocks] == ["data", "data"]
    train, test = blocks[0][1], blocks[1][1]
    assert list(train.top) == ["data", "label"] and train.include[0].phase == 0 and test.include[0].phase == 1
    assert (train.python_param.module, train.python_param.layer) == ("client_layer", "ZmqDataLayer")
    assert json.loads(train.python_param.param_str) == {"address": "tcp://feed:5555", "tops": ["data", "label"],
                                                       "timeout_s": 9.0}
    assert json.loads(test.python_param.param_str)["address"] == "tcp://feed:5556"
    assert not train.HasField("transform_param") and not train.HasField("data_param")
    assert "\n  layer {\n    # zfeed: was Data layer 'data'" in text  # kept its indentation
    assert "python -m server --from-prototxt %s --phase train" % (tmp_path / "net.prototxt") in text
    assert "now reads from tcp://feed:5556" in capsys.readouterr().err


def test_hdf5_tops_name_the_served_arrays_and_unaddressed_layers_are_kept(tmp_path, capsys):
    text = NET.replace('type: "Data"', 'type: "HDF5Data"').replace(
        "transform_param { mirror: true crop_size: 3 }", "").replace(
        'data_param { source: "train_lmdb" batch_size: 4 backend: LMDB }',
        'hdf5_data_param { source: "h5.txt" batch_size: 4 }').replace('top: "label"\n', 'top: "y"\n', 1)
    status, out = rewrite(tmp_path, "--train", "tcp://feed:5555", text=text)
    assert status == 0
    (_, layer), = layer_blocks(out)
    assert json.loads(layer.python_param.param_str)["tops"] == ["data", "y"]
    assert "type: 'ImageData'" in out
    assert "kept %s:13 layer 'data' (ImageData) (no address given)" % (tmp_path / "net.prototxt") \
        in capsys.readouterr().err


SHARED = """layer { name: "a" type: "Data" top: "data" data_param { source: "x" batch_size: 1 } }
layer { name: "b" type: "Data" top: "b" include { phase: TRAIN } data_param { source: "y" batch_size: 1 } }
"""


@pytest.mark.parametrize("args, message", [
    (["--train", "tcp://h:1"], "layer 'a' (Data) runs in both phases: give it its own server with --layer a=ENDPOINT"),
    (["--layer", "a=tcp://h:1", "--train", "tcp://h:1"],
     "data layers 'a', 'b' of phase TRAIN would share tcp://h:1, and split its batches"),
    (["--layer", "c=tcp://h:1"], "has no data layer named c"),
    ([], "give at least one address"),
])
def test_ambiguous_addresses_are_refused(tmp_path, capsys, args, message):
    status, _ = rewrite(tmp_path, *args, text=SHARED)
    assert status == 2 and message in capsys.readouterr().err


def test_each_layer_may_get_its_own_server(tmp_path):
    status, text = rewrite(tmp_path, "--layer", "a=tcp://h:1", "--layer", "b=tcp://h:2", text=SHARED)
    assert status == 0
    assert [json.loads(layer.python_param.param_str)["address"] for _, layer in layer_blocks(text)] == [
        "tcp://h:1", "tcp://h:2"]
    assert "--from-prototxt %s --phase train --layer a" % (tmp_path / "net.prototxt") in text


def test_the_input_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "net.prototxt").write_text(SHARED)
    assert main([str(tmp_path / "net.prototxt"), str(tmp_path / "net.prototxt"), "--layer", "a=tcp://h:1"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert (tmp_path / "net.prototxt").read_text() == SHARED


@pytest.mark.parametrize("option, endpoint", [("--train", "feed:5555"), ("--test", "tcp://feed"),
                                              ("--train", "tcp://feed:0")])
def test_endpoints_are_checked_as_the_server_checks_them(tmp_path, capsys, option, endpoint):
    with pytest.raises(SystemExit) as refused:
        main([str(tmp_path / "a"), str(tmp_path / "b"), option, endpoint])
    assert refused.value.code == 2
    assert "%s %r: expected tcp://HOST:PORT" % (option, endpoint) in capsys.readouterr().err
