"""zfeed reads prototxts as real Caffe does: the same messages, the same layer selection."""

import json

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from caffe_runner import run_caffe_script
from parity import write_hdf5
from server.caffe_proto import MESSAGE_NAMES, PARTIAL_MESSAGES, message_class
from server.prototxt import TEST, TRAIN, data_layers, net_state, scan_net

pytestmark = pytest.mark.caffe


def describe(message):
    proto = descriptor_pb2.DescriptorProto()
    message.DESCRIPTOR.CopyToProto(proto)
    return {"fields": [{"name": f.name, "number": f.number, "label": f.label, "type": f.type,
                        "type_name": f.type_name, "default_value": f.default_value,
                        "packed": f.options.packed} for f in proto.field],
            "enums": {e.name: [[v.name, v.number] for v in e.value] for e in proto.enum_type}}


def test_declared_messages_match_real_caffe_field_for_field():
    real = json.loads(run_caffe_script("describe_message_fields.py", *MESSAGE_NAMES).stdout)
    for name in MESSAGE_NAMES:
        ours = describe(message_class(name))
        theirs = {f["name"]: f for f in real[name]["fields"]}
        for field in ours["fields"]:
            assert field == theirs.get(field["name"]), (name, field["name"])
        if name not in PARTIAL_MESSAGES:
            assert [f["name"] for f in ours["fields"]] == [f["name"] for f in real[name]["fields"]], name
        assert ours["enums"] == real[name]["enums"], name
    phase = message_class("NetState").DESCRIPTOR.fields_by_name["phase"].enum_type
    assert [[v.name, v.number] for v in phase.values] == real["Phase"]


RULES = {  # layer name -> its rules
    "always": "",
    "train_only": "include { phase: TRAIN }",
    "test_only": "include { phase: TEST }",
    "not_in_test": "exclude { phase: TEST }",
    "stage_a": "include { stage: 'a' }",
    "test_and_a_or_b": "include { phase: TEST stage: 'a' } include { stage: 'b' }",
    "not_stage_b": "include { not_stage: 'b' }",
    "level_1_to_2": "include { min_level: 1 max_level: 2 }",
    "exclude_level_2": "exclude { min_level: 2 }",
}
STATES = [(phase, level, stages) for phase in (TRAIN, TEST) for level in (0, 1, 2, 3)
          for stages in ((), ("a",), ("b",), ("a", "b"))]


def test_layers_are_selected_as_caffes_filter_net_selects_them(tmp_path):
    write_hdf5(tmp_path / "rows.h5", {name: np.zeros((2, 1), np.float32) for name in RULES})
    (tmp_path / "list.txt").write_text(str(tmp_path / "rows.h5"))
    text = 'name: "rules"\nstate { stage: "from_net" }\n' + "".join(
        'layer { name: "%s" type: "HDF5Data" top: "%s" %s\n  hdf5_data_param { source: "%s" batch_size: 1 } }\n'
        % (name, name, rules, tmp_path / "list.txt") for name, rules in RULES.items())
    net_path = tmp_path / "rules.prototxt"
    net_path.write_text(text)
    spec = [{"phase": phase, "level": level, "stages": list(stages)} for phase, level, stages in STATES]
    (tmp_path / "states.json").write_text(json.dumps(spec))
    caffes = json.loads(run_caffe_script("layers_per_state", net_path, tmp_path / "states.json").stdout)
    net = scan_net(text, str(net_path))
    for (phase, level, stages), caffe_layers in zip(STATES, caffes):
        ours = [layer.name for layer in data_layers(net, net_state(net, phase, level, stages))]
        assert ours == caffe_layers, (phase, level, stages)
