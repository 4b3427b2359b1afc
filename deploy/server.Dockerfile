# The zfeed data server. Build from the repository root:
#   docker build -f deploy/server.Dockerfile -t zfeed-server .
# Mount the data read-only and pass server flags as the command, e.g.
#   docker run -v /data/train_lmdb:/data/train_lmdb:ro -p 5555:5555 zfeed-server \
#       --source lmdb:/data/train_lmdb --batch-size 64 --crop-size 227 --mirror
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY requirements.txt /opt/zfeed/requirements.txt
RUN pip install --no-cache-dir -r /opt/zfeed/requirements.txt
COPY server /opt/zfeed/server
COPY client_layer /opt/zfeed/client_layer

RUN useradd --system --uid 10001 --no-create-home zfeed
USER zfeed
WORKDIR /opt/zfeed
EXPOSE 5555
# The server stops cleanly on SIGTERM (see NOTE [ Shutdown protocol ] in server/supervisor.py);
# it is PID 1 here, so exec form keeps the signal going to it and not to a shell.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "server"]
CMD ["--help"]
