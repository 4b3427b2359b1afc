"""Images/s against worker count and payload kind, measured in one run, as a table and a PNG.

    python -m bench.plot [--quick] [--output PNG]

For 1 and 2 loader workers and for uint8 pixels on the wire (the default),
``--wire-format float32`` and uint8 with ``--compress zstd``, a real server on the JPEG LMDB of
``bench.dataset`` (crop 227, mirror, mean values 104,117,123, batch 64)
sends to a ``BatchClient`` in this process that never reads the pixels
(``bench.server_rate``). Rounds alternate the six configurations, in a
rotated order; each figure is the median over rounds, and the plot shows
every run as a dot and the medians as lines.

Everything shares this machine's 2 cores: with 2 workers the supervisor,
ZeroMQ and the client have no core of their own.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import statistics
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from bench import dataset, report
from bench.children import Children
from harness.children import REPO, ChildError
from bench.server_rate import ServedStream

LOG_DIR = dataset.CACHE_DIR / "logs"
DEFAULT_OUTPUT = REPO / "bench" / "images_per_worker.png"
QUICK_OUTPUT = dataset.CACHE_DIR / "images_per_worker-quick.png"
WORKERS = (1, 2)
PAYLOADS = (("uint8 pixels (default)", "auto", ()), ("float32 (--wire-format float32)", "float32", ()),
            ("uint8 + zstd -3 (--compress zstd)", "auto", ("--compress", "zstd")))
FLOAT32 = PAYLOADS[1][0]


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: float
    warmup_batches: int


FULL = Plan(rounds=3, seconds=5.0, warmup_batches=30)
QUICK = Plan(rounds=1, seconds=2.5, warmup_batches=20)

Config = Tuple[int, str]  # (workers, payload name)


def measure(plan: Plan) -> Dict[Config, List[dict]]:
    configs = [(workers, payload, wire, extra) for workers in WORKERS for payload, wire, extra in PAYLOADS]
    runs: Dict[Config, List[dict]] = {(w, p): [] for w, p, _, _ in configs}
    source = "lmdb:%s" % dataset.jpeg_lmdb()
    with Children(LOG_DIR) as children:
        for round_number in range(plan.rounds):
            shift = round_number % len(configs)
            for workers, payload, wire, extra in configs[shift:] + configs[:shift]:
                name = "plot-server-%dw-%s%s-%d" % (workers, wire, "-".join(extra), round_number)
                with ServedStream(children, source, workers, wire, name=name, extra=extra) as stream:
                    stream.receive(plan.warmup_batches)
                    result = stream.measure(plan.seconds)
                runs[(workers, payload)].append(result)
                print("  round %d: %d worker(s), %-32s %5.0f images/s, %5.0f MB/s"
                      % (round_number + 1, workers, payload, result["images_s"], result["mb_s"]), file=sys.stderr)
    return runs


def draw(runs: Dict[Config, List[dict]], output: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for (payload, _wire, _extra), colour, offset in zip(PAYLOADS, ("tab:blue", "tab:orange", "tab:green"),
                                                        (-0.04, 0.0, 0.04)):
        medians = [statistics.median(r["images_s"] for r in runs[(w, payload)]) for w in WORKERS]
        axes.plot(WORKERS, medians, marker="o", color=colour, label=payload)
        for workers in WORKERS:
            values = [r["images_s"] for r in runs[(workers, payload)]]
            axes.scatter([workers + offset] * len(values), values, color=colour, alpha=0.35, s=14)
        for workers, value in zip(WORKERS, medians):
            axes.annotate("%.0f" % value, (workers, value), textcoords="offset points", xytext=(12, -3),
                          fontsize=8, color=colour)
    axes.set_xticks(WORKERS)
    axes.set_xlabel("loader workers (--workers)")
    axes.set_ylabel("images/s at the client")
    highest = max(r["images_s"] for results in runs.values() for r in results)
    axes.set_ylim(0, highest * 1.12)
    axes.set_xlim(0.6, 2.4)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title("zfeed server → BatchClient, JPEG 256px, crop 227, batch 64", fontsize=10)
    figure.text(0.01, 0.01, "\n".join(textwrap.wrap(subtitle, 120)), fontsize=6.5, color="0.35")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(str(output))
    plt.close(figure)


def table(plan: Plan, runs: Dict[Config, List[dict]]) -> str:
    rows = []
    for workers in WORKERS:
        for payload, _wire, _extra in PAYLOADS:
            images = [r["images_s"] for r in runs[(workers, payload)]]
            scaling = ""
            if workers != WORKERS[0]:
                one = [r["images_s"] for r in runs[(WORKERS[0], payload)]]
                scaling = "%.2f" % report.paired_ratio(images, one)
            float_runs = [r["images_s"] for r in runs[(workers, FLOAT32)]]
            versus_float = "%.2f" % report.paired_ratio(images, float_runs)
            rows.append(["%d" % workers, payload, "%.0f" % statistics.median(images),
                         "%.0f" % statistics.median(r["mb_s"] for r in runs[(workers, payload)]),
                         scaling, versus_float, report.runs(images)])
    return report.markdown_table(["workers", "payload", "images/s (median)", "MB/s on the wire",
                                  "ratio to 1 worker", "ratio to float32", "runs (images/s)"], rows) + "\n\n" + \
        "- %d rounds; each run: %d warm-up batches, then %.1f s. Ratios: median of the per-round ratios. " \
        "Server, its workers and the client share the 2 cores (and the machine with other test runs: " \
        "preliminary figures). Load average at the end: %s." \
        % (plan.rounds, plan.warmup_batches, plan.seconds, report.load_average())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--output", type=Path, help="PNG to write (default: %s; with --quick, %s, so that a "
                        "short run never replaces the README's figure)" % (DEFAULT_OUTPUT.relative_to(REPO),
                                                                           QUICK_OUTPUT.relative_to(REPO)))
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = QUICK if args.quick else FULL
    output = args.output or (QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT)
    head = report.machine_line("zfeed images/s per worker and payload (bench/plot.py)")
    start_load = "%.2f" % os.getloadavg()[0]
    try:
        runs = measure(plan)
    except ChildError as exc:
        print("bench.plot: %s\n(child logs in %s)" % (exc, LOG_DIR), file=sys.stderr)
        return 1
    subtitle = ("%s, %d CPUs (%s), load average %s at the start; %d round(s): dots are runs, lines medians; "
                "server, workers and client share the cores%s"
                % (datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), os.cpu_count() or 0,
                   report.cpu_model(), start_load, plan.rounds, " (--quick)" if args.quick else ""))
    draw(runs, output, subtitle)
    print("%s\n\n%s\n\nPlot: %s" % (head, table(plan, runs), output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
