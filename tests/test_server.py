"""The data server as a real process over real tcp, received with BatchClient."""

import json
import signal
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest
import zmq

from client_layer import BatchClient, NoDataError, wire
from harness.children import PYTHON, ChildProcess, ServerProcess, alive, child_pids, free_port, run_server
from harness.datasets import corrupt_records, random_images, smooth_images, write_image_list, write_lmdb, write_npz
from server.plan import EpochPlan
from server.transform import TransformParams, choose_crops, transform_into

pytestmark = pytest.mark.integration

N = 30


@pytest.fixture
def images():
    return random_images(N, (3, 12, 14))


@pytest.fixture
def labels():
    return [i % 10 for i in range(N)]


def serve_and_collect(tmp_path, source, extra, batches, timeout_s=20.0, name="server"):
    port = free_port()
    args = ["--source", source, "--bind", "tcp://127.0.0.1:%d" % port, *extra]
    with ServerProcess(args, tmp_path / (name + ".log")) as server:
        with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=timeout_s) as client:
            received = [client.receive() for _ in range(batches)]
            result = [(b.seq, b.indices.copy(), b.epochs.copy(), b.array("data").copy(),
                       b.array("label").copy()) for b in received]
        status = server.wait() if "--epochs" in extra else server.stop()
        return result, status, server.log


def expected_batch(images, labels, params, plan, seq):
    batch = plan.batch(seq)
    data = []
    for index, draw in zip(batch.indices, batch.draws):
        image = images[index]
        crops = choose_crops(params, image.shape[1], image.shape[2], draw[np.newaxis])
        out = np.empty((image.shape[0], crops.height, crops.width), np.float32)
        transform_into(image, params, crops.h_offs[0], crops.w_offs[0], crops.mirrors[0], out)
        data.append(out)
    return np.stack(data), np.asarray(labels, np.float32)[batch.indices]


def test_epochs_deliver_every_sample_once_then_exit_0(tmp_path, images, labels):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", images, labels)
    batches, status, log = serve_and_collect(
        tmp_path, source, ["--batch-size", "8", "--workers", "2", "--epochs", "3", "--seed", "5"], batches=12)
    assert status == 0, log
    assert "served 3 epochs (12 batches): done" in log
    counts = Counter((int(e), int(i)) for _, idx, ep, _, _ in batches for e, i in zip(ep, idx))
    for epoch in range(3):
        assert sorted(i for (e, i) in counts if e == epoch) == list(range(N))
    assert max(counts.values()) == 1
    assert [seq for seq, *_ in batches] == list(range(12))


def test_batches_are_caffe_transforms_of_the_planned_samples(tmp_path, images, labels):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", images, labels)
    extra = ["--batch-size", "8", "--workers", "2", "--seed", "9", "--crop-size", "10", "--mirror",
             "--mean-value", "104,117,123", "--scale", "0.5"]
    batches, status, log = serve_and_collect(tmp_path, source, extra, batches=5)
    assert status == 0, log
    params = TransformParams(phase="train", crop_size=10, mirror=True, scale=0.5,
                             mean=np.array([104, 117, 123], np.float32).reshape(3, 1, 1))
    plan = EpochPlan(N, 8, seed=9, shuffle=True)
    mirrored = 0
    for seq, indices, epochs, data, label in batches:
        want_data, want_label = expected_batch(images, labels, params, plan, seq)
        assert np.array_equal(data, want_data) and np.array_equal(label, want_label)
        mirrored += sum(choose_crops(params, 12, 14, plan.batch(seq).draws).mirrors)
    assert 0 < mirrored < 40  # the stream really mixes flipped and unflipped samples
    assert data.shape == (8, 3, 10, 10) and data.dtype == np.float32 and label.shape == (8,)


def test_content_does_not_depend_on_the_number_of_workers(tmp_path, images, labels):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", images, labels)
    extra = ["--batch-size", "7", "--seed", "1", "--crop-size", "9", "--mirror"]
    one, _, _ = serve_and_collect(tmp_path, source, extra + ["--workers", "1"], batches=9, name="one")
    two, _, _ = serve_and_collect(tmp_path, source, extra + ["--workers", "2"], batches=9, name="two")
    for a, b in zip(one, two):
        assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[3], b[3])


