"""``ZmqDataLayer``: a Caffe Python layer whose tops come from a zfeed data server.

    layer {
      name: "data" type: "Python" top: "data" top: "label"
      python_param { module: "client_layer" layer: "ZmqDataLayer"
                     param_str: '{"address": "tcp://dataserver:5555"}' }
    }

``param_str`` is JSON, see ``LayerParams``. ``setup()`` learns the top shapes
from the first batch (which the first ``forward()`` then delivers);
``forward()`` copies each array once into its top blob; ``backward()`` does
nothing. The layer logs which share of its time ``forward()`` waited for data.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import List

import caffe

from client_layer.layer_metrics import LayerMetricsServer
from client_layer.receiver import DEFAULT_PREFETCH, DEFAULT_TIMEOUT_S, BatchClient

log = logging.getLogger("zfeed.layer")

WAIT_REPORT_INTERVAL_S = 30.0
DEFAULT_TOPS = ("data", "label")
_KEYS = ("address", "bind", "timeout_s", "tops", "prefetch", "max_batch_mb",
         "curve_secret_key", "curve_server_key", "metrics_port")


class LayerParams:
    """The layer's ``param_str``, parsed and checked."""

    def __init__(self, param_str: str):
        try:
            params = json.loads(param_str or "{}")
        except ValueError as exc:
            raise ValueError("ZmqDataLayer param_str is not JSON (%s): %r" % (exc, param_str)) from None
        if not isinstance(params, dict):
            raise ValueError("ZmqDataLayer param_str must be a JSON object, got %r" % param_str)
        unknown = sorted(set(params) - set(_KEYS))
        if unknown:
            raise ValueError("ZmqDataLayer param_str has unknown keys %s; known: %s"
                             % (unknown, ", ".join(_KEYS)))
        if not params.get("address") and not params.get("bind"):
            raise ValueError('ZmqDataLayer param_str needs "address" (e.g. "tcp://dataserver:5555") '
                             'or "bind" (e.g. "tcp://*:5555")')
        self.address = params.get("address")
        self.bind = params.get("bind")
        self.timeout_s = float(params.get("timeout_s", DEFAULT_TIMEOUT_S))
        self.tops: List[str] = list(params.get("tops", DEFAULT_TOPS))
        self.prefetch = int(params.get("prefetch", DEFAULT_PREFETCH))
        self.max_batch_bytes = int(float(params.get("max_batch_mb", 2048)) * 2**20)
        self.curve_secret_key = params.get("curve_secret_key")
        self.curve_server_key = params.get("curve_server_key")
        self.metrics_port = params.get("metrics_port")


def _ensure_log_output() -> None:
    # Caffe processes rarely configure Python logging; without this our lines vanish.
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s zfeed-layer %(levelname)s %(message)s"))
        logging.getLogger("zfeed").addHandler(handler)
        logging.getLogger("zfeed").setLevel(logging.INFO)


class ZmqDataLayer(caffe.Layer):
    """Tops filled from a zfeed stream; see the module docstring."""

    def setup(self, bottom, top):
        _ensure_log_output()
        if bottom:
            raise ValueError("ZmqDataLayer takes no bottoms, it has %d" % len(bottom))
        self.params = LayerParams(self.param_str)
        if len(top) != len(self.params.tops):
            raise ValueError("ZmqDataLayer has %d tops but delivers %d arrays (%s): "
                             "list the arrays in param_str \"tops\" or change the tops"
                             % (len(top), len(self.params.tops), ", ".join(self.params.tops)))
        self.client = BatchClient(self.params.address, self.params.bind, self.params.timeout_s,
                                  self.params.prefetch, self.params.max_batch_bytes,
                                  self.params.curve_secret_key, self.params.curve_server_key)
        self.pending = self.client.receive()
        # Caffe's top vector cannot be iterated from Python, only indexed.
        self.shapes = [self.pending.spec(name).shape for name in self.params.tops]
        for i, shape in enumerate(self.shapes):
            top[i].reshape(*shape)
        self.forward_count = 0
        self._set_up_at = time.monotonic()
        self._window_start = self._set_up_at
        self._window_wait_start = self.client.wait_s
        self._wait_at_set_up = self.client.wait_s
        self.metrics = None
        if self.params.metrics_port is not None:
            self.metrics = LayerMetricsServer(int(self.params.metrics_port), self._metric_values,
                                              {"phase": "train" if self.phase == 0 else "test"})
            log.info("layer metrics on http://0.0.0.0:%d/metrics", self.metrics.port)

    def reshape(self, bottom, top):
        pass  # shapes are fixed by the stream at setup; forward() refuses a change

    def forward(self, bottom, top):
        batch = self.pending if self.pending is not None else self.client.receive()
        self.pending = None
        for i, (name, shape) in enumerate(zip(self.params.tops, self.shapes)):
            if batch.spec(name).shape != shape:
                raise ValueError("batch %d from %s has %r of shape %s, the stream started with %s: "
                                 "every server feeding one layer must serve the same shapes"
                                 % (batch.seq, batch.stream, name, batch.spec(name).shape, shape))
            batch.copy_into(name, top[i].data)
        self.last_batch_indices = batch.indices
        self.last_batch_epochs = batch.epochs
        self.forward_count += 1
        self._maybe_report()

    def backward(self, top, propagate_down, bottom):
        pass

    def _metric_values(self) -> dict:
        elapsed = time.monotonic() - self._set_up_at
        client = self.client
        return {"zfeed_layer_batches_received_total": client.batches_received,
                "zfeed_layer_samples_received_total": client.samples_received,
                "zfeed_layer_rejected_messages_total": client.rejected,
                "zfeed_layer_wait_seconds_total": client.wait_s,
                "zfeed_layer_seconds_total": elapsed,
                "zfeed_layer_wait_share": (client.wait_s - self._wait_at_set_up) / elapsed if elapsed > 0 else 0.0}

    def wait_share(self) -> float:
        """Share of wall time since setup that forward() spent waiting for data."""
        elapsed = time.monotonic() - self._window_start
        return (self.client.wait_s - self._window_wait_start) / elapsed if elapsed > 0 else 0.0

    def _maybe_report(self) -> None:
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed < WAIT_REPORT_INTERVAL_S:
            return
        log.info("waited for data %.1f%% of the last %.0f s (%s)%s",
                 100.0 * self.wait_share(), elapsed, self.client.endpoints,
                 ": add data servers" if self.wait_share() > 0.05 else "")
        self._window_start = now
        self._window_wait_start = self.client.wait_s
