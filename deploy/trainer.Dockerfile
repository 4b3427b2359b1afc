# A trainer with real Caffe (CPU): pycaffe from the kendryte-caffe wheel on Python 3.9 (as
# ./dev's .venv-caffe), zfeed's ZmqDataLayer (client_layer/) and the demo's trainer (demo/).
# Build from the repository root:
#   docker build -f deploy/trainer.Dockerfile -t zfeed-trainer .
# client_layer is on PYTHONPATH, so a net's `python_param { module: "client_layer" }` just works:
# mount your prototxts and run your pycaffe script. docker-compose.yml and deploy/k8s/ run the
# demo's: python demo/train.py SOLVER --test-samples N ..., as `python -m demo` does.
# The wheel is for Python 3.9 only: Debian bullseye's Python (bookworm has 3.11). The base image is
# Debian's own, which any machine that reaches Debian's archive can make (deploy/debian-base-image.sh).
FROM debian:bullseye-slim
# A virtual environment keeps pip's packages apart from Debian's; ca-certificates: pip's trust store.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/opt/zfeed \
    GLOG_minloglevel=2
COPY requirements-caffe.txt /opt/zfeed/requirements-caffe.txt
# The import is ./dev's check: the wheel has been seen to break with another numpy.
RUN pip install --no-cache-dir -r /opt/zfeed/requirements-caffe.txt && python -c "import caffe"
# The uid and gid of every zfeed image. /demo: a new named volume mounted there takes its owner.
RUN groupadd --system --gid 10001 zfeed \
    && useradd --system --uid 10001 --gid zfeed --no-create-home --home-dir /nonexistent zfeed \
    && mkdir /demo && chown zfeed:zfeed /demo
COPY client_layer /opt/zfeed/client_layer
COPY demo /opt/zfeed/demo
WORKDIR /opt/zfeed
USER zfeed
# Where the demo's layers bind; the data servers dial in (--connect).
EXPOSE 5555 5556
CMD ["python", "demo/train.py", "--help"]
