"""``ZmqDataLayer``: a Caffe Python layer whose tops come from a zfeed data server.

    layer {
      name: "data" type: "Python" top: "data" top: "label"
      python_param { module: "client_layer" layer: "ZmqDataLayer"
                     param_str: '{"address": "tcp://dataserver:5555"}' }
    }

``param_str`` is JSON, see ``layer_params.LayerParams``. ``setup()`` learns the top shapes
from the first batch (which the first ``forward()`` then delivers);
``forward()`` copies each array once into its top blob; ``backward()`` does
nothing. A batch whose shapes differ from the stream's first is dropped and
counted, never raised: anyone who can reach a binding trainer could send one.

The layer logs which share of the time its net ran ``forward()`` waited for
data (``NetTime``). Under Caffe's command-line tool, Ctrl-C during that wait
reaches Caffe's own handler at once (``host_sigint``): this forward leaves the
previous batch in the tops, and the solver acts as ``-sigint_effect`` says
(default: snapshot and stop after this iteration).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Optional

import caffe

from client_layer import host_sigint
from client_layer.layer_metrics import LayerMetricsServer
from client_layer.batch import Batch
from client_layer.layer_params import LayerParamError, LayerParams
from client_layer.receiver import BatchClient, ReceiveInterrupted

log = logging.getLogger("zfeed.layer")

WAIT_REPORT_INTERVAL_S = 30.0
# The handler this module adds to the "zfeed" logger, once per process however many layers there are.
_LOG_HANDLER = logging.StreamHandler(sys.stderr)
_LOG_HANDLER.setFormatter(logging.Formatter("%(asctime)s zfeed-layer %(levelname)s %(message)s"))


def _ensure_log_output() -> None:
    # Caffe processes rarely configure Python logging; without this our lines vanish.
    zfeed_log = logging.getLogger("zfeed")
    if logging.getLogger().handlers or _LOG_HANDLER in zfeed_log.handlers:
        return
    zfeed_log.addHandler(_LOG_HANDLER)
    zfeed_log.setLevel(logging.INFO)


class NetTime:
    """Seconds a layer's net ran, counted from each of its ``forward()`` calls to the next
    ``forward()`` of any zfeed layer in the process.

    A solver's train and test nets take turns: the time between two forwards of
    the test layer includes all the training between two test passes, which
    the test net did not run. Splitting the process's time at every forward
    gives each net the time from its data layer to the next net's data layer.
    """

    _running: Optional["NetTime"] = None  # whose net runs now: one per process
    _since = 0.0

    def __init__(self) -> None:
        self._closed_s = 0.0

    def forward_started(self) -> None:
        now = time.monotonic()
        running = NetTime._running
        if running is not None:
            running._closed_s += now - NetTime._since
        NetTime._running, NetTime._since = self, now

    def seconds(self) -> float:
        running_now = time.monotonic() - NetTime._since if NetTime._running is self else 0.0
        return self._closed_s + running_now


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
        self.forward_count = 0
        self.net_time = NetTime()
        self._set_up_at = time.monotonic()
        self._wait_at_set_up = 0.0
        self.metrics = None
        if self.params.metrics_port is not None:
            self.metrics = self._serve_metrics(self.params.metrics_port)
        self.pending = self._receive()
        if self.pending is None:
            raise KeyboardInterrupt("interrupted while waiting for the first batch (%s)" % self.client.endpoints)
        # Caffe's top vector cannot be iterated from Python, only indexed.
        self.shapes = [self.pending.spec(name).shape for name in self.params.tops]
        for i, shape in enumerate(self.shapes):
            top[i].reshape(*shape)
        self._wait_at_set_up = self.client.wait_s
        self._window_start = time.monotonic()
        self._window_net_s = 0.0
        self._window_wait_s = self.client.wait_s

    def _serve_metrics(self, port: int) -> LayerMetricsServer:
        try:
            metrics = LayerMetricsServer(port, self._metric_values,
                                         {"phase": "train" if self.phase == 0 else "test"})
        except OSError as exc:
            self.client.close()
            raise LayerParamError('ZmqDataLayer param_str "metrics_port": cannot serve metrics on port %d (%s): '
                                  'choose a free port, or leave "metrics_port" out' % (port, exc.strerror or exc)) from None
        log.info("layer metrics on http://0.0.0.0:%d/metrics", metrics.port)
        return metrics

    def reshape(self, bottom, top):
        pass  # shapes are fixed by the stream at setup; forward() drops a batch of other shapes

    def _receive(self) -> Optional[Batch]:
        """The next batch, or None when a SIGINT lent by the host ended the wait."""
        ready = self.client.next_received()
        if ready is not None:  # no wait: no SIGINT to lend (which costs more than the batch itself)
            return ready
        try:
            with host_sigint.lent_to_python() as sigint:
                return self.client.receive(sigint.received)
        except ReceiveInterrupted:
            return None

    def _mismatch(self, batch: Batch) -> Optional[str]:
        for name, shape in zip(self.params.tops, self.shapes):
            if name not in batch.names:
                return "a batch without array %r (it has %s)" % (name, ", ".join(batch.names))
            if batch.spec(name).shape != shape:
                return ("a batch whose %r has shape %s, the stream started with %s: every server feeding "
                        "one layer must serve the same shapes" % (name, batch.spec(name).shape, shape))
        return None

    def forward(self, bottom, top):
        self.net_time.forward_started()
        batch, self.pending = self.pending, None
        while True:
            if batch is None:
                batch = self._receive()
                if batch is None:
                    host_sigint.pass_to_host()
                    log.warning("SIGINT while waiting for data (%s): passed on to Caffe, whose -sigint_effect "
                                "decides (by default: snapshot and stop after this iteration, which repeats "
                                "the previous batch)", self.client.endpoints)
                    return  # the tops keep the previous batch
            cause = self._mismatch(batch)
            if cause is None:
                break
            self.client.reject(cause)
            batch = None
        for i, name in enumerate(self.params.tops):
            batch.copy_into(name, top[i].data)
        self.last_batch_indices = batch.indices
        self.forward_count += 1
        self._maybe_report()

    def backward(self, top, propagate_down, bottom):
        pass

    def _metric_values(self) -> dict:
        client = self.client
        net_s = self.net_time.seconds()
        return {"zfeed_layer_batches_received_total": client.batches_received,
                "zfeed_layer_samples_received_total": client.samples_received,
                "zfeed_layer_rejected_messages_total": client.rejected,
                "zfeed_layer_overlapping_shards_total": client.overlapping_shards,
                "zfeed_layer_repeated_batches_total": client.repeated,
                "zfeed_layer_wait_seconds_total": client.wait_s,
                "zfeed_layer_seconds_total": time.monotonic() - self._set_up_at,
                "zfeed_layer_net_seconds_total": net_s,
                "zfeed_layer_wait_share": (client.wait_s - self._wait_at_set_up) / net_s if net_s > 0 else 0.0}

    def wait_share(self) -> float:
        """Share of the time this layer's net ran (``NetTime``) since the last report that
        forward() spent waiting for data."""
        net_s = self.net_time.seconds() - self._window_net_s
        return (self.client.wait_s - self._window_wait_s) / net_s if net_s > 0 else 0.0

    def _maybe_report(self) -> None:
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed < WAIT_REPORT_INTERVAL_S:
            return
        share = self.wait_share()
        log.info("%s net: waited for data %.1f%% of the %.1f s it ran in the last %.0f s (%s)%s",
                 "train" if self.phase == 0 else "test", 100.0 * share,
                 self.net_time.seconds() - self._window_net_s, elapsed, self.client.endpoints,
                 ": add data servers" if share > 0.05 else "")
        self._window_start = now
        self._window_net_s = self.net_time.seconds()
        self._window_wait_s = self.client.wait_s
