"""Loader efficiency: a real server's images/s per worker against the bare decode rate, same run.

    python -m bench.efficiency [--quick] [--svg]

- served: ``python -m server`` with 1 worker on the JPEG LMDB of
  ``bench.dataset`` (crop 227, mirror, mean values 104,117,123, batch 64,
  the default wire format: uint8 pixels), received by a ``BatchClient`` in
  this process that never reads the pixels (``bench.server_rate``);
- bare decode: ``server.decode.decode_image``, the server's own decode
  (the same decoder, chosen by the same rule: simplejpeg for these JPEGs,
  NOTE [ JPEGs through simplejpeg ]) of the same JPEG bytes, held in
  memory, in this process, one core.

- served, worker on its own core: the same server with its worker pinned
  to CPU 0, and its supervisor, this process's client and their ZeroMQ
  threads pinned to CPU 1, so that nothing preempts the worker: the worker's
  own rate, as on a server machine with a core per worker.

Rounds alternate the three; efficiency is the median of the per-round ratios
served / bare decode (target >= 0.85).

Then the worker is profiled: one more server run, sampled by py-spy
(``--idle --nonblocking``, raw collapsed stacks in
``bench/.cache/worker-profile.txt``; ``--svg`` also writes a flame graph,
``bench/.cache/worker.svg``, in a second sampling pass). Each sample is put
in a category by the source line the worker was executing (decode, LMDB
read, Datum parse, crop/mirror copy, waiting for work, answering the
supervisor, other Python), and each category is given in microseconds per
image.

Unpinned, on this 2-core machine, the worker has about one core; the
supervisor, ZeroMQ and the receiving client (TCP at about 450 MB/s) share
the other, and the scheduler moves them onto the worker's when that one is
busy.
"""

from __future__ import annotations

import argparse
import linecache
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import simplejpeg

from bench import dataset, report
from bench.children import Children, print_report
from harness.children import REPO, ChildError
from bench.decoders import jpeg_bytes
from bench.server_rate import ServedStream
from server.decode import COLOR_NATIVE, decode_image, simplejpeg_colorspace

LOG_DIR = dataset.CACHE_DIR / "logs"
PROFILE_RAW = dataset.CACHE_DIR / "worker-profile.txt"
PROFILE_SVG = dataset.CACHE_DIR / "worker.svg"
TARGET = 0.85
PY_SPY = str(Path(sys.executable).parent / "py-spy")
PY_SPY_RATE = 200
WORKER_CPU, SERVER_CPU = 0, 1  # the pinned placement
SERVED, PINNED, DECODE = "served", "pinned", "decode"


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: float
    warmup_batches: int
    profile_s: float


FULL = Plan(rounds=5, seconds=6.0, warmup_batches=30, profile_s=10.0)
QUICK = Plan(rounds=1, seconds=3.0, warmup_batches=20, profile_s=4.0)


def decoder_name(images: List[bytes]) -> str:
    """Which decoder ``decode_image`` runs on ``images`` (the server's rule, as the server applies it)."""
    fast = sum(simplejpeg_colorspace(data, COLOR_NATIVE) is not None for data in images)
    if fast == len(images):
        return "simplejpeg"
    return "OpenCV" if not fast else "simplejpeg for %d, OpenCV for %d" % (fast, len(images) - fast)


def decoder_versions() -> str:
    return "simplejpeg %s, OpenCV %s" % (simplejpeg.__version__, cv2.__version__)


def bare_decode(images: List[bytes], seconds: float) -> Dict[str, float]:
    """The server's ``decode_image`` over ``images`` (no force_color/force_gray, as the served
    LMDB) for ``seconds``: images/s of wall time and per CPU-second of this thread."""
    count = 0
    start, cpu_start = time.perf_counter(), time.thread_time()
    while True:
        for data in images:
            decode_image(data, COLOR_NATIVE)
        count += len(images)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return {"images_s": count / elapsed, "images_per_cpu_s": count / (time.thread_time() - cpu_start)}


def served(children: Children, source: str, plan: Plan, name: str, pinned: bool = False) -> Dict[str, float]:
    """A 1-worker server's rate; ``pinned``: its worker alone on WORKER_CPU, everything else on SERVER_CPU."""
    allowed = os.sched_getaffinity(0)
    if pinned:
        os.sched_setaffinity(0, {SERVER_CPU})  # this thread, and the client's ZeroMQ threads it starts
    try:
        with ServedStream(children, source, workers=1, name=name, cpus={SERVER_CPU} if pinned else None) as stream:
            stream.receive(1)  # the worker exists now
            if pinned:
                for pid in stream.worker_pids():
                    os.sched_setaffinity(pid, {WORKER_CPU})
            stream.receive(plan.warmup_batches - 1)
            measured = stream.measure(plan.seconds)
    finally:
        os.sched_setaffinity(0, allowed)
    return {"images_s": measured["images_s"], "images_per_cpu_s": measured["images_per_worker_cpu_s"]}


