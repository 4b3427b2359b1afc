"""``python -m bench``: every zfeed benchmark in one run, as one Markdown table.

    python -m bench            full run (a few minutes), also written to bench/RESULTS.md (its
                               other benchmarks' sections, from the last --all, are kept)
    python -m bench --quick    short run, printed only
    python -m bench --all      then every other benchmark (bench.efficiency, .stall, .multihost,
                               .decoders, .compression, .plot), all into bench/RESULTS.md

Parts: (a) ``bench.transport`` — zfeed's send/receive path against raw
pyzmq; (b) ``bench.loader`` — images/s a real Caffe net gets from zfeed,
from Caffe's own Data layer and from a multiprocessing.Queue Python layer.
Every measurement runs in child processes (started in their own process
groups, joined with deadlines, killed on exit) on random free ports of
127.0.0.1. The Caffe side runs under ``$ZFEED_CAFFE_PYTHON`` (default
``<repo>/.venv-caffe/bin/python``). Progress goes to stderr, child logs to
``bench/.cache/logs/``, the table to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass
from typing import List

from bench import dataset, loader, transport
from bench.report import cpu_model
from bench.children import Children
from harness.children import REPO, ChildError, caffe_python, child_env

RESULTS = REPO / "bench" / "RESULTS.md"
LOG_DIR = dataset.CACHE_DIR / "logs"
TRANSPORT_TARGET = 0.95
DATA_LAYER_TARGET = 2.0
QUEUE_LAYER_TARGET = 5.0


@dataclass(frozen=True)
class Plan:
    transport_rounds: int
    transport_s: float
    transport_warmup_s: float
    loader_rounds: int
    batches: int
    warmup_batches: int


# Transport runs swing by +-30 % on this shared machine; 9 paired rounds steady the median.
FULL = Plan(transport_rounds=9, transport_s=4.0, transport_warmup_s=1.0,
            loader_rounds=3, batches=120, warmup_batches=30)
QUICK = Plan(transport_rounds=1, transport_s=2.0, transport_warmup_s=0.5,
             loader_rounds=1, batches=30, warmup_batches=20)


def check_caffe_python() -> str:
    """The Caffe Python's version; fails early, with the fix, if it lacks a module."""
    python = caffe_python()
    probe = subprocess.run([python, "-c", "import sys, caffe, cv2, lmdb, zmq, msgpack; print(sys.version.split()[0])"],
                           env=child_env(), capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        raise ChildError("%s cannot import what the benchmark needs (caffe, cv2, lmdb, zmq, msgpack); "
                         "the queue-layer baseline needs `pip install lmdb` there:\n%s"
                         % (python, probe.stderr.strip()[-2000:]))
    return probe.stdout.strip()


def header(caffe_version: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    return ("zfeed benchmark, %s. Machine: %d CPUs (nproc), %s; server and transport on Python %s, "
            "Caffe on Python %s; 1-minute load average %.2f at the start."
            % (now, os.cpu_count() or 0, cpu_model(), platform.python_version(), caffe_version, load))


def _runs(values: List[float], fmt: str = "%.0f") -> str:
    return ", ".join(fmt % v for v in values)


def _verdict(ratio: float, target: float) -> str:
    return "≥ %.2g (%s)" % (target, "met" if ratio >= target else "not met")


def paired_ratio(numerators: List[float], denominators: List[float]) -> float:
    """Median of the per-round ratios: each round's runs are back to back, so slow
    phases of a noisy machine hit both sides of a ratio."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def table(plan: Plan, wire: dict, loaders: dict) -> str:
    raw, zfeed = wire["raw"], wire["zfeed"]
    transport_ratio = paired_ratio([r["mb_s"] for r in zfeed["runs"]], [r["mb_s"] for r in raw["runs"]])
    rows = [
        ("(a) transport", "raw pyzmq PUSH/PULL, same frames (ceiling)",
         "%.0f MB/s, %.1f batches/s" % (raw["mb_s"], raw["batches_s"]), "", "",
         _runs([r["mb_s"] for r in raw["runs"]])),
        ("(a) transport", "zfeed: BatchSender on BatchSlots → BatchClient",
         "%.0f MB/s, %.1f batches/s" % (zfeed["mb_s"], zfeed["batches_s"]),
         "zfeed / raw = %.2f" % transport_ratio, _verdict(transport_ratio, TRANSPORT_TARGET),
         _runs([r["mb_s"] for r in zfeed["runs"]])),
    ]
    zfeed2 = loaders["zfeed, 2 workers"]["runs"]
    targets = {"Caffe Data layer": DATA_LAYER_TARGET,
               "multiprocessing.Queue layer, 2 loaders": QUEUE_LAYER_TARGET}
    for name, _, _ in loader.CONFIGS:
        runs = loaders[name]["runs"]
        ratio = verdict = ""
        if name in targets:
            value = paired_ratio(zfeed2, runs)
            ratio, verdict = "zfeed (2 workers) / this = %.2f" % value, _verdict(value, targets[name])
        rows.append(("(b) loader", name, "%.0f images/s" % loaders[name]["images_s"], ratio, verdict,
                     _runs(runs)))
    lines = ["| Part | Configuration | Median | Ratio | Target | Runs |",
             "|---|---|---|---|---|---|"]
    lines += ["| %s |" % " | ".join(row) for row in rows]
    notes = [
        "",
        "- Medians; the runs of each part alternate between its configurations, and a ratio is "
        "the median of the per-round ratios.",
        "- (a): %d round(s); 64 x 3 x 227 x 227 float32 batches (39.6 MB, the server's --wire-format float32), "
        "TCP on 127.0.0.1, sender "
        "and receiver in separate processes, %.0f s per run after %.1f s warm-up; MB/s counts every frame."
        % (plan.transport_rounds, plan.transport_s, plan.transport_warmup_s),
        "- (b): %d round(s); JPEG LMDB of %d 256x256 images, TRAIN transform crop 227 + mirror + mean "
        "104,117,123, batch 64, the server's default wire format; images/s of caffe.Net.forward() "
        "over %d batches after %d warm-up batches."
        % (plan.loader_rounds, dataset.IMAGE_COUNT, plan.batches, plan.warmup_batches),
        "- Everything runs on this one %d-CPU machine: the data server, its workers and the Caffe "
        "trainer share the same cores, and transport costs CPU on both ends. zfeed is built to "
        "put the loaders on other machines; this setup measures it without that advantage."
        % (os.cpu_count() or 0),
    ]
    return "\n".join(lines + notes)


RESULTS_HEAD = "# zfeed benchmark results\n\nWritten by `python3 -m bench`.\n\n"
SECTION = "\n## bench."


def earlier_sections() -> str:
    """The other benchmarks' sections of RESULTS.md, as the last ``--all`` run wrote them."""
    text = RESULTS.read_text() if RESULTS.is_file() else ""
    start = text.find(SECTION)
    return text[start:] if start >= 0 else ""


MORE = ("small_samples", "efficiency", "stall", "multihost", "decoders", "compression", "plot")


def run_more(quick: bool) -> str:
    """Run each of ``MORE`` as ``python -m bench.NAME``; their tables, one section each."""
    sections = []
    for name in MORE:
        print("bench.%s" % name, file=sys.stderr)
        command = [sys.executable, "-m", "bench." + name] + (["--quick"] if quick else [])
        result = subprocess.run(command, cwd=str(REPO), env=child_env(), capture_output=True, text=True,
                                timeout=1200)
        output = result.stdout.strip() or "(no output)"
        if result.returncode != 0:
            output += "\n\n`python -m bench.%s` exited %d: %s" % (name, result.returncode,
                                                                   result.stderr.strip()[-2000:])
        print(output + "\n")
        sections.append("%s%s\n\n%s\n" % (SECTION.lstrip("\n"), name, output))
    return "\n" + "\n".join(sections)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round; RESULTS.md is left alone")
    parser.add_argument("--all", action="store_true",
                        help="then every other benchmark too (%s): about 17 minutes" % ", ".join(MORE))
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    # SIGTERM unwinds like Ctrl-C, so every child is ended on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        caffe_version = check_caffe_python()
        first_line = header(caffe_version)
        lmdb = dataset.jpeg_lmdb()
        with Children(LOG_DIR) as children:
            print("(a) transport: %d round(s)" % plan.transport_rounds, file=sys.stderr)
            wire = transport.run(children, plan.transport_rounds, plan.transport_s, plan.transport_warmup_s)
            print("(b) loader: %d round(s)" % plan.loader_rounds, file=sys.stderr)
            loaders = loader.run(children, lmdb, plan.loader_rounds, plan.batches, plan.warmup_batches)
    except ChildError as exc:
        print("bench: %s\n(child logs in %s)" % (exc, LOG_DIR), file=sys.stderr)
        return 1
    report = "%s\n\n%s\n" % (first_line, table(plan, wire, loaders))
    print(report)
    if args.all:
        report += run_more(args.quick)
    if not args.quick:
        if not args.all:
            report += earlier_sections()
        RESULTS.write_text(RESULTS_HEAD + report)
        print("written to %s" % RESULTS.relative_to(REPO), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
