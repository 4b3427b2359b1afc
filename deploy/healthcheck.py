"""The server image's HEALTHCHECK: exit 0 when the server answers on its metrics port, else 1.

The server serves ``/metrics`` from just before it binds its socket, once
its configuration and data were checked, until it stops (server/metrics.py,
server/supervisor.py); a server that cannot bind exits. So an answer means
that the process is up and got through start-up. It does not mean that
trainers are taking batches: a server waiting for a trainer is healthy.
The port is ``$ZFEED_METRICS_PORT`` (the image sets 9100). With metrics off
there is no signal, and the check says so and fails.
Standard library only, so that it starts fast.
"""

import os
import sys
import urllib.request

TIMEOUT_S = 3.0
EXPECTED_METRIC = b"zfeed_batches_sent"  # one of the server's own series (server/metrics.py)


def main() -> int:
    port = os.environ.get("ZFEED_METRICS_PORT", "")
    if not port.isdigit() or int(port) == 0:
        print("healthcheck: metrics are off (ZFEED_METRICS_PORT=%r): no health signal; "
              "set ZFEED_METRICS_PORT, not --metrics-port" % port, file=sys.stderr)
        return 1
    url = "http://127.0.0.1:%s/metrics" % port
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            body = response.read()
    except OSError as exc:
        print("healthcheck: %s: %s" % (url, exc), file=sys.stderr)
        return 1
    if EXPECTED_METRIC not in body:
        print("healthcheck: %s answers but without %s: not a zfeed server" % (url, EXPECTED_METRIC.decode()),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
