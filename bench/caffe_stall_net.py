"""The Caffe side of ``bench.stall`` (run by the Caffe Python). Prints one JSON line.

    python bench/caffe_stall_net.py stall --net small|caffenet --feed NAME=tcp://HOST:PORT ...
                                          [--memory-pixels NPZ] --rounds R --iterations K --warmup W
    python bench/caffe_stall_net.py layer-times --net small|caffenet --memory-pixels NPZ --repeats N
    python bench/caffe_stall_net.py forward-cost --repeats N

``stall``: one SGD solver per feed plus one whose data layer is ``DummyData``
with constant fillers of the same shapes (64 x 3 x 227 x 227 data, 64
labels; Caffe fills a constant DummyData once, so it costs nothing per
iteration), and with ``--memory-pixels`` two ``MemoryBatchLayer``s (real
crops, and zeros) that run the layer's copy without network or server. All
solvers train the same net in this one process: ``--net caffenet``, the layers
of BVLC's reference CaffeNet after its data layer (the project's copy in
``tests/prototxt``), or ``--net small``, two conv layers (``SMALL_NET_BODY``)
whose iteration takes about a tenth of CaffeNet's, so that what each batch
costs the trainer weighs ten times as much.
After ``W`` warm-up iterations each, every round runs ``K`` iterations of
each solver, in a rotated order. The figures of a block, per iteration: its
wall time; the CPU time of this thread (Caffe's only compute thread), which
time spent descheduled does not inflate; the wall time of the data layer's
``forward()`` (the zfeed feeds use ``TimedZmqDataLayer``, ZmqDataLayer with
stopwatches); and for zfeed feeds the part of it in ``BatchClient.receive()``
and the number of batches that had not fully arrived when ``forward()``
asked (zero when the server keeps up), and the CPU time of the feed's
ZeroMQ receiving thread. The JSON also says where the process ran: each
thread's allowed CPUs and OpenBLAS's thread count.

``layer-times``: each layer's forward and backward wall time in one net,
on DummyData's constant (zeros) and on the real crops of ``--memory-pixels``
finished as the layer finishes them (labels 0 for both), interleaved, the
first pass dropped: which layers run slower on real values.

``forward-cost``: what ``ZmqDataLayer.forward()`` does besides receiving,
``Batch.copy_into`` of ``data`` and ``label`` into a real Caffe blob, for a
batch that came as uint8 pixels (finished into float32 here) and for one
that came as float32; interleaved, ``N`` times each.
"""

import argparse
import ctypes
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import caffe
import numpy as np
from caffe.proto import caffe_pb2
from google.protobuf import text_format

from client_layer import wire
from client_layer.batch import Batch
from client_layer.caffe_layer import ZmqDataLayer

BATCH = 64
SHAPE = (3, 227, 227)
MEAN = (104.0, 117.0, 123.0)
MAX_BATCH_BYTES = 2**31
MEMORY_REAL = "in-memory Python layer, real pixels"
MEMORY_ZEROS = "in-memory Python layer, zero pixels"
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")

DATA_LAYERS = {
    "zfeed": """layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "bench.caffe_stall_net" layer: "TimedZmqDataLayer" param_str: %(param_str)s } }""",
    "memory": """layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "bench.caffe_stall_net" layer: "MemoryBatchLayer" param_str: %(param_str)s } }""",
    "dummy": """layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: %(batch)d dim: 3 dim: 227 dim: 227 } shape { dim: %(batch)d }
    data_filler { type: "constant" value: 0 } data_filler { type: "constant" value: 0 } } }""",
}

# Two conv layers on 227x227 crops: long enough an iteration (about half a second on one
# of this machine's cores) for one loader worker to keep up, short enough for many rounds.
SMALL_NET_BODY = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 24 kernel_size: 11 stride: 4 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 32 kernel_size: 5 pad: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc"
  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
SMALL_NET_DESCRIPTION = ("a small net: conv 11x11/4 x24, ReLU, max pool 3/2, conv 5x5 x32, ReLU, max pool 3/2, "
                         "fc 10, softmax loss")
CAFFENET_PROTOTXT = Path(__file__).resolve().parents[1] / "tests" / "prototxt" / "caffenet_train_val.prototxt"
CAFFENET_DESCRIPTION = ("BVLC's reference CaffeNet (models/bvlc_reference_caffenet/train_val.prototxt, its TRAIN "
                        "layers: 5 conv, 2 LRN, 3 max pool, 3 fc with dropout, softmax loss)")


