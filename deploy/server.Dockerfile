# The zfeed data server, and (target demo-dataset) the demo's data set builder.
# Build from the repository root:
#   docker build -f deploy/server.Dockerfile -t zfeed-server .
#   docker build -f deploy/server.Dockerfile --target demo-dataset -t zfeed-demo-dataset .
# Configure the server with ZFEED_* variables, which the server reads itself (`python -m server
# --help` and docs/operations.md list them), or with server flags after the image name (flags
# win). Mount the data read-only:
#   docker run -v /data:/data:ro -p 5555:5555 -e ZFEED_SOURCE=lmdb:/data/train_lmdb \
#       -e ZFEED_CROP_SIZE=227 -e ZFEED_MIRROR=1 -e ZFEED_MEAN_VALUE=104,117,123 zfeed-server
# Debian's own image and Python (3.11 in bookworm), so that any machine that reaches Debian's
# archive can make the base image (deploy/debian-base-image.sh; CI does) and build this.
FROM debian:bookworm-slim AS base
# The packages go into a virtual environment: Debian's Python refuses pip's installs (PEP 668).
# ca-certificates: the trust store pip uses to reach the package index.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/opt/zfeed
COPY requirements.txt /opt/zfeed/requirements.txt
RUN pip install --no-cache-dir -r /opt/zfeed/requirements.txt
# One uid and gid, 10001, in every zfeed image: they share volumes, and deploy/k8s/ runs as it.
RUN groupadd --system --gid 10001 zfeed \
    && useradd --system --uid 10001 --gid zfeed --no-create-home --home-dir /nonexistent zfeed
COPY server /opt/zfeed/server
COPY client_layer /opt/zfeed/client_layer
WORKDIR /opt/zfeed

# The demo's data set and prototxts: docker-compose.yml's dataset service, deploy/k8s/'s init containers.
FROM base AS demo-dataset
RUN pip install --no-cache-dir scikit-learn==1.9.1
COPY demo /opt/zfeed/demo
COPY deploy/demo_setup.py /opt/zfeed/deploy/demo_setup.py
# A new named volume mounted on /demo takes this folder's owner, so that the user can write to it.
RUN mkdir /demo && chown zfeed:zfeed /demo
USER zfeed
ENTRYPOINT ["python", "/opt/zfeed/deploy/demo_setup.py"]

# The data server: the default target (the last stage).
FROM base AS server
COPY deploy/healthcheck.py /opt/zfeed/deploy/healthcheck.py
# The health check reads this port; set it (not --metrics-port) to move it. 0 turns metrics off.
ENV ZFEED_METRICS_PORT=9100
USER zfeed
EXPOSE 5555 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/zfeed/deploy/healthcheck.py"]
# The server stops cleanly on SIGTERM (NOTE [ Shutdown protocol ] in server/supervisor.py). It is
# PID 1 itself, no shell in between, and handles SIGTERM from its first statements on (server/__main__.py).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "server"]
CMD []
