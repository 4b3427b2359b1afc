"""Cheap samples end to end: zfeed against Caffe's own data layers, small and large samples.

    python -m bench.small_samples [--quick]

Every case is one data layer of a real Caffe net (then a Silence layer),
TRAIN, batch 64, forward only, timed by ``bench/caffe_net_rate.py`` in the
Caffe Python. Each case runs three ways, back to back in every round:

- ``Caffe``: Caffe's own layer (``Data`` over an LMDB, ``HDF5Data``);
- ``zfeed``: ``python -m server --from-prototxt`` serving that very layer
  with 2 workers on this machine, into ``ZmqDataLayer``;
- ``floor``: ``bench.ready_batch_layer``, a Python layer that only copies
  one ready batch into its tops, the ceiling of any Python layer;
- ``raw pyzmq`` (HDF5 rows only): ``bench.raw_rows`` pushes the file's rows
  from memory, in messages as large as zfeed's, into
  ``bench.raw_rows_layer``, which copies them into its tops: the transport
  ceiling for these bytes through the same net.

Cases: MNIST-shaped (60,000 raw Datums 1x28x28, scale 1/256), CIFAR-shaped
(50,000 raw Datums 3x32x32), HDF5 rows (20,000 float32 3x32x32 and a
label) and JPEG (512 encoded 256x256 Datums, crop 227, mirror, mean). For
the HDF5 rows, moving them over loopback is itself slower than Caffe's
copy in one process: zfeed is judged against the raw pyzmq way. The rate
of ``bench.transport`` (one buffer sent over and over, received without a
copy: no data set, no blob) is printed beside it.

Then time to the first batch against dataset size: LMDBs of 10,000,
100,000 and 1,280,000 raw 3x16x16 Datums, in key order (as Caffe's Data
layer reads) and shuffled, each database's pages evicted from the page
cache before each start (its first read comes from disk, as after a
reboot; the Python libraries stay cached), one start per round and the
median of the rounds reported. Before the comparison, every
case's files are read once, so that no way pays for a cold disk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from bench import dataset, transport
from bench.children import Children, print_report
from harness.children import PYTHON, REPO, caffe_python, child_env, free_port
from bench.report import cpu_model, machine_line, markdown_table, median, paired_ratio, runs, verdict

CACHE = dataset.CACHE_DIR / "small"
PLOT = REPO / "bench" / "small_samples.png"
QUICK_PLOT = dataset.CACHE_DIR / "small_samples-quick.png"
LOG_DIR = dataset.CACHE_DIR / "logs"
NET_RATE = str(REPO / "bench" / "caffe_net_rate.py")
BATCH = 64
WORKERS = 2
STARTUP_S = 120.0
STARTUP_SIZES = (10_000, 100_000, 1_280_000)
TARGET_VS_CAFFE = 1.0
TARGET_VS_TRANSPORT = 0.9
TARGET_JPEG = 3.5
TARGET_FIRST_BATCH_S = 3.0


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: float
    warmup_s: float


FULL = Plan(rounds=3, seconds=4.0, warmup_s=1.5)
QUICK = Plan(rounds=1, seconds=2.0, warmup_s=1.0)


@dataclass(frozen=True)
class Case:
    name: str
    data_layer: str  # the Caffe layer's text, with %(source)s
    tops: List[dict]  # what ReadyBatchLayer fills: shape, dtype, scale
    source: Path
    target: float
    ways: tuple = ("Caffe", "zfeed", "floor")


# -- data sets -----------------------------------------------------------------------------

def raw_lmdb(path: Path, count: int, shape, seed: int) -> Path:
    """``count`` raw Datums of random pixels, keys "%08d", labels 0-9; built once."""
    import lmdb

    from server.caffe_proto import image_to_datum

    if (path / "data.mdb").is_file():
        return path
    partial = path.with_suffix(".partial")
    subprocess.run(["rm", "-rf", str(partial)], check=True)
    rng = np.random.default_rng(seed)
    env = lmdb.open(str(partial), map_size=1 << 36)
    chunk = 10_000
    for start in range(0, count, chunk):
        images = rng.integers(0, 256, (min(chunk, count - start),) + tuple(shape), dtype=np.uint8)
        with env.begin(write=True) as txn:
            for offset, image in enumerate(images):
                txn.put(b"%08d" % (start + offset), image_to_datum(image, (start + offset) % 10).SerializeToString())
    env.close()
    partial.rename(path)
    return path


def hdf5_rows(folder: Path, count: int = 20_000) -> Path:
    """An HDF5Data list naming one file of ``count`` float32 3x32x32 rows and labels."""
    import h5py

    listing = folder / "rows.txt"
    if listing.is_file():
        return listing
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    with h5py.File(folder / "rows.h5", "w") as f:
        f["data"] = rng.random((count, 3, 32, 32), dtype=np.float32)
        f["label"] = rng.integers(0, 10, count).astype(np.float32)
    listing.write_text("%s\n" % (folder / "rows.h5"))
    return listing


def cases() -> List[Case]:
    data = """layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { %s }
  data_param { source: "%%(source)s" backend: LMDB batch_size: 64 } }"""
    return [
        Case("MNIST-shaped LMDB, 60,000 x 1x28x28, scale 1/256", data % "scale: 0.00390625",
             [{"shape": [BATCH, 1, 28, 28], "dtype": "uint8", "scale": 1 / 256}, {"shape": [BATCH], "dtype": "float32"}],
             raw_lmdb(CACHE / "mnist_lmdb", 60_000, (1, 28, 28), 1), TARGET_VS_CAFFE),
        Case("CIFAR-shaped LMDB, 50,000 x 3x32x32", data % "",
             [{"shape": [BATCH, 3, 32, 32], "dtype": "uint8"}, {"shape": [BATCH], "dtype": "float32"}],
             raw_lmdb(CACHE / "cifar_lmdb", 50_000, (3, 32, 32), 2), TARGET_VS_CAFFE),
        Case("HDF5 rows, 20,000 x float32 3x32x32", """layer { name: "data" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param { source: "%(source)s" batch_size: 64 } }""",
             [{"shape": [BATCH, 3, 32, 32], "dtype": "float32"}, {"shape": [BATCH], "dtype": "float32"}],
             hdf5_rows(CACHE / "hdf5"), TARGET_VS_CAFFE, ways=("Caffe", "zfeed", "floor", RAW)),
        Case("JPEG LMDB, 512 x 256x256, crop 227, mirror, mean", data % (
            "crop_size: 227 mirror: true mean_value: 104 mean_value: 117 mean_value: 123"),
             [{"shape": [BATCH, 3, 227, 227], "dtype": "uint8"}, {"shape": [BATCH], "dtype": "float32"}],
             dataset.jpeg_lmdb(), TARGET_JPEG),
    ]


# -- one measurement -------------------------------------------------------------------------

SILENCE = 'layer { name: "silence" type: "Silence" bottom: "data" bottom: "label" }\n'


def write_net(path: Path, data_layer: str) -> Path:
    path.write_text('name: "feed"\n%s\n%s' % (data_layer, SILENCE))
    return path


def python_layer(module: str, layer: str, params: dict) -> str:
    # A JSON string is a valid prototxt string.
    return ('layer { name: "data" type: "Python" top: "data" top: "label"\n'
            '  python_param { module: "%s" layer: "%s" param_str: %s } }'
            % (module, layer, json.dumps(json.dumps(params))))


def rate(children: Children, plan: Plan, net: Path, tag: str) -> dict:
    trainer = children.start("small-%s-caffe" % tag, [caffe_python(), NET_RATE, str(net), "--seconds",
                                                      str(plan.seconds), "--warmup-seconds", str(plan.warmup_s)],
                             child_env())
    return children.result(trainer, STARTUP_S + plan.warmup_s + plan.seconds)


def measure(children: Children, plan: Plan, case: Case, way: str, tag: str) -> dict:
    caffe_net = write_net(CACHE / ("%s-caffe.prototxt" % tag), case.data_layer % {"source": case.source})
    if way == "Caffe":
        return rate(children, plan, caffe_net, tag + "-own")
    if way == "floor":
        net = write_net(CACHE / ("%s-floor.prototxt" % tag),
                        python_layer("bench.ready_batch_layer", "ReadyBatchLayer", {"tops": case.tops}))
        return rate(children, plan, net, tag + "-floor")
    port = free_port()
    if way == RAW:
        return raw_rate(children, plan, case, tag, port)
    server = children.start("small-%s-server" % tag,
                            [PYTHON, "-m", "server", "--from-prototxt", str(caffe_net), "--phase", "train",
                             "--workers", str(WORKERS), "--bind", "tcp://127.0.0.1:%d" % port], child_env())
    net = write_net(CACHE / ("%s-zfeed.prototxt" % tag),
                    python_layer("client_layer", "ZmqDataLayer",
                                 {"address": "tcp://127.0.0.1:%d" % port, "timeout_s": 60}))
    return rate_fed_by(children, plan, server, net, tag + "-zfeed")


def rate_fed_by(children: Children, plan: Plan, producer, net: Path, tag: str) -> dict:
    """``rate`` of ``net`` while the child ``producer`` feeds it; stopped after, its failure first."""
    try:
        result = rate(children, plan, net, tag)
        producer.check_running()
    finally:
        children.stop(producer)
    return result


def raw_rate(children: Children, plan: Plan, case: Case, tag: str, port: int) -> dict:
    """The net fed by raw pyzmq (bench/raw_rows.py) with messages of as many batches as zfeed's."""
    from server.sizing import MESSAGE_TARGET_BYTES

    batch_bytes = sum(int(np.prod(top["shape"])) * np.dtype(top["dtype"]).itemsize for top in case.tops)
    hdf5_file = case.source.read_text().split()[0]
    sender = children.start("small-%s-raw-send" % tag,
                            [PYTHON, "-m", "bench.raw_rows", "send", "--hdf5", hdf5_file, "--port", str(port),
                             "--batch", str(BATCH), "--batches-per-message",
                             str(max(1, MESSAGE_TARGET_BYTES // batch_bytes))], child_env())
    net = write_net(CACHE / ("%s-raw.prototxt" % tag),
                    python_layer("bench.raw_rows_layer", "RawRowsLayer",
                                 {"address": "tcp://127.0.0.1:%d" % port, "shape": case.tops[0]["shape"]}))
    return rate_fed_by(children, plan, sender, net, tag + "-raw")


RAW = "raw pyzmq"
WAYS = ("Caffe", "zfeed", "floor", RAW)


def compare(children: Children, plan: Plan) -> Dict[str, Dict[str, List[dict]]]:
    """Per case, per way, one result per round; every round runs the ways back to back."""
    results: Dict[str, Dict[str, List[dict]]] = {}
    for number, case in enumerate(cases()):
        read_into_page_cache(case.source.parent / "rows.h5" if case.source.suffix == ".txt" else case.source)
        results[case.name] = {way: [] for way in case.ways}
        for round_number in range(plan.rounds):
            for way in case.ways:
                result = measure(children, plan, case, way, "case%d" % number)
                results[case.name][way].append(result)
                waited = ", waited %.0f%%" % (100 * result["wait_share"]) if "wait_share" in result else ""
                print("  %s, round %d, %-5s %8.0f images/s%s"
                      % (case.name, round_number + 1, way, result["images_s"], waited), file=sys.stderr)
    return results


def transport_ceiling(children: Children, plan: Plan) -> Dict[str, float]:
    """Raw pyzmq and zfeed's send path for messages of the HDF5 case's float32 rows."""
    rows = transport.MessageShape(rows=BATCH, sample_shape=(3, 32, 32))
    measured = transport.run(children, plan.rounds, plan.seconds, plan.warmup_s, rows)
    return {kind: measured[kind]["mb_s"] / (4 * 3 * 32 * 32 + 4) * 1e6 for kind in ("raw", "zfeed")}


# -- time to the first batch ---------------------------------------------------------------

def _files(path: Path) -> List[Path]:
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def evict_from_page_cache(path: Path) -> None:
    """Drop the cached pages of the files at ``path`` (a file or a directory of them)."""
    os.sync()
    for name in _files(path):
        with open(name, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def read_into_page_cache(path: Path) -> None:
    for name in _files(path):
        with open(name, "rb") as f:
            while f.read(1 << 24):
                pass


ORDERS = {"key order": "--no-shuffle", "shuffled": "--shuffle"}


def first_batch_s(children: Children, lmdb: Path, order: str, tag: str) -> float:
    from client_layer import BatchClient
    from client_layer.receiver import ReceiveInterrupted

    port = free_port()
    started = time.monotonic()
    server = children.start("small-first-%s" % tag, [PYTHON, "-m", "server", "--source", "lmdb:%s" % lmdb,
                                                     ORDERS[order], "--workers", str(WORKERS),
                                                     "--batch-size", str(BATCH),
                                                     "--bind", "tcp://127.0.0.1:%d" % port], child_env())
    try:
        with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=STARTUP_S) as client:
            try:
                client.receive(stop_requested=lambda: server.process.poll() is not None)
            except ReceiveInterrupted:
                server.check_running()  # a server that died: its status and log, not a 120 s wait
                raise
            return time.monotonic() - started
    finally:
        children.stop(server)


def startup(children: Children, plan: Plan) -> List[dict]:
    """Per LMDB size and order, ``plan.rounds`` cold starts: their times and the median (a cold
    read of a 1.3 GB database varies by seconds from one start to the next on these machines)."""
    rows = []
    for size in STARTUP_SIZES:
        lmdb = raw_lmdb(CACHE / ("startup_%d_lmdb" % size), size, (3, 16, 16), 4)
        for order in ORDERS:
            starts = []
            for round_number in range(plan.rounds):
                evict_from_page_cache(lmdb)
                starts.append(first_batch_s(children, lmdb, order, "%d-%s" % (size, ORDERS[order])))
                print("  first batch from %d records, %s (cold database), round %d: %.2f s"
                      % (size, order, round_number + 1, starts[-1]), file=sys.stderr)
            rows.append({"size": size, "order": order, "seconds": median(starts), "runs": starts})
    return rows


# -- the report ----------------------------------------------------------------------------

def draw(results, output: Path, subtitle: str) -> None:
    """Images/s of each way per case, on a log scale: one group of bars per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [case.name.split(",")[0] for case in cases()]
    figure, axes = plt.subplots(figsize=(8, 4.2))
    width = 0.2
    for offset, way in enumerate(WAYS):
        shown = [(i, median(r["images_s"] for r in results[case.name][way]))
                 for i, case in enumerate(cases()) if way in case.ways]
        values = [value for _, value in shown]
        bars = axes.bar([i + (offset - 1.5) * width for i, _ in shown], values, width,
                        label={"Caffe": "Caffe's own layer", "zfeed": "zfeed, 2 workers, same machine",
                               "floor": "Python layer copying a ready batch",
                               RAW: "raw pyzmq rows into a Python layer"}[way])
        axes.bar_label(bars, labels=["%.0fk" % (v / 1000) if v >= 10000 else "%.1fk" % (v / 1000) if v >= 1000
                                    else "%.0f" % v for v in values],
                       fontsize=6.5, padding=1)
    axes.set_yscale("log")
    axes.set_xticks(range(len(names)), names, fontsize=8)
    axes.set_ylabel("images/s into a Caffe net (log)")
    axes.set_title("Small and large samples through a real Caffe net, batch 64", fontsize=10)
    top = max(median(r["images_s"] for r in results[case.name][way]) for case in cases() for way in case.ways)
    axes.set_ylim(top=top * 8)  # room for the legend above the bars
    axes.legend(fontsize=7, loc="upper left", ncol=2)
    figure.text(0.01, 0.01, subtitle, fontsize=6.5, color="0.35")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(str(output))
    plt.close(figure)


def report(plan: Plan, results, ceiling: Dict[str, float], first: List[dict]) -> str:
    rows = []
    for case in cases():
        by_way = {way: [r["images_s"] for r in results[case.name][way]] for way in case.ways}
        against_caffe = paired_ratio(by_way["zfeed"], by_way["Caffe"])
        waits = [r.get("wait_share", 0.0) for r in results[case.name]["zfeed"]]
        target = verdict(against_caffe, case.target)
        if RAW in by_way:
            against_transport = paired_ratio(by_way["zfeed"], by_way[RAW])
            target += "; zfeed / raw pyzmq for these bytes %.2f (raw: %.0f images/s), %s" % (
                against_transport, median(by_way[RAW]), verdict(against_transport, TARGET_VS_TRANSPORT))
        rows.append((case.name, "%.0f" % median(by_way["Caffe"]), "%.0f" % median(by_way["zfeed"]),
                     "%.0f" % median(by_way["floor"]), "%.2f" % against_caffe,
                     "%.2f" % paired_ratio(by_way["zfeed"], by_way["floor"]), "%.0f%%" % (100 * median(waits)),
                     target, runs(by_way["zfeed"])))
    table = markdown_table(("Data", "Caffe's layer, images/s", "zfeed, images/s", "floor, images/s",
                            "zfeed / Caffe", "zfeed / floor", "trainer waited", "Target", "zfeed runs"), rows)
    first_rows = [("%d" % r["size"], r["order"], "%.2f" % r["seconds"],
                   verdict(r["seconds"], TARGET_FIRST_BATCH_S, at_most=True) if r["size"] >= 1_280_000 else "",
                   ", ".join("%.2f" % s for s in r["runs"]))
                  for r in first]
    first_table = markdown_table(("LMDB records (3x16x16), not in the page cache", "order",
                                  "first batch after start, s (median)", "Target", "runs, s"), first_rows)
    notes = [
        "- Net: the data layer then Silence, TRAIN, batch %d, forward only, timed for %.0f s after %.1f s; "
        "%d round(s), each running Caffe's layer, zfeed, the floor (and raw pyzmq) back to back; medians, and ratios are "
        "medians of per-round ratios." % (BATCH, plan.seconds, plan.warmup_s, plan.rounds),
        "- zfeed: `python -m server --from-prototxt` with %d workers on this machine, sharing its cores with "
        "the trainer. The floor is `bench.ready_batch_layer`: a Python layer that copies one ready batch." % WORKERS,
        "- Raw pyzmq for the HDF5 case: `bench.raw_rows` pushes the file's rows from memory in messages of "
        "as many batches as zfeed's, into `bench.raw_rows_layer`, which copies each batch into its tops: the "
        "transport ceiling for these bytes through the same net.",
        "- Without Caffe (`bench.transport`, 64 float32 rows of 3x32x32 a message, one buffer sent over and "
        "over and received without a copy): raw pyzmq %.0f rows/s; zfeed's send path alone: %.0f rows/s."
        % (ceiling["raw"], ceiling["zfeed"]),
    ]
    return "%s\n\n%s\n\n%s\n\nTime to the first batch:\n\n%s\n" % (
        machine_line("bench.small_samples"), table, "\n".join(notes), first_table)


def subtitle(plan: Plan) -> str:
    return ("%s, %d CPUs (%s); medians of %d round(s); server, workers and trainer share the cores"
            % (time.strftime("%Y-%m-%d", time.gmtime()), os.cpu_count() or 0, cpu_model(), plan.rounds))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.small_samples", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    CACHE.mkdir(parents=True, exist_ok=True)

    def produce() -> str:
        with Children(LOG_DIR) as children:
            results = compare(children, plan)
            ceiling = transport_ceiling(children, plan)
            first = startup(children, plan)
        output = QUICK_PLOT if args.quick else PLOT
        draw(results, output, subtitle(plan))
        return "%s\nPlot: %s\n" % (report(plan, results, ceiling, first), output.relative_to(REPO))

    return print_report("bench.small_samples", LOG_DIR, produce)


if __name__ == "__main__":
    sys.exit(main())