def test_test_phase_sends_dataset_order_with_centre_crops(tmp_path, images, labels):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", images, labels)
    batches, status, log = serve_and_collect(
        tmp_path, source, ["--phase", "test", "--batch-size", "5", "--workers", "2", "--crop-size", "8",
                           "--epochs", "1"], batches=6)
    assert status == 0, log
    assert np.concatenate([b[1] for b in batches]).tolist() == list(range(N))
    centre = images[:, :, 2:10, 3:11].astype(np.float32)
    assert np.array_equal(np.concatenate([b[3] for b in batches]), centre)


@pytest.mark.parametrize("encode", ["", ".png"])
def test_lmdb_of_raw_and_encoded_datums(tmp_path, images, labels, encode):
    source = "lmdb:%s" % write_lmdb(tmp_path / "db", images, labels, encode=encode)
    batches, status, log = serve_and_collect(
        tmp_path, source, ["--phase", "test", "--batch-size", "10", "--workers", "2", "--epochs", "1"], batches=3)
    assert status == 0, log
    assert np.array_equal(np.concatenate([b[3] for b in batches]), images.astype(np.float32))
    assert np.concatenate([b[4] for b in batches]).tolist() == labels


def test_image_list_with_root_folder(tmp_path, images, labels):
    folder = tmp_path / "images"
    folder.mkdir()
    list_path = write_image_list(folder, images, labels)
    batches, status, log = serve_and_collect(
        tmp_path, "imagelist:%s" % list_path,
        ["--root-folder", str(folder) + "/", "--phase", "test", "--batch-size", "10", "--epochs", "1"], batches=3)
    assert status == 0, log
    assert np.array_equal(np.concatenate([b[3] for b in batches]), images.astype(np.float32))


def test_batches_larger_than_a_frame_arrive_whole(tmp_path):
    images = random_images(6, (3, 700, 700), seed=3)  # 5.9 MB per float sample: 3 frames per batch
    source = "npz:%s" % write_npz(tmp_path / "big.npz", images, range(6))
    batches, status, log = serve_and_collect(
        tmp_path, source, ["--phase", "test", "--batch-size", "6", "--workers", "1", "--epochs", "1"], batches=1)
    assert status == 0, log
    assert np.array_equal(batches[0][3], images.astype(np.float32))


