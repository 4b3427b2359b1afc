"""A trainer's own Prometheus endpoint: what its layer received and how long it waited.

The server cannot tell which trainer took which batch (ZeroMQ's PUSH socket
does not say), so each trainer reports its own deliveries here, with the
share of time ``forward()`` waited for data: the number that says when to
add servers. Standard library only (http.server in a daemon thread), as
client_layer may use nothing beyond numpy, pyzmq and msgpack.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict

# name -> (type, help)
METRICS = {
    "zfeed_layer_batches_received_total": ("counter", "Batches this layer received"),
    "zfeed_layer_samples_received_total": ("counter", "Samples this layer received"),
    "zfeed_layer_rejected_messages_total": ("counter", "Messages this layer dropped: malformed, or not of its stream's shapes"),
    "zfeed_layer_overlapping_shards_total": ("counter", "Pairs of data servers seen serving this layer the same shard"),
    "zfeed_layer_repeated_batches_total": ("counter", "Batches this layer dropped because it already had them "
                                                      "(sent again by a restarted server)"),
    "zfeed_layer_wait_seconds_total": ("counter", "Seconds forward() spent waiting for data"),
    "zfeed_layer_seconds_total": ("counter", "Seconds since the layer was set up"),
    "zfeed_layer_net_seconds_total": ("counter", "Seconds this layer's net ran: from each of its forward() "
                                                 "calls to the next forward() of any zfeed layer in the process"),
    "zfeed_layer_wait_share": ("gauge", "Share of the time this layer's net ran spent waiting for data"),
}


def render(values: Dict[str, float], labels: Dict[str, str]) -> str:
    """The Prometheus text exposition of ``values``."""
    label_text = ",".join('%s="%s"' % (k, str(v).replace("\\", "\\\\").replace('"', '\\"'))
                          for k, v in sorted(labels.items()))
    lines = []
    for name, (kind, text) in METRICS.items():
        lines += ["# HELP %s %s" % (name, text), "# TYPE %s %s" % (name, kind),
                  "%s{%s} %r" % (name, label_text, float(values[name]))]
    return "\n".join(lines) + "\n"


class LayerMetricsServer:
    """Serves ``render(collect(), labels)`` on ``/metrics`` at ``port`` until ``close()``."""

    def __init__(self, port: int, collect: Callable[[], Dict[str, float]], labels: Dict[str, str]):
        def respond(handler: BaseHTTPRequestHandler) -> None:
            if handler.path.split("?")[0] != "/metrics":
                handler.send_error(404)
                return
            body = render(collect(), labels).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "text/plain; version=0.0.4")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)

        handler_class = type("MetricsHandler", (BaseHTTPRequestHandler,),
                             {"do_GET": respond, "log_message": lambda *args: None})
        self._server = ThreadingHTTPServer(("", port), handler_class)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="zfeed-layer-metrics", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
