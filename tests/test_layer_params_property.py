"""Issue 16 target: any param_str gives a valid LayerParams or a LayerParamError naming the key.

In-process, over random JSON objects (NaN, huge integers, nesting, wrong types), with the
layer's real keys among random ones.
"""

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_layer.layer_params import KEYS, MAX_PREFETCH, LayerParamError, LayerParams

pytestmark = pytest.mark.unit

HUGE = st.integers(min_value=1, max_value=2**80).map(lambda n: n * 10**300)
NUMBERS = st.integers() | HUGE | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0, 1, -1, 2**63, 1e308])
SCALARS = (st.none() | st.booleans() | NUMBERS | st.text(max_size=20)
           | st.sampled_from(["tcp://127.0.0.1:5555", "tcp://*:5555", "", "data", "label"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=4),
                      max_leaves=12)
# Random keys, which are refused as unknown before any value is read; and the layer's keys only,
# with numbers for every key half of the time, so that each check is reached.
PARAMS = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=12), VALUES, max_size=6)
KNOWN = st.dictionaries(st.sampled_from(KEYS), NUMBERS | VALUES, max_size=len(KEYS))
ADDRESSED = st.builds(lambda params, address: dict(params, address=address), KNOWN,
                      st.sampled_from(["tcp://127.0.0.1:5555", ["tcp://a:1", "tcp://b:2"]]))


def check(params):
    """The property: a valid, fully typed config, or a LayerParamError naming one of the keys."""
    try:
        parsed = LayerParams(json.dumps(params))
    except LayerParamError as exc:
        assert any('"%s"' % key in str(exc) or repr(key) in str(exc) for key in list(params) + ["address"]), str(exc)
        return
    assert all(isinstance(e, str) and e for e in (parsed.address or []) + (parsed.bind or []))
    assert parsed.address or parsed.bind
    assert isinstance(parsed.timeout_s, float) and math.isfinite(parsed.timeout_s) and parsed.timeout_s > 0
    assert parsed.tops and len(set(parsed.tops)) == len(parsed.tops) and all(isinstance(t, str) for t in parsed.tops)
    assert type(parsed.prefetch) is int and 1 <= parsed.prefetch <= MAX_PREFETCH
    assert type(parsed.max_batch_bytes) is int and parsed.max_batch_bytes > 0
    assert parsed.metrics_port is None or (type(parsed.metrics_port) is int and 1 <= parsed.metrics_port <= 65535)
    for key in (parsed.curve_secret_key, parsed.curve_server_key):
        assert key is None or (isinstance(key, str) and key)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PARAMS | KNOWN)
def test_any_json_object_is_a_config_or_a_named_refusal(params):
    check(params)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ADDRESSED)
def test_any_json_object_with_an_address_is_a_config_or_a_named_refusal(params):
    check(params)


@pytest.mark.parametrize("params, named", [
    ({"address": "x", "timeout_s": 10**400}, "timeout_s"),
    ({"address": "x", "max_batch_mb": 10**400}, "max_batch_mb"),
    ({"address": "x", "max_batch_mb": 1e308}, "max_batch_mb"),
    ({"address": "x", "prefetch": 2**63}, "prefetch"),
])
def test_numbers_too_large_for_their_use_are_refused_naming_the_key(params, named):
    with pytest.raises(LayerParamError, match='"%s" must be' % named):
        LayerParams(json.dumps(params))


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, '{"address": ' + "[" * 100000 + "]" * 100000 + "}"])
def test_json_nested_beyond_the_parser_is_refused(text):
    with pytest.raises(LayerParamError, match="param_str"):
        LayerParams(text)


def test_not_json_at_all_is_refused():
    for text in ("{", "NaN", '"address"', "{'address': 'x'}"):
        with pytest.raises(LayerParamError, match="param_str"):
            LayerParams(text)