def caffenet_body() -> str:
    """The layers CaffeNet trains after its data layer, as prototxt text (TEST-only layers left out)."""
    net = caffe_pb2.NetParameter()
    text_format.Merge(CAFFENET_PROTOTXT.read_text(), net)
    return "\n".join("layer { %s }" % text_format.MessageToString(layer, as_one_line=True)
                     for layer in net.layer
                     if layer.type != "Data" and all(rule.phase != caffe_pb2.TEST for rule in layer.include))


NETS = {  # --net: (its layers after the data layer, what it is)
    "small": (lambda: SMALL_NET_BODY, SMALL_NET_DESCRIPTION),
    "caffenet": (caffenet_body, CAFFENET_DESCRIPTION),
}
SOLVER_DESCRIPTION = "SGD lr 0.001, momentum 0.9"



INPUT_NET = ('name: "blobs" layer { name: "data" type: "Input" top: "data" top: "label" input_param { '
             'shape { dim: %(batch)d dim: 3 dim: 227 dim: 227 } shape { dim: %(batch)d } } }\n')

SOLVER = """net_param { name: "stall" %(layer)s %(body)s }
base_lr: 0.001 momentum: 0.9 lr_policy: "fixed" max_iter: 1000000 display: 0
snapshot_after_train: false solver_mode: CPU random_seed: 1
"""


class TimedZmqDataLayer(ZmqDataLayer):
    """``ZmqDataLayer``, unchanged, with stopwatches and one probe.

    Added up: ``forward_s``, the wall time of ``forward()``; ``receive_s``, the
    part of it spent getting the batch from ``BatchClient.receive()``;
    ``not_ready``, the batches that had not fully arrived when ``forward()``
    asked for them (the layer waited for data; zero when the server keeps up).
    """

    forward_s = receive_s = 0.0
    not_ready = 0

    def forward(self, bottom, top):
        start = time.perf_counter()
        if self.pending is None:
            # ZmqDataLayer.forward() receives first thing when nothing is pending;
            # receiving here instead times it apart, and the rest runs unchanged.
            if not self.client._socket.poll(0):  # a probe of the benchmark, not of the layer
                self.not_ready += 1
            self.pending = self.client.receive()
        received = time.perf_counter()
        super().forward(bottom, top)
        self.forward_s += time.perf_counter() - start
        self.receive_s += received - start


class MemoryBatchLayer(caffe.Layer):
    """A Python data layer that delivers batches held in memory, the way ZmqDataLayer does.

    ``param_str`` is JSON: ``pixels`` (an .npz with ``pixels``, B x N x C x H x W
    uint8 crops, and ``labels``, B x N) and ``zeros`` (deliver zero pixels
    instead). Each batch is wire-encoded once, with uint8 pixels and the mean
    to finish, and ``forward()`` runs the same ``Batch.copy_into`` as
    ``ZmqDataLayer``: the layer's cost and real pixel values, without network
    or server.
    """

    def setup(self, bottom, top):
        params = json.loads(self.param_str)
        arrays = np.load(params["pixels"])
        pixels, labels = arrays["pixels"], arrays["labels"].astype(np.float32)
        if params.get("zeros"):
            pixels = np.zeros_like(pixels)
        finish = {"finish": {"data": {"mean": list(MEAN), "scale": 1.0}}}
        count = pixels.shape[1]
        self.batches = [_received(wire.encode_batch("memory", i, {"data": pixels[i], "label": labels[i]},
                                                    np.arange(count), np.zeros(count), extra=finish))
                        for i in range(len(pixels))]
        self.next = 0
        self.forward_s = 0.0
        top[0].reshape(*self.batches[0].shape("data"))
        top[1].reshape(*self.batches[0].shape("label"))

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        start = time.perf_counter()
        batch = self.batches[self.next % len(self.batches)]
        self.next += 1
        batch.copy_into("data", top[0].data)
        batch.copy_into("label", top[1].data)
        self.forward_s += time.perf_counter() - start

    def backward(self, top, propagate_down, bottom):
        pass


def from_prototxt(text: str, build):
    """``build(path)`` with ``text`` written to a temporary prototxt file at ``path``."""
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text)
    try:
        return build(f.name)
    finally:
        os.unlink(f.name)


def make_solver(data_layer: str, body: str) -> caffe.SGDSolver:
    return from_prototxt(SOLVER % {"layer": data_layer, "body": body}, caffe.SGDSolver)


