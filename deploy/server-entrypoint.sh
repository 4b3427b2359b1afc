#!/bin/sh
# The server image's entry point: ZFEED_* environment variables become
# `python -m server` options, placed before the container's arguments (so
# that arguments win over the environment); then the server replaces this
# shell (exec), so that it is PID 1 and gets SIGTERM itself.
#
#   ZFEED_SOURCE          --source           ZFEED_CROP_SIZE       --crop-size
#   ZFEED_FROM_PROTOTXT   --from-prototxt    ZFEED_MIRROR          --mirror (1/true/yes or 0/false/no)
#   ZFEED_ROOT_FOLDER     --root-folder      ZFEED_MEAN_VALUE      --mean-value
#   ZFEED_PHASE           --phase            ZFEED_MEAN_FILE       --mean-file
#   ZFEED_BATCH_SIZE      --batch-size       ZFEED_SCALE           --scale
#   ZFEED_WORKERS         --workers          ZFEED_BIND            --bind, one per endpoint
#   ZFEED_SHUFFLE         --shuffle / --no-shuffle (1/true/yes or 0/false/no)
#   ZFEED_SEED            --seed; "hostname": a number from the host name (distinct replicas)
#   ZFEED_EPOCHS          --epochs           ZFEED_CONNECT         --connect, one per endpoint
#   ZFEED_SHARD           --shard            ZFEED_METRICS_PORT    --metrics-port (image: 9100)
#   ZFEED_MAX_INFLIGHT_MB --max-inflight-mb  ZFEED_STATE_DIR       --state-dir
#   ZFEED_ON_BAD_SAMPLE   --on-bad-sample    ZFEED_STREAM_ID       --stream-id
#   ZFEED_WIRE_FORMAT     --wire-format      ZFEED_COMPRESS        --compress
#
# Endpoint lists are separated by spaces or commas. Empty variables are
# ignored; any other option goes in the arguments. Exit status 2 (before the
# server starts) for a boolean that is not one.
set -eu
set -f  # no globbing: endpoints such as tcp://*:5555 must stay as they are

given=$#  # the container's own arguments, moved after ours at the end

fail() {
    echo "server-entrypoint: $*" >&2
    exit 2
}

boolean() {  # boolean NAME VALUE: prints true or false
    case "$2" in
        1|true|yes|TRUE|True|YES|Yes) echo true ;;
        0|false|no|FALSE|False|NO|No) echo false ;;
        *) fail "$1=$2: expected 1/true/yes or 0/false/no" ;;
    esac
}

for pair in SOURCE:--source FROM_PROTOTXT:--from-prototxt ROOT_FOLDER:--root-folder PHASE:--phase \
            BATCH_SIZE:--batch-size WORKERS:--workers SEED:--seed EPOCHS:--epochs SHARD:--shard \
            MAX_INFLIGHT_MB:--max-inflight-mb CROP_SIZE:--crop-size MEAN_VALUE:--mean-value \
            MEAN_FILE:--mean-file SCALE:--scale METRICS_PORT:--metrics-port STATE_DIR:--state-dir \
            ON_BAD_SAMPLE:--on-bad-sample STREAM_ID:--stream-id WIRE_FORMAT:--wire-format \
            COMPRESS:--compress; do
    name=ZFEED_${pair%%:*}
    eval "value=\${$name:-}"
    [ -n "$value" ] || continue
    if [ "$name" = ZFEED_SEED ] && [ "$value" = hostname ]; then
        # Replicas without an ordinal (docker compose --scale) differ by host name only.
        value=$(uname -n | cksum | cut -d ' ' -f 1)
    fi
    set -- "$@" "${pair#*:}" "$value"
done

# An assignment, not a test, so that a bad value stops the script (set -e).
mirror=$(boolean ZFEED_MIRROR "${ZFEED_MIRROR:-no}")
[ "$mirror" = false ] || set -- "$@" --mirror
if [ -n "${ZFEED_SHUFFLE:-}" ]; then
    shuffle=$(boolean ZFEED_SHUFFLE "$ZFEED_SHUFFLE")
    if [ "$shuffle" = true ]; then set -- "$@" --shuffle; else set -- "$@" --no-shuffle; fi
fi

IFS=' ,'
for endpoint in ${ZFEED_BIND:-}; do set -- "$@" --bind "$endpoint"; done
for endpoint in ${ZFEED_CONNECT:-}; do set -- "$@" --connect "$endpoint"; done

# Rotate the container's arguments (still first) to the end, in their order.
while [ "$given" -gt 0 ]; do
    set -- "$@" "$1"
    shift
    given=$((given - 1))
done

exec python -m server "$@"
