"""The layer's param_str: every wrong value is refused at set-up, naming its key.

LayerParams is run under the Caffe Python, imported through the module that
subclasses caffe.Layer, as Caffe loads it; the port clash needs a real net's
set-up. tests/test_layer_params_property.py runs LayerParams in-process over
random JSON.
"""

import json
import socket

import pytest

from caffe_runner import run_caffe_script
from test_caffe_layer import zmq_layer

pytestmark = pytest.mark.caffe

ADDRESS = {"address": "tcp://127.0.0.1:5555"}

# (param_str, what the error must say); each message names the key and what it wants.
REFUSED = [
    ('{"address": "x", "timeout_s": NaN}', '"timeout_s" must be a positive, finite number, got NaN'),
    ('{"address": "x", "timeout_s": Infinity}', '"timeout_s" must be a positive, finite number, got Infinity'),
    ('{"address": "x", "timeout_s": -1}', '"timeout_s" must be a positive, finite number, got -1'),
    ('{"address": "x", "timeout_s": 0}', '"timeout_s" must be a positive, finite number, got 0'),
    ('{"address": "x", "timeout_s": "60"}', '"timeout_s" must be a positive, finite number, got "60"'),
    ('{"address": 5}', '"address" must be an endpoint string (e.g. "tcp://dataserver:5555") or a list of them, got 5'),
    ('{"address": ["tcp://a:1", 7]}', '"address" must be an endpoint string'),
    ('{"address": []}', '"address" must be an endpoint string'),
    ('{"bind": {"x": 1}}', '"bind" must be an endpoint string'),
    ('{"address": "x", "tops": "data"}', '"tops" must be a list of distinct array names'),
    ('{"address": "x", "tops": ["data", "data"]}', '"tops" must be a list of distinct array names'),
    ('{"address": "x", "prefetch": 0}', '"prefetch" must be an integer of at least 1 and at most 2147483647, got 0'),
    ('{"address": "x", "prefetch": 2.5}', '"prefetch" must be an integer of at least 1 and at most 2147483647, got 2.5'),
    ('{"address": "x", "prefetch": true}', '"prefetch" must be an integer of at least 1 and at most 2147483647, got true'),
    ('{"address": "x", "max_batch_mb": NaN}', '"max_batch_mb" must be a positive, finite number of at most 1048576, got NaN'),
    ('{"address": "x", "curve_secret_key": 3}', '"curve_secret_key" must be a file path, got 3'),
    ('{"address": "x", "metrics_port": 99999}', '"metrics_port" must be a TCP port number from 1 to 65535, got 99999'),
    ('{"address": "x", "metrics_port": "9100"}', '"metrics_port" must be a TCP port number from 1 to 65535, got "9100"'),
    ('{}', 'needs "address"'),
    ('[1]', "must be a JSON object"),
]


def test_wrong_param_str_values_are_refused_naming_the_key(tmp_path):
    cases = tmp_path / "cases.json"
    accepted = [json.dumps(dict(ADDRESS, timeout_s=0.5, prefetch=2, max_batch_mb=64.5, metrics_port=9100)),
                json.dumps({"bind": ["tcp://*:1", "tcp://*:2"], "tops": ["data"]})]
    cases.write_text(json.dumps([text for text, _ in REFUSED] + accepted))
    outcomes = json.loads(run_caffe_script("check_param_strs", cases).stdout)
    for (text, message), outcome in zip(REFUSED, outcomes):
        assert outcome.startswith("LayerParamError: ZmqDataLayer param_str") and message in outcome, (text, outcome)
    assert outcomes[len(REFUSED):] == ["OK", "OK"]


def test_metrics_port_in_use_names_the_port_and_the_key(tmp_path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        net = tmp_path / "net.prototxt"
        net.write_text(zmq_layer("tcp://127.0.0.1:1", extra={"metrics_port": port, "timeout_s": 30}))
        with pytest.raises(pytest.fail.Exception) as failed:
            run_caffe_script("run_net", net, "test", 1, tmp_path / "out.npz", "data", timeout=20)
    text = str(failed.value)
    assert "exited with status 3" in text  # at set-up, not after the 30 s wait for a batch
    assert ('LayerParamError: ZmqDataLayer param_str "metrics_port": cannot serve metrics on port %d (Address already in use)'
            % port) in text