def stall(args) -> dict:
    net_body, net_description = NETS[args.net]
    body = net_body()
    solvers = {"DummyData": (make_solver(DATA_LAYERS["dummy"] % {"batch": BATCH}, body), None)}
    if args.memory_pixels:
        for name, zeros in ((MEMORY_REAL, False), (MEMORY_ZEROS, True)):
            param_str = json.dumps(json.dumps({"pixels": args.memory_pixels, "zeros": zeros}))
            solvers[name] = (make_solver(DATA_LAYERS["memory"] % {"param_str": param_str}, body), None)
    receiving_threads = {}  # name: ids of the threads ZeroMQ started for this feed's client
    for feed in args.feed:
        name, _, address = feed.partition("=")
        param_str = json.dumps(json.dumps({"address": address, "timeout_s": 60}))  # JSON strings are prototxt strings
        threads_before = set(os.listdir("/proc/self/task"))
        solver = make_solver(DATA_LAYERS["zfeed"] % {"param_str": param_str}, body)
        solvers[name] = (solver, solver.net.layers[0].client)
        receiving_threads[name] = [int(task) for task in set(os.listdir("/proc/self/task")) - threads_before
                                   if _thread_name(task).startswith("ZMQbg/IO")]
    for solver, _client in solvers.values():
        solver.step(args.warmup)
    names = list(solvers)
    results = {name: {"ms_per_iteration": [], "cpu_ms_per_iteration": [], "wait_ms_per_iteration": [],
                      "forward_ms_per_iteration": [], "receive_ms_per_iteration": [], "not_ready": []}
               for name in names}
    # A receiving thread refills its prefetch whenever a batch is taken, even during other
    # solvers' blocks; every prefetch is full before the first round and after the last, so
    # the thread's CPU time over all the rounds, divided by the batches taken, is its cost per batch.
    receiving_cpu = {name: sum(map(thread_cpu_s, tids)) for name, tids in receiving_threads.items()}
    for round_number in range(args.rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            solver, client = solvers[name]
            waited = client.wait_s if client else 0.0
            layer = solver.net.layers[0]
            before = {key: getattr(layer, key, 0) for key in ("forward_s", "receive_s", "not_ready")}
            start, cpu_start = time.perf_counter(), time.thread_time()
            solver.step(args.iterations)
            seconds, cpu_seconds = time.perf_counter() - start, time.thread_time() - cpu_start
            result = results[name]
            result["ms_per_iteration"].append(1000 * seconds / args.iterations)
            result["cpu_ms_per_iteration"].append(1000 * cpu_seconds / args.iterations)
            for key in ("forward", "receive"):
                result[key + "_ms_per_iteration"].append(
                    1000 * (getattr(layer, key + "_s", 0.0) - before[key + "_s"]) / args.iterations)
            result["not_ready"].append(getattr(layer, "not_ready", 0) - before["not_ready"])
            result["wait_ms_per_iteration"].append(
                1000 * ((client.wait_s if client else 0.0) - waited) / args.iterations)
        print("round %d: %s" % (round_number + 1, ", ".join("%s %.0f ms" % (n, r["ms_per_iteration"][-1])
                                                            for n, r in results.items())), file=sys.stderr)
    for name, tids in receiving_threads.items():
        if not tids:
            continue  # ZeroMQ named no thread ZMQbg/IO*: the table says so rather than show 0
        results[name]["receiving_thread_cpu_ms_per_batch"] = (
            1000 * (sum(map(thread_cpu_s, tids)) - receiving_cpu[name]) / (args.rounds * args.iterations))
    return {"net": "%s; %s" % (net_description, SOLVER_DESCRIPTION), "configs": results, "trainer": placement()}


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)


def thread_cpu_s(tid: int) -> float:
    """CPU seconds used so far by thread ``tid`` of this process, to the nanosecond.

    Linux gives every thread a CPU clock whose id is made from the thread id
    (``MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)``); /proc only counts ticks of 10 ms.
    """
    spec = _Timespec()
    if _libc.clock_gettime(ctypes.c_int((~tid << 3) | 6), ctypes.byref(spec)) != 0:
        raise OSError(ctypes.get_errno(), "clock_gettime of thread %d" % tid)
    return spec.tv_sec + spec.tv_nsec * 1e-9


def _thread_name(task: str) -> str:
    try:
        with open("/proc/self/task/%s/comm" % task) as comm:
            return comm.read().strip()
    except OSError:
        return ""  # the thread ended meanwhile


def placement() -> dict:
    """Where this process ran: the CPUs each of its threads may use, and OpenBLAS's thread count."""
    threads = {}
    for task in sorted(os.listdir("/proc/self/task"), key=int):
        try:
            with open("/proc/self/task/%s/status" % task) as status:
                cpus = [line.split(":", 1)[1].strip() for line in status if line.startswith("Cpus_allowed_list")]
        except OSError:
            continue  # the thread ended meanwhile
        threads[task] = {"name": _thread_name(task), "cpus": cpus[0]}
    blas = ctypes.CDLL(caffe._caffe.__file__)  # OpenBLAS is linked into this wheel's _caffe
    return {"threads": threads, "openblas_threads": blas.openblas_get_num_threads(),
            "env": {key: os.environ.get(key) for key in BLAS_THREAD_VARIABLES}}


