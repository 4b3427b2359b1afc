"""Trainer stall: what feeding a real Caffe solver from zfeed costs it, against DummyData, same run.

    python -m bench.stall [--quick]

Two nets, each trained on 64 x 3 x 227 x 227 batches: BVLC's reference
CaffeNet (about 4.5 s per iteration on one of these cores), the real net
the issue's shapes come from, fed by the JPEG LMDB server; and a small
two-conv net (about 0.4 s), on which each batch's fixed cost weighs ten
times as much, fed by all three servers below. For each net, one Caffe
process (``bench/caffe_stall_net.py`` in the Caffe Python) trains it with
one solver per data source, in interleaved rounds (a rotated order each
round):

- ``DummyData``: constant fillers of the same shapes, in memory (the baseline);
- in-memory Python layers (``MemoryBatchLayer``): 4 batches of real crops,
  or of zeros, held in the trainer and delivered by the same
  ``Batch.copy_into`` as ZmqDataLayer: the layer's copy without network or
  server, and what real pixel values (rather than a constant) cost the net;
- ``zfeed, raw LMDB, uint8``: ``ZmqDataLayer`` fed by a server with 1 worker
  from an LMDB of raw (not encoded) 256x256 Datums, so the server is cheap
  and what is measured is the layer's own cost (receive, finish uint8 pixels
  into the blob);
- ``zfeed, raw LMDB, float32``: the same with ``--wire-format float32``;
- ``zfeed, JPEG LMDB, uint8``: the same server decoding the JPEG LMDB of
  ``bench.dataset`` with 1 worker: on this 2-core machine its decoding
  shares the cores with the trainer.

A constant input is spared a cost real images have: Caffe's CPU max
pooling runs slower on real pixel values than on a constant, whatever
delivers them. So each net's layers are also timed
one by one on zeros and on real crops (``layer-times``), and every zfeed
feed is also compared with the in-memory layer of the same real pixels.

Every server applies crop 227 (random), mirror and mean values 104,117,123.
The stall of a configuration is the median over rounds of its time per
iteration divided by DummyData's in the same round, minus one (target
<= 3 % when the server keeps up, i.e. when no batch was late: every batch
had fully arrived when ``forward()`` asked for it).

All of that runs twice, in two placements, each with its own trainer
process and servers:

- server on its own core (the deployment zfeed is for, with the servers on
  other machines): the trainer pinned to one CPU, the servers (supervisor
  and workers) to another, the trainer's BLAS at one thread, so what the
  trainer pays is zfeed's work in its own process, not CPU time taken by
  the servers' decoding;
- server and trainer sharing the machine's cores, nothing pinned.

The data layer's own ``forward()`` time is measured in place, and the
Caffe thread's CPU time beside the wall time. Then ``forward-cost``: the
layer's copy/finish of one 64 x 3 x 227 x 227 batch into a Caffe blob,
uint8 against float32 payloads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Tuple

import cv2
import lmdb
import numpy as np

from bench import dataset, report
from bench.children import Children, print_report
from harness.children import REPO, caffe_python, child_env, child_pids, free_port
from bench.server_rate import server_command
from server.caffe_proto import Datum, image_to_datum

LOG_DIR = dataset.CACHE_DIR / "logs"
CAFFE_SIDE = str(REPO / "bench" / "caffe_stall_net.py")
TARGET_PERCENT = 3.0
STARTUP_ALLOWANCE_S = 90.0


@dataclass(frozen=True)
class Plan:
    """How one net is measured: ``net`` is caffe_stall_net.py's --net, ``feeds`` the names of
    the zfeed configurations (``feeds()``) its trainer gets."""

    net: str
    title: str
    rounds: int
    iterations: int
    warmup: int
    slowest_iteration_s: float  # far above the net's; only bounds how long a stuck run may take
    feeds: Tuple[str, ...]


RAW_UINT8, RAW_FLOAT32, JPEG_UINT8 = "zfeed, raw LMDB, uint8", "zfeed, raw LMDB, float32", "zfeed, JPEG LMDB, uint8"


def plans(quick: bool) -> Tuple[Plan, ...]:
    """CaffeNet, the real net, with the real feed; then the small net with every feed.

    Warm-up: a feed's first batches cost its ZeroMQ receiving thread several
    times the CPU of later ones (measured here: 5.9 ms per batch over the 4
    after the prefetch filled, then 1.1 to 2.2 ms), which would otherwise land
    in the measured rounds; a CaffeNet iteration is ten times longer, so 2 do.
    """
    return (Plan("caffenet", "CaffeNet", rounds=2 if quick else 5, iterations=1, warmup=2,
                 slowest_iteration_s=30.0, feeds=(JPEG_UINT8,)),
            Plan("small", "Small net", rounds=2 if quick else 12, iterations=2, warmup=4,
                 slowest_iteration_s=6.0, feeds=(RAW_UINT8, RAW_FLOAT32, JPEG_UINT8)))


def forward_repeats(quick: bool) -> int:
    return 10 if quick else 40


LAYER_REPEATS = 3


def raw_lmdb() -> Path:
    """The JPEG LMDB's images decoded once and stored as raw uint8 Datums (same keys and labels)."""
    path = dataset.CACHE_DIR / ("raw%d-%dpx-lmdb" % (dataset.IMAGE_COUNT, dataset.IMAGE_SIDE))
    if path.is_dir():
        return path
    work = Path(tempfile.mkdtemp(prefix="building-", dir=dataset.CACHE_DIR))
    try:
        source = lmdb.open(str(dataset.jpeg_lmdb()), readonly=True, lock=False)
        target = lmdb.open(str(work / "lmdb"), map_size=1 << 30)
        try:
            with source.begin() as reading, target.begin(write=True) as writing:
                for key, value in reading.cursor():
                    datum = Datum()
                    datum.ParseFromString(value)
                    image = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)
                    writing.put(key, image_to_datum(image.transpose(2, 0, 1), datum.label).SerializeToString())
        finally:
            source.close()
            target.close()
        (work / "lmdb").rename(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


MEMORY_BATCHES = 4


def memory_pixels() -> Path:
    """Real crops for the in-memory layers: ``MEMORY_BATCHES`` batches of 64 random 227x227
    crops (half mirrored) of the raw LMDB's images, and their labels, in an .npz."""
    path = dataset.CACHE_DIR / ("memory-crops-%dx64.npz" % MEMORY_BATCHES)
    if path.is_file():
        return path
    rng = np.random.default_rng(dataset.SEED)
    env = lmdb.open(str(raw_lmdb()), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            values = [value for _key, value in txn.cursor()]
    finally:
        env.close()
    pixels = np.empty((MEMORY_BATCHES, 64, 3, 227, 227), np.uint8)
    labels = np.empty((MEMORY_BATCHES, 64), np.int64)
    for slot, (batch, row) in enumerate(np.ndindex(MEMORY_BATCHES, 64)):
        datum = Datum()
        datum.ParseFromString(values[slot % len(values)])
        image = np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width)
        top, left = rng.integers(0, datum.height - 227 + 1), rng.integers(0, datum.width - 227 + 1)
        crop = image[:, top:top + 227, left:left + 227]
        pixels[batch, row] = crop[:, :, ::-1] if rng.random() < 0.5 else crop
        labels[batch, row] = datum.label
    with tempfile.NamedTemporaryFile(dir=dataset.CACHE_DIR, suffix=".npz", delete=False) as f:
        np.savez(f, pixels=pixels, labels=labels)
    Path(f.name).rename(path)
    return path


def feeds(names: Tuple[str, ...]) -> List[tuple]:
    """(name, source, wire format) of the zfeed configurations ``names``."""
    raw, jpeg = "lmdb:%s" % raw_lmdb(), "lmdb:%s" % dataset.jpeg_lmdb()
    every = [(RAW_UINT8, raw, "auto"), (RAW_FLOAT32, raw, "float32"), (JPEG_UINT8, jpeg, "auto")]
    return [feed for feed in every if feed[0] in names]


@dataclass(frozen=True)
class Placement:
    """Where one trainer process, and the servers feeding it, run (``None``: anywhere)."""

    title: str
    tag: str
    trainer_cpus: Optional[FrozenSet[int]]
    server_cpus: Optional[FrozenSet[int]]
    trainer_env: Dict[str, str]


# With one core to itself, OpenBLAS would size its pool from the pinning: the thread
# count is set instead, so every solver of the pinned trainer runs the same BLAS.
ONE_BLAS_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def placements() -> List[Placement]:
    """The server on a core of its own, then (as before) everything sharing the machine's cores."""
    shared = Placement("Server and trainer sharing %d cores" % (os.cpu_count() or 0), "shared", None, None, {})
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return [shared]
    own_core = Placement("Server on its own core: the deployment zfeed is for", "own-core",
                         frozenset(cpus[:1]), frozenset(cpus[1:2]), ONE_BLAS_THREAD)
    return [own_core, shared]


def run(quick: bool) -> str:
    head = report.machine_line("zfeed trainer stall (bench/stall.py)")
    sections = []
    trainer_cpus = placements()[0].trainer_cpus  # the trainer's own core, where there are two
    with Children(LOG_DIR) as children:
        for plan in plans(quick):
            for placement in placements():
                print("bench.stall: %s, %s" % (plan.title, placement.title), file=sys.stderr)
                stall, where = run_placement(children, plan, placement)
                sections += [stall_table(plan, placement, stall, where), "", notes(plan, stall), ""]
            layers = children.result(children.start(
                "stall-%s-layer-times" % plan.net,
                [caffe_python(), CAFFE_SIDE, "layer-times", "--net", plan.net, "--memory-pixels", str(memory_pixels()),
                 "--repeats", str(LAYER_REPEATS)], dict(child_env(), **ONE_BLAS_THREAD), trainer_cpus),
                STARTUP_ALLOWANCE_S + 2 * (LAYER_REPEATS + 1) * plan.slowest_iteration_s)
            sections += [layer_table(plan, layers), ""]
        repeats = forward_repeats(quick)
        cost = children.result(children.start("stall-forward-cost", [caffe_python(), CAFFE_SIDE, "forward-cost",
                                                                     "--repeats", str(repeats)],
                                              child_env()), STARTUP_ALLOWANCE_S + repeats)
    return "\n".join([head, "", common_notes(), ""] + sections + [cost_table(repeats, cost)])


def run_placement(children: Children, plan: Plan, placement: Placement) -> Tuple[dict, List[str]]:
    """One trainer process with every data layer, its servers placed as ``placement`` says.

    Returns the trainer's figures and what ran where, read from /proc while
    everything still ran.
    """
    servers = []
    command = [caffe_python(), CAFFE_SIDE, "stall", "--net", plan.net, "--rounds", str(plan.rounds),
               "--iterations", str(plan.iterations), "--warmup", str(plan.warmup),
               "--memory-pixels", str(memory_pixels())]
    configs = feeds(plan.feeds)
    for number, (name, source, wire_format) in enumerate(configs):
        port = free_port()
        servers.append((name, children.start("stall-%s-%s-server-%d" % (plan.net, placement.tag, number),
                                             server_command(source, port, 1, wire_format), child_env(),
                                             placement.server_cpus)))
        command += ["--feed", "%s=tcp://127.0.0.1:%d" % (name, port)]
    iterations = (plan.warmup + plan.rounds * plan.iterations) * (len(configs) + 3)
    trainer = children.start("stall-%s-%s-caffe" % (plan.net, placement.tag), command,
                             dict(child_env(), **placement.trainer_env), placement.trainer_cpus)
    stall = children.result(trainer, STARTUP_ALLOWANCE_S + iterations * plan.slowest_iteration_s)
    where = [trainer_placement(stall["trainer"])]
    for name, server in servers:
        server.check_running()
        workers = child_pids(server.pid)
        where.append("server of %s: supervisor on %s, %d worker(s) on %s"
                     % (name, allowed_cpus(server.pid), len(workers),
                        ", ".join(allowed_cpus(pid) for pid in workers) or "?"))
        children.stop(server)
    return stall, where


def allowed_cpus(pid: int) -> str:
    """The CPUs the threads of ``pid`` may run on ("CPU 1", "CPUs 0-1"), as /proc lists them."""
    lists = set()
    for status in Path("/proc/%d/task" % pid).glob("*/status"):
        try:
            lists.update(line.split(":", 1)[1].strip() for line in status.read_text().splitlines()
                         if line.startswith("Cpus_allowed_list"))
        except OSError:
            continue  # the thread ended meanwhile
    return " / ".join(_cpus(text) for text in sorted(lists)) or "?"


def _cpus(text: str) -> str:
    return ("CPU %s" if text.isdigit() else "CPUs %s") % text


def trainer_placement(trainer: dict) -> str:
    threads = list(trainer["threads"].values())
    by_cpus: Dict[str, int] = {}
    for thread in threads:
        by_cpus[thread["cpus"]] = by_cpus.get(thread["cpus"], 0) + 1
    env = ", ".join("%s=%s" % item for item in trainer["env"].items() if item[1] is not None)
    return ("trainer (one Caffe process): %d threads (the Caffe thread, BLAS's, ZeroMQ's), %s; "
            "OpenBLAS threads: %d (%s)"
            % (len(threads), ", ".join("%d on %s" % (count, _cpus(cpus)) for cpus, count in sorted(by_cpus.items())),
               trainer["openblas_threads"], env or "OMP_NUM_THREADS and OPENBLAS_NUM_THREADS unset"))


def _extra(times: List[float], baseline: List[float]) -> float:
    """Percent more time per iteration than ``baseline``: median of the per-round ratios."""
    return 100.0 * (report.paired_ratio(times, baseline) - 1.0)


def _extra_cell(times: List[float], baseline: List[float]) -> str:
    return "%+.1f %% (%+.0f ms)" % (_extra(times, baseline),
                                    statistics.median(t - b for t, b in zip(times, baseline)))


def stall_table(plan: Plan, placement: Placement, stall: dict, where: List[str]) -> str:
    results = stall["configs"]
    baseline = results["DummyData"]["ms_per_iteration"]
    cpu_baseline = results["DummyData"]["cpu_ms_per_iteration"]
    memory_name = [name for name in results if name.startswith("in-memory") and "real" in name][0]
    memory = results[memory_name]["ms_per_iteration"]
    rows = []
    batches = plan.rounds * plan.iterations
    for name, result in results.items():
        times = result["ms_per_iteration"]
        cpu = result["cpu_ms_per_iteration"]
        extra = verdict = over_memory = forward = receive_share = late_cell = receiving = cpu_extra = ""
        if name != "DummyData":
            extra = _extra_cell(times, baseline)
            cpu_extra = "%+.1f %%" % _extra(cpu, cpu_baseline)
            forward = "%.1f" % statistics.median(result["forward_ms_per_iteration"])
        if name.startswith("zfeed"):
            over_memory = _extra_cell(times, memory)
            late = sum(result["not_ready"])
            # The target is about a server that keeps up: judged only where no batch was late.
            verdict = (report.verdict(_extra(times, baseline), TARGET_PERCENT, at_most=True) if late == 0
                       else "n/a: the layer waited")
            receive = result["receive_ms_per_iteration"]
            share = [100.0 * r / t for r, t in zip(receive, times)]
            forward += " (receive %.1f)" % statistics.median(receive)
            receive_share = "%.2f %% (max %.2f %%)" % (statistics.median(share), max(share))
            late_cell = "%d of %d" % (late, batches)
            receiving = ("%.1f" % result["receiving_thread_cpu_ms_per_batch"]
                         if "receiving_thread_cpu_ms_per_batch" in result else "not found")
        rows.append([name, "%.0f" % statistics.median(times), extra, verdict, over_memory, forward, receive_share,
                     late_cell, receiving, "%.0f" % statistics.median(cpu), cpu_extra, report.runs(times)])
    table = report.markdown_table(["Data layer", "ms per solver iteration (median)", "extra vs DummyData",
                                   "target (judged where no batch was late)",
                                   "extra vs in-memory layer, real pixels",
                                   "data layer forward() ms per iteration (of which in receive())",
                                   "receive() share of the iteration (median, max)",
                                   "batches late: not there when forward() asked",
                                   "ZeroMQ receiving thread CPU ms per batch",
                                   "Caffe-thread CPU ms per iteration", "CPU extra vs DummyData", "runs (ms)"],
                                  rows)
    return "\n".join(["### %s: %s" % (plan.title, placement.title), "", table, ""]
                     + ["- %s." % line for line in where])


def notes(plan: Plan, stall: dict) -> str:
    return ("- One Caffe process (CPU), one SGD solver per data layer, all on the same net: %s, batch "
            "64 x 3 x 227 x 227. %d warm-up iterations each, then %d rounds of %d iteration(s) per solver in a "
            "rotated order." % (stall["net"], plan.warmup, plan.rounds, plan.iterations))


def common_notes() -> str:
    return "\n".join([
        "- Extra: median of the per-round ratios, minus one, so every ratio compares solvers of the same "
        "trainer process in the same rounds. Caffe-thread CPU: its own CPU time (time.thread_time), which "
        "time spent descheduled by other processes on this shared machine does not inflate.",
        "- Server on its own core: the trainer process (its Caffe thread and ZeroMQ's receiving thread) "
        "pinned to one CPU, every server (supervisor and worker, forked after the pinning) to the other; "
        "OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1 for the trainer, so all its solvers, DummyData's included, "
        "run the same single-threaded BLAS. The trainer then pays for what zfeed does in its own process "
        "(receiving, finishing uint8 into the blob) and for sharing the memory bus and L3 cache with the "
        "server, not for CPU time the server's decoding takes: the deployment zfeed is built for, with the "
        "servers on other machines. Sharing: nothing pinned, OpenBLAS sized by its own default.",
        "- In-memory Python layers: %d batches of real 227x227 crops (or zeros) held in the trainer, delivered "
        "by the same `Batch.copy_into` as ZmqDataLayer (uint8 finished into float32), no network, no server: "
        "they separate what real pixel values cost the net (Caffe's CPU max pooling runs slower on them, "
        "see the per-layer tables) from what zfeed costs. forward(): wall time inside the data layer's "
        "forward() (zfeed: ZmqDataLayer subclassed only to add stopwatches and a probe); receive(): the part "
        "of it in `BatchClient.receive()`; a batch is late when it had not fully arrived (the socket had "
        "nothing to read) as forward() asked for it. ZeroMQ's receiving thread (one per feed, in the trainer "
        "process) reads the next batch from TCP while the net runs; its CPU time (the thread's own CPU "
        "clock) over all the rounds, per batch taken." % MEMORY_BATCHES,
        "- Servers: 1 worker each, TRAIN crop 227 + mirror + mean 104,117,123, on 127.0.0.1; the raw LMDB holds "
        "the JPEG LMDB's 512 images decoded once to raw 256x256 Datums, so its server only parses, crops and "
        "sends. This machine is shared with other test runs (preliminary figures). Load average at the end: "
        "%s." % report.load_average(),
    ])


LAYER_SHOWN_MS = 1.0  # per-layer table: the passes whose time moved by at least this much


def layer_table(plan: Plan, layers: dict) -> str:
    """The layers whose forward or backward time moves with the pixel values, and the totals."""
    names, types, ms = layers["layers"], layers["types"], layers["ms"]
    constant, real = ms["constant"], ms["real pixels"]
    rows, totals = [], {"constant": 0.0, "real pixels": 0.0}
    for direction in ("forward", "backward"):
        for index, name in enumerate(names):
            on_constant = statistics.median(constant[direction][index])
            on_real = statistics.median(real[direction][index])
            totals["constant"] += on_constant
            totals["real pixels"] += on_real
            if abs(on_real - on_constant) >= LAYER_SHOWN_MS:
                rows.append(["%s (%s)" % (name, types[index]), direction, "%.1f" % on_constant, "%.1f" % on_real,
                             "%+.1f" % (on_real - on_constant)])
    rows.append(["all layers", "forward + backward", "%.0f" % totals["constant"], "%.0f" % totals["real pixels"],
                 "%+.0f (%+.1f %%)" % (totals["real pixels"] - totals["constant"],
                                       100.0 * (totals["real pixels"] / totals["constant"] - 1.0))])
    table = report.markdown_table(["layer", "pass", "ms on DummyData's constant (zeros)", "ms on real pixels",
                                   "difference, ms"], rows)
    return "\n".join(["#### %s: which layers real pixel values slow down" % plan.title, "", table, "",
                      "- `caffe_stall_net.py layer-times`: one net (%s), each layer's forward and backward timed "
                      "alone (`Net.forward/backward(start=, end=)`), on zeros and on one batch of the real crops "
                      "finished as the layer finishes them, labels 0 for both; %d interleaved passes after one "
                      "dropped, medians; the trainer's CPU and one BLAS thread. Shown: the passes that moved by "
                      "%.0f ms or more." % (layers["net"], LAYER_REPEATS, LAYER_SHOWN_MS)])


def cost_table(repeats: int, cost: dict) -> str:
    times: Dict[str, List[float]] = cost["ms"]
    names = list(times)
    float_name = [n for n in names if n.startswith("float32")][0]
    rows = []
    for name in names:
        ratio = report.paired_ratio(times[name][1:], times[float_name][1:])
        rows.append([name, "%.1f" % (cost["wire_bytes"][name] / 1e6), "%.2f" % statistics.median(times[name][1:]),
                     "%.2f" % ratio, report.runs(times[name][1:], "%.1f")])
    table = report.markdown_table(["payload of one 64 x 3 x 227 x 227 batch", "MB on the wire",
                                   "forward() copy/finish into the blob, ms (median)", "ratio to float32",
                                   "runs (ms)"], rows)
    return "\n".join([table, "",
                      "- `Batch.copy_into` of data and label into a real Caffe blob (what `ZmqDataLayer.forward()` "
                      "does besides receiving), in the Caffe Python, interleaved, %d times each (the first, "
                      "which faults the blob's pages in, dropped). uint8 finished bit-identical to the float32 "
                      "payload: %s." % (repeats,
                                        "yes" if cost["uint8_bit_identical_to_float32"] else "NO")])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stall", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 short rounds")
    args = parser.parse_args(argv)
    return print_report("bench.stall", LOG_DIR, lambda: run(args.quick))


if __name__ == "__main__":
    sys.exit(main())