def test_server_dials_in_to_a_binding_trainer(tmp_path, images, labels):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", images, labels)
    port = free_port()
    with BatchClient(bind="tcp://127.0.0.1:%d" % port, timeout_s=20) as client:
        args = ["--source", source, "--connect", "tcp://127.0.0.1:%d" % port, "--batch-size", "10",
                "--epochs", "1", "--phase", "test"]
        with ServerProcess(args, tmp_path / "server.log") as server:
            indices = np.concatenate([client.receive().indices for _ in range(3)])
            assert server.wait() == 0, server.log
    assert indices.tolist() == list(range(N))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_server_and_workers_within_seconds(tmp_path, images, labels, signum):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", images, labels)
    port = free_port()
    args = ["--source", source, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", "4", "--workers", "2"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=20) as client:
            client.receive()
            workers = child_pids(server.process.pid)
            assert len(workers) == 2
            started = time.monotonic()
            assert server.stop(signum, timeout_s=10) == 0, server.log
            assert time.monotonic() - started < 6
        assert not [pid for pid in workers if alive(pid)]
        assert "%s received: stopping" % signal.Signals(signum).name in server.log


def test_sigkill_of_the_server_takes_its_workers_along(tmp_path, images, labels):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", images, labels)
    args = ["--source", source, "--bind", "tcp://127.0.0.1:%d" % free_port(), "--workers", "2"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        server.wait_ready()
        workers = child_pids(server.process.pid)
        assert len(workers) == 2
        server.process.kill()
        server.process.wait(10)
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if alive(pid)]


def test_bad_sample_with_fail_policy_stops_the_server_naming_it(tmp_path, images, labels):
    db = write_lmdb(tmp_path / "db", images, labels, encode=".png")
    corrupt_records(db, {4: b"\x08\x01not a datum"})
    port = free_port()
    args = ["--source", "lmdb:%s" % db, "--bind", "tcp://127.0.0.1:%d" % port, "--phase", "test",
            "--batch-size", "10", "--workers", "1", "--on-bad-sample", "fail"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        assert server.wait() == 1
    assert "cannot load LMDB %s key '00000004'" % db in server.log


def test_a_refused_configuration_exits_2_before_serving(tmp_path, images, labels):
    """Start-up refusals are tested in-process (test_startup_checks.py); here, the process's side."""
    source = "npz:%s" % write_npz(tmp_path / "d.npz", images, labels)
    result = run_server(["--source", source, "--mean-file", "m.binaryproto", "--mean-value", "1,2,3"])
    assert result.returncode == 2
    assert "--mean-file and --mean-value are both set" in result.stderr
    assert "serving" not in result.stderr and "Traceback" not in result.stderr


def test_port_in_use_is_a_clear_error(tmp_path, images, labels):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", images, labels)
    port = free_port()
    with BatchClient(bind="tcp://127.0.0.1:%d" % port, timeout_s=1):
        result = run_server(["--source", source, "--bind", "tcp://127.0.0.1:%d" % port])
    assert result.returncode == 1
    assert "cannot bind tcp://127.0.0.1:%d" % port in result.stderr


def test_client_without_server_times_out_naming_the_address():
    port = free_port()
    with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=0.5) as client:
        started = time.monotonic()
        with pytest.raises(NoDataError, match=r"no batch within 0\.5 s") as caught:
            client.receive()
        assert time.monotonic() - started < 3
    assert "connected to tcp://127.0.0.1:%d" % port in str(caught.value)
    assert "is the data server running" in str(caught.value)


def test_batch_memory_is_bounded_by_max_inflight_mb(tmp_path, images, labels):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", images, labels)
    batch_bytes = 8 * 3 * 12 * 14 + 8 * 4  # uint8 pixels on the wire, float32 labels
    budget_mb = 3.5 * batch_bytes / 2**20
    batches, status, log = serve_and_collect(
        tmp_path, source, ["--batch-size", "8", "--workers", "2", "--epochs", "2",
                           "--max-inflight-mb", "%.6f" % budget_mb], batches=8)
    assert status == 0, log
    assert "2 workers, 3 batch slots" in log  # 3 whole batches fit in the budget, and no more
    assert sorted(int(i) for b in batches for i, e in zip(b[1], b[2]) if e == 0) == list(range(N))


@pytest.mark.parametrize("transform", [
    ["--crop-size", "10", "--mirror", "--mean-value", "104,117,123.5", "--scale", "0.017"],
    ["--crop-size", "9", "--mean-value", "120"],
    ["--mirror", "--scale", "0.00390625"],
    [],
])
def test_uint8_pixels_on_the_wire_give_the_float32_path_bit_for_bit(tmp_path, images, labels, transform):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", images, labels)
    common = ["--batch-size", "6", "--seed", "3", "--workers", "2"] + transform
    as_pixels, _, log = serve_and_collect(tmp_path, source, common, batches=8, name="pixels")
    as_floats, _, _ = serve_and_collect(tmp_path, source, common + ["--wire-format", "float32"], batches=8,
                                        name="floats")
    assert "data 6x3" in log
    for pixels, floats in zip(as_pixels, as_floats):
        assert pixels[3].dtype == floats[3].dtype == np.float32
        assert np.array_equal(pixels[3], floats[3]) and np.array_equal(pixels[4], floats[4])


def test_pixels_travel_as_uint8_a_quarter_of_the_bytes(tmp_path, images, labels):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", images, labels)
    port = free_port()
    args = ["--source", source, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", "5",
            "--mean-value", "100", "--scale", "0.5"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=20) as client:
            batch = client.receive()
        server.stop()
    assert batch.spec("data").dtype == np.uint8 and batch.spec("data").nbytes == 5 * 3 * 12 * 14
    assert batch.dtype("data") == np.float32
    expected = (batch.raw("data").astype(np.float32) - np.float32(100)) * np.float32(0.5)
    assert np.array_equal(batch.array("data"), expected)


@pytest.mark.parametrize("compress", ["lz4", "zstd", "zstd:1"])
def test_compressed_batches_are_smaller_and_decode_to_the_same_bytes(tmp_path, compress):
    images = smooth_images(24, (3, 40, 48))
    images[20:] = random_images(4, (3, 40, 48))  # noise: these frames travel raw
    source = "npz:%s" % write_npz(tmp_path / "d.npz", images, range(24))
    common = ["--batch-size", "4", "--phase", "test", "--workers", "2", "--crop-size", "32",
              "--mean-value", "104,117,123", "--scale", "0.5", "--max-batches-per-message", "1"]
    plain, _, _ = serve_and_collect(tmp_path, source, common, batches=6, name="plain")
    port, metrics_port = free_port(), free_port()
    args = ["--source", source, "--bind", "tcp://127.0.0.1:%d" % port, "--compress", compress,
            "--metrics-port", str(metrics_port), *common]
    context = zmq.Context()
    with ServerProcess(args, tmp_path / "compressed.log") as server:
        socket = context.socket(zmq.PULL)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVTIMEO, 20000)
        socket.connect("tcp://127.0.0.1:%d" % port)
        try:
            messages = [socket.recv_multipart() for _ in range(6)]
        finally:
            socket.close()
            context.term()
        metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics_port, timeout=10).read().decode()
        assert server.stop() == 0, server.log
    raw_bytes = 4 * 3 * 32 * 32
    sent = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
            if line.startswith(("zfeed_bytes_sent_total{", "zfeed_batches_sent_total{"))}
    # The metric counts bytes on the wire: five batches in six shrink, the noisy one does not.
    assert 0 < sent["zfeed_bytes_sent_total"] < 0.8 * sent["zfeed_batches_sent_total"] * (raw_bytes + 4 * 4)
    sizes = [len(message[1]) for message in messages]
    assert all(size < raw_bytes * 0.7 for size in sizes[:5]) and sizes[5] == raw_bytes, sizes
    for message, expected in zip(messages, plain):
        batch = wire.decode_batch(message, 1 << 30)
        assert (batch.seq, batch.indices.tolist()) == (expected[0], expected[1].tolist())
        assert np.array_equal(batch.array("data"), expected[3])
        assert np.array_equal(batch.array("label"), expected[4])