def layer_times(args) -> dict:
    net_text = INPUT_NET % {"batch": BATCH} + NETS[args.net][0]()
    net = from_prototxt(net_text, lambda path: caffe.Net(path, caffe.TRAIN))
    crops = np.load(args.memory_pixels)["pixels"][0]
    real = np.subtract(crops, np.asarray(MEAN, np.float32).reshape(3, 1, 1), dtype=np.float32)
    inputs = {"constant": np.zeros_like(real), "real pixels": real}
    names = list(net._layer_names)
    ms = {kind: {"forward": [[] for _ in names], "backward": [[] for _ in names]} for kind in inputs}
    for repeat in range(args.repeats + 1):
        for kind, pixels in inputs.items():
            net.blobs["data"].data[...] = pixels
            net.blobs["label"].data[...] = 0
            for index, name in enumerate(names):
                start = time.perf_counter()
                net.forward(start=name, end=name)
                if repeat:
                    ms[kind]["forward"][index].append(1000 * (time.perf_counter() - start))
            for index, name in reversed(list(enumerate(names))):
                start = time.perf_counter()
                net.backward(start=name, end=name)
                if repeat:
                    ms[kind]["backward"][index].append(1000 * (time.perf_counter() - start))
    return {"net": NETS[args.net][1], "layers": names, "types": [layer.type for layer in net.layers], "ms": ms}


def _received(frames) -> Batch:
    """A batch as the layer gets it: frames in fresh buffers, viewed without copies."""
    return wire.decode_batch([bytes(frame) for frame in frames], MAX_BATCH_BYTES)


def forward_cost(args) -> dict:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (BATCH,) + SHAPE, dtype=np.uint8)
    mean = np.asarray(MEAN, np.float32).reshape(3, 1, 1)
    floats = np.subtract(pixels, mean, dtype=np.float32)
    labels = np.arange(BATCH, dtype=np.float32) % 3
    indices, epochs = np.arange(BATCH), np.zeros(BATCH)
    finish = {"finish": {"data": {"mean": list(MEAN), "scale": 1.0}}}
    batches = {
        "uint8 pixels, finished in the layer": _received(
            wire.encode_batch("bench", 0, {"data": pixels, "label": labels}, indices, epochs, extra=finish)),
        "float32, copied": _received(wire.encode_batch("bench", 0, {"data": floats, "label": labels}, indices, epochs)),
    }
    net = from_prototxt(INPUT_NET % {"batch": BATCH}, lambda path: caffe.Net(path, caffe.TEST))
    data, label = net.blobs["data"].data, net.blobs["label"].data
    times = {name: [] for name in batches}
    for _ in range(args.repeats):
        for name, batch in batches.items():
            start = time.perf_counter()
            batch.copy_into("data", data)
            batch.copy_into("label", label)
            times[name].append(1000 * (time.perf_counter() - start))
    batches["uint8 pixels, finished in the layer"].copy_into("data", data)
    identical = bool(np.array_equal(np.asarray(data).view(np.uint32), floats.view(np.uint32)))
    wire_bytes = {name: sum(spec.nbytes for spec in batch.specs) for name, batch in batches.items()}
    return {"ms": times, "wire_bytes": wire_bytes,
            "uint8_bit_identical_to_float32": identical}


def main() -> int:
    parser = argparse.ArgumentParser(prog="caffe_stall_net.py")
    commands = parser.add_subparsers(dest="command", required=True)
    stall_parser = commands.add_parser("stall")
    stall_parser.add_argument("--net", choices=sorted(NETS), default="small")
    stall_parser.add_argument("--feed", action="append", default=[], help="NAME=ADDRESS of a zfeed server")
    stall_parser.add_argument("--memory-pixels", help=".npz of real crops for the in-memory Python layers")
    stall_parser.add_argument("--rounds", type=int, default=4)
    stall_parser.add_argument("--iterations", type=int, default=3)
    stall_parser.add_argument("--warmup", type=int, default=2)
    layers_parser = commands.add_parser("layer-times")
    layers_parser.add_argument("--net", choices=sorted(NETS), default="small")
    layers_parser.add_argument("--memory-pixels", required=True, help=".npz of real crops")
    layers_parser.add_argument("--repeats", type=int, default=3)
    cost_parser = commands.add_parser("forward-cost")
    cost_parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    caffe.set_mode_cpu()
    commands = {"stall": stall, "layer-times": layer_times, "forward-cost": forward_cost}
    print(json.dumps(commands[args.command](args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