# -- the profile ---------------------------------------------------------------------------

# Categories, tried in order on the source line the worker's innermost Python frame was on.
CATEGORIES: Tuple[Tuple[str, str, str], ...] = (
    # (category, file suffix, text the line contains)
    ("JPEG decode (simplejpeg)", "server/decode.py", "simplejpeg.decode_jpeg("),
    ("JPEG decode (OpenCV)", "server/decode.py", "cv2.imdecode("),
    ("choosing the decoder, checking the image", "server/decode.py", ""),
    ("LMDB read (txn.get)", "server/sources/datum_db.py", "_txn.get"),
    ("Datum parse (ParseFromString)", "server/sources/datum_db.py", "ParseFromString"),
    ("crop + mirror copy into the slot", "server/transform.py", "cv2.flip("),
    ("crop + mirror copy into the slot", "server/transform.py", "cv2.split("),
    ("crop + mirror copy into the slot", "server/transform.py", "target[...] = image"),
    ("waiting for a task (pipe poll)", "server/worker.py", "connection.poll"),
    ("receiving a task (pipe recv, unpickling)", "server/worker.py", "connection.recv"),
    ("answering the supervisor (pipe send)", "server/worker.py", "connection.send"),
)
OTHER = "other Python (per-sample bookkeeping, checks, allocation)"


def _frame_location(frame: str) -> Tuple[str, str, int]:
    """(function, file, line) of a py-spy frame ``function (file:line)``."""
    function, _, rest = frame.rpartition(" (")
    path, _, line = rest.rstrip(")").rpartition(":")
    return function, path, int(line) if line.isdigit() else 0


def classify(stack: str) -> Tuple[str, str]:
    """(category, innermost repo function) of one collapsed stack."""
    frames = [_frame_location(f) for f in stack.split(";") if " (" in f]
    for function, path, line in reversed(frames):
        if str(REPO) not in path and not path.startswith(("server/", "bench/")):
            continue  # a library's frame: the repo line that called it says what it is for
        text = linecache.getline(path if path.startswith("/") else str(REPO / path), line)
        for category, suffix, needle in CATEGORIES:
            if path.endswith(suffix) and needle in text:
                return category, function
        return OTHER, function
    return OTHER, frames[-1][0] if frames else "?"


def summarize_profile(raw: Path) -> Tuple[Counter, Counter, int]:
    categories: Counter = Counter()
    functions: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        category, function = classify(stack)
        categories[category] += int(count)
        if category == OTHER:
            functions[function] += int(count)
        total += int(count)
    return categories, functions, total


def profile(children: Children, source: str, plan: Plan, svg: bool) -> Dict[str, object]:
    """Sample the one worker of a serving server with py-spy; categories in us/image."""
    with ServedStream(children, source, workers=1, name="efficiency-profiled-server") as stream:
        stream.receive(plan.warmup_batches)
        workers = stream.worker_pids()
        if len(workers) != 1:
            raise ChildError("expected one loader worker under the server, found %s" % workers)
        passes = [("raw", PROFILE_RAW)] + ([("flamegraph", PROFILE_SVG)] if svg else [])
        measured = None
        for fmt, out in passes:
            spy = children.start("efficiency-py-spy-%s" % fmt,
                                 [PY_SPY, "record", "--pid", str(workers[0]), "--duration", str(int(plan.profile_s)),
                                  "--rate", str(PY_SPY_RATE), "--format", fmt, "--idle", "--nonblocking",
                                  "--output", str(out)])
            time.sleep(0.5)  # py-spy attaches
            rate = stream.measure(plan.profile_s - 1.0)
            if measured is None:
                measured = rate
            status = spy.wait(plan.profile_s + 30)  # ChildError, with its log, when it overruns
            children.stop(spy)
            if status != 0:
                raise spy.error("exited with status %s" % status)
    categories, functions, total = summarize_profile(PROFILE_RAW)
    us_per_image = 1e6 / measured["images_s"]
    return {"categories": categories, "functions": functions, "total": total,
            "us_per_image": us_per_image, "images_s": measured["images_s"]}


def profile_table(result: Dict[str, object]) -> str:
    categories: Counter = result["categories"]
    total = result["total"]
    per_image = result["us_per_image"]
    rows = [[name, "%.1f %%" % (100.0 * n / total), "%.0f" % (per_image * n / total)]
            for name, n in categories.most_common()]
    table = report.markdown_table(["where the worker's time goes", "share of samples", "µs per image"], rows)
    others = result["functions"]
    other_total = categories.get(OTHER, 0) or 1
    detail = ", ".join("%s %.0f %%" % (name, 100.0 * n / other_total) for name, n in others.most_common(6))
    return "%s\n\n- %d py-spy samples at %d Hz (idle included) while the server delivered %.0f images/s " \
           "(%.0f µs per image of worker wall time). \"Other Python\" by innermost function: %s." \
           % (table, total, PY_SPY_RATE, result["images_s"], per_image, detail)