GATED_DATASET = """import pathlib, time
import numpy as np

class Gated:
    def __init__(self):
        pathlib.Path(%(opening)r).touch()
        deadline = time.monotonic() + 30
        while not pathlib.Path(%(gate)r).exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"data": np.full((1, 2, 2), i, np.uint8), "label": np.float32(i)}

def make():
    return Gated()
"""


def test_the_ready_file_exists_exactly_while_the_server_serves(tmp_path):
    """--ready-file: a stale one is removed before the source opens; written whole once the socket
    is bound; removed when the server stops."""
    opening, gate, ready = tmp_path / "opening", tmp_path / "gate", tmp_path / "announced.json"
    module = tmp_path / "gated_dataset.py"
    module.write_text(GATED_DATASET % {"opening": str(opening), "gate": str(gate)})
    ready.write_text("left by an earlier run")
    endpoint, metrics_port = "tcp://127.0.0.1:%d" % free_port(), free_port()
    args = ["--source", "python:%s:make" % module, "--bind", endpoint, "--ready-file", str(ready),
            "--batch-size", "2", "--workers", "1", "--metrics-port", str(metrics_port), "--stream-id", "s1"]
    # Not ServerProcess: it passes a ready file of its own, and removes any before the server starts.
    with ChildProcess([PYTHON, "-m", "server", *args], tmp_path / "server.log") as server:
        deadline = time.monotonic() + 30
        while not opening.exists():
            assert server.process.poll() is None and time.monotonic() < deadline, server.log
            time.sleep(0.02)
        assert not ready.exists(), "a stale ready file must not announce a server still starting"
        gate.touch()
        while not ready.exists():
            assert server.process.poll() is None and time.monotonic() < deadline, server.log
            time.sleep(0.02)
        assert json.loads(ready.read_text()) == {"pid": server.process.pid, "bind": [endpoint], "connect": [],
                                                 "metrics_port": metrics_port, "stream_id": "s1"}
        with BatchClient(endpoint, timeout_s=10) as client:
            assert client.receive().array("data").shape == (2, 1, 2, 2)
        assert server.stop() == 0, server.log
    assert not ready.exists(), "a stopped server must not stay announced"
    assert not list(tmp_path.glob("*.tmp")), "no temporary file is left behind"
