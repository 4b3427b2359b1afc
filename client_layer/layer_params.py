"""The layer's ``param_str``: JSON, parsed and checked once, at set-up, without Caffe.

Any JSON text gives either a ``LayerParams`` whose every field is of its
type and range, or a ``LayerParamError`` (a ValueError) that names the key
and says what it wants; never another exception type.
"""

from __future__ import annotations

import json
import math
from typing import List, Optional

from client_layer.receiver import DEFAULT_PREFETCH, DEFAULT_TIMEOUT_S

DEFAULT_TOPS = ("data", "label")
DEFAULT_MAX_BATCH_MB = 2048
MAX_BATCH_MB = 2**20  # a TiB: beyond that, a bigger limit guards nothing
MAX_PREFETCH = 2**31 - 1  # ZeroMQ's high-water marks are C ints
KEYS = ("address", "bind", "timeout_s", "tops", "prefetch", "max_batch_mb",
        "curve_secret_key", "curve_server_key", "metrics_port")


class LayerParamError(ValueError):
    """A ``param_str`` the layer cannot run with; the message names the key."""


def _invalid(key: str, value: object, wanted: str) -> LayerParamError:
    return LayerParamError('ZmqDataLayer param_str "%s" must be %s, got %s' % (key, wanted, json.dumps(value)))


def _endpoints(params: dict, key: str) -> Optional[List[str]]:
    value = params.get(key)
    if value is None:
        return None
    endpoints = [value] if isinstance(value, str) else value
    if not (isinstance(endpoints, list) and endpoints
            and all(isinstance(e, str) and e for e in endpoints)):
        raise _invalid(key, value, 'an endpoint string (e.g. "tcp://dataserver:5555") or a list of them')
    return endpoints


def _positive_number(params: dict, key: str, default: float, most: Optional[int] = None) -> float:
    value = params.get(key, default)
    wanted = "a positive, finite number" + (" of at most %d" % most if most is not None else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(key, value, wanted)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        raise _invalid(key, value, wanted) from None
    if not (math.isfinite(number) and number > 0 and (most is None or number <= most)):
        raise _invalid(key, value, wanted)
    return number


def _integer(params: dict, key: str, default: Optional[int], least: int, most: int, wanted: str) -> Optional[int]:
    """The integer under ``key``, or ``default`` when it is absent (or null, for an optional key)."""
    value = params.get(key, default)
    if (value is not None or default is not None) and (isinstance(value, bool) or not isinstance(value, int)
                                                       or not least <= value <= most):
        raise _invalid(key, value, wanted)
    return value


def _optional_string(params: dict, key: str) -> Optional[str]:
    value = params.get(key)
    if value is not None and not (isinstance(value, str) and value):
        raise _invalid(key, value, "a file path")
    return value


class LayerParams:
    """The layer's ``param_str``, parsed and checked: a bad value raises LayerParamError naming its key."""

    def __init__(self, param_str: str):
        try:
            params = json.loads(param_str or "{}")
        except ValueError as exc:
            raise LayerParamError("ZmqDataLayer param_str is not JSON (%s): %r" % (exc, param_str)) from None
        except RecursionError:
            raise LayerParamError("ZmqDataLayer param_str is nested too deeply to be its JSON object") from None
        if not isinstance(params, dict):
            raise LayerParamError("ZmqDataLayer param_str must be a JSON object, got %r" % param_str)
        unknown = sorted(set(params) - set(KEYS))
        if unknown:
            raise LayerParamError("ZmqDataLayer param_str has unknown keys %s; known: %s"
                                  % (unknown, ", ".join(KEYS)))
        self.address = _endpoints(params, "address")
        self.bind = _endpoints(params, "bind")
        if not self.address and not self.bind:
            raise LayerParamError('ZmqDataLayer param_str needs "address" (e.g. "tcp://dataserver:5555") '
                                  'or "bind" (e.g. "tcp://*:5555")')
        self.timeout_s = _positive_number(params, "timeout_s", DEFAULT_TIMEOUT_S)
        tops = params.get("tops", list(DEFAULT_TOPS))
        if not (isinstance(tops, list) and tops and all(isinstance(t, str) and t for t in tops)
                and len(set(tops)) == len(tops)):
            raise _invalid("tops", tops, 'a list of distinct array names, e.g. ["data", "label"]')
        self.tops: List[str] = tops
        self.prefetch: int = _integer(params, "prefetch", DEFAULT_PREFETCH, 1, MAX_PREFETCH,
                                      "an integer of at least 1 and at most %d" % MAX_PREFETCH)
        self.max_batch_bytes = math.ceil(_positive_number(params, "max_batch_mb", DEFAULT_MAX_BATCH_MB, MAX_BATCH_MB)
                                         * 2**20)  # a byte at least
        self.curve_secret_key = _optional_string(params, "curve_secret_key")
        self.curve_server_key = _optional_string(params, "curve_server_key")
        self.metrics_port: Optional[int] = _integer(params, "metrics_port", None, 1, 65535,
                                                    "a TCP port number from 1 to 65535")
