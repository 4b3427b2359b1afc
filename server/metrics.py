"""Prometheus metrics of the data server (``--metrics-port``).

Counters and gauges live in a registry of their own and are served by
prometheus-client's HTTP thread on ``/metrics``. The supervisor updates
them from its loop; nothing here blocks it. Trainers connected is read
from ZeroMQ's socket monitor. ZeroMQ's PUSH socket does not say which
trainer took which batch, so deliveries are counted per server, not per
trainer; each trainer's layer logs its own count and waiting share.
"""

from __future__ import annotations

from typing import Optional

import zmq
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from zmq.utils.monitor import recv_monitor_message

_CONNECTED = {zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED}
_GONE = {zmq.EVENT_DISCONNECTED}


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
        self._monitor: Optional[zmq.Socket] = None

    def watch(self, socket: zmq.Socket) -> zmq.Socket:
        """Start counting connections of ``socket``; returns the monitor socket to poll."""
        self._monitor = socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        return self._monitor

    def read_monitor(self) -> None:
        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event in _CONNECTED:
                self.trainers.inc()
            elif event in _GONE:
                self.trainers.dec()

    def close(self, socket: Optional[zmq.Socket]) -> None:
        if self._monitor is not None:
            if socket is not None and not socket.closed:
                socket.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        server, _thread = self._server
        server.shutdown()