# -- the run -------------------------------------------------------------------------------

def run(plan: Plan, svg: bool) -> str:
    head = report.machine_line("zfeed loader efficiency (bench/efficiency.py)")
    lmdb = dataset.jpeg_lmdb()
    source = "lmdb:%s" % lmdb
    images = jpeg_bytes(lmdb)
    decoder = decoder_name(images)
    kinds = (SERVED, PINNED, DECODE) if len(os.sched_getaffinity(0)) >= 2 else (SERVED, DECODE)
    runs: Dict[str, List[Dict[str, float]]] = {kind: [] for kind in kinds}
    with Children(LOG_DIR) as children:
        for round_number in range(plan.rounds):
            # Rotate which goes first, so a trend in the machine's load hits all alike.
            shift = round_number % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                if kind == DECODE:
                    runs[kind].append(bare_decode(images, plan.seconds))
                else:
                    runs[kind].append(served(children, source, plan, "efficiency-%s-%d" % (kind, round_number),
                                             pinned=kind == PINNED))
            print("  round %d: %s" % (round_number + 1, ", ".join(
                "%s %.0f images/s (%.0f per CPU-s)" % (kind, runs[kind][-1]["images_s"],
                                                       runs[kind][-1]["images_per_cpu_s"]) for kind in kinds)),
                  file=sys.stderr)
        print("  profiling the worker with py-spy", file=sys.stderr)
        profiled = profile(children, source, plan, svg)

    def series(kind: str, key: str) -> List[float]:
        return [r[key] for r in runs[kind]]

    names = {DECODE: "bare decode: the server's decode_image (%s), 1 process" % decoder,
             SERVED: "zfeed server, 1 worker → BatchClient",
             PINNED: "the same, worker on its own core (CPU %d; supervisor and client on CPU %d)"
                     % (WORKER_CPU, SERVER_CPU)}
    rows = []
    for kind in (DECODE,) + tuple(k for k in kinds if k != DECODE):
        wall, cpu = statistics.median(series(kind, "images_s")), statistics.median(series(kind, "images_per_cpu_s"))
        ratio = cpu_ratio = verdict = ""
        if kind != DECODE:
            efficiency = report.paired_ratio(series(kind, "images_s"), series(DECODE, "images_s"))
            cpu_efficiency = report.paired_ratio(series(kind, "images_per_cpu_s"), series(DECODE, "images_per_cpu_s"))
            ratio, cpu_ratio, verdict = "%.2f" % efficiency, "%.2f" % cpu_efficiency, report.verdict(efficiency, TARGET)
        rows.append([names[kind], "%.0f" % wall, "%.0f" % (1e6 / wall), ratio, verdict,
                     "%.0f" % cpu, cpu_ratio, report.runs(series(kind, "images_s"))])
    table = report.markdown_table(["Configuration", "images/s (median)", "µs per image",
                                   "efficiency (served / decode)", "target", "images per CPU-second",
                                   "CPU efficiency", "runs (images/s)"], rows)
    notes = [
        "",
        "- %d rounds; served: %d warm-up batches, then %.0f s of batches; bare decode: %.0f s over the same "
        "%d JPEGs (256x256, q90) held in memory, decoded by the server's own decode_image: %s (%s), as the "
        "worker decodes them. Efficiency: median of the per-round ratios of images/s. "
        "CPU efficiency: the same with images per CPU-second (the worker's utime + stime from /proc; "
        "the decode thread's time), which a shared machine disturbs less."
        % (plan.rounds, plan.warmup_batches, plan.seconds, plan.seconds, len(images), decoder, decoder_versions()),
        "- Transform: TRAIN, crop 227, mirror, mean values 104,117,123, batch 64, uint8 pixels on the wire. "
        "Unpinned, the worker has about one core; the supervisor, ZeroMQ and the client (TCP at the rate "
        "above) share the other and spill onto the worker's. Pinned, nothing else is allowed on the "
        "worker's CPU (kernel work aside). The machine is shared: preliminary figures. Load average at "
        "the end: %s." % report.load_average(),
        "",
        profile_table(profiled),
        "- Raw stacks: %s%s." % (PROFILE_RAW.relative_to(REPO),
                                 ", flame graph: %s" % PROFILE_SVG.relative_to(REPO) if svg else ""),
    ]
    return "\n".join([head, "", table] + notes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.efficiency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--svg", action="store_true", help="also write a py-spy flame graph")
    args = parser.parse_args(argv)
    return print_report("bench.efficiency", LOG_DIR, lambda: run(QUICK if args.quick else FULL, args.svg))


if __name__ == "__main__":
    sys.exit(main())
