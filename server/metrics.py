"""Prometheus metrics of the data server (``--metrics-port``).

Counters and gauges live in a registry of their own and are served by
prometheus-client's HTTP thread on ``/metrics``. The supervisor updates
them from its loop; nothing here blocks it. Trainers connected comes
from the sender's socket monitor (``BatchSender.trainers``). ZeroMQ's PUSH socket does not say which
trainer took which batch, so deliveries are counted per server, not per
trainer; each trainer's layer logs its own count and waiting share.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class ServerMetrics:
    def __init__(self, port: int, stream_id: str, bind_address: str = "0.0.0.0"):
        self.registry = CollectorRegistry()
        labels = {"stream": stream_id}

        def counter(name, text):
            return Counter(name, text, list(labels), registry=self.registry).labels(**labels)

        def gauge(name, text):
            return Gauge(name, text, list(labels), registry=self.registry).labels(**labels)

        self.batches = counter("zfeed_batches_sent", "Batches handed to ZeroMQ")
        self.samples = counter("zfeed_samples_sent", "Samples in the batches handed to ZeroMQ")
        self.bytes = counter("zfeed_bytes_sent", "Array bytes (compressed, with --compress) in the batches handed to ZeroMQ")
        self.restarts = counter("zfeed_worker_restarts", "Loader workers restarted after dying")
        self.skipped = counter("zfeed_samples_skipped", "Samples skipped as bad (each occurrence)")
        self.queued_batches = gauge("zfeed_queued_batches", "Batches being built, waiting or in ZeroMQ")
        self.queued_bytes = gauge("zfeed_queued_bytes", "Bytes of the batches being built, waiting or in ZeroMQ")
        self.workers_busy = gauge("zfeed_workers_busy", "Loader workers with work")
        self.trainers = gauge("zfeed_trainers_connected", "Trainer connections on the PUSH socket")
        self._server = start_http_server(port, addr=bind_address, registry=self.registry)

    def close(self) -> None:
        server, _thread = self._server
        server.shutdown()
