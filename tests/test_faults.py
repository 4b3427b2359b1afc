"""Faults the server must survive: dead workers, bad samples, restarts, lost trainers, garbage."""

import os
import random
import re
import signal
import socket
import threading
import time
from collections import Counter

import numpy as np
import pytest
import zmq

from client_layer import BatchClient, NoDataError, wire
from harness.children import ServerProcess, alive, child_pids, free_port
from harness.datasets import corrupt_records, random_images, smooth_images, write_image_list, write_lmdb, write_npz
from server import resume_state

pytestmark = pytest.mark.integration


def deliveries(batches):
    return Counter((int(e), int(i)) for b in batches for e, i in zip(b.epochs, b.indices))


def receive_all(client, count):
    batches = []
    for _ in range(count):
        batch = client.receive()
        batch.array("data")  # every batch decodes whole
        batches.append(batch)
    return batches


@pytest.mark.parametrize("compress", ["off", "zstd"])
def test_killed_workers_are_replaced_and_every_sample_arrives_once(tmp_path, compress):
    """With --compress, workers also die while packing batches: the pack tasks are re-issued too.
    Batches travel three to a message here, so a task holds 24 samples."""
    size, batch_size, epochs = 120, 8, 10
    # 300 kB batches, and 4 MB for batches in flight: neither the slots nor the socket buffers can hold
    # the stream, so the server serves (and workers work) while the trainer reads.
    images = smooth_images(size, (3, 128, 128), seed=1) if compress != "off" else random_images(size, (3, 128, 128), seed=1)
    db = write_lmdb(tmp_path / "db", images, range(size), encode=".png")
    port = free_port()
    args = ["--source", "lmdb:%s" % db, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", str(batch_size),
            "--workers", "2", "--epochs", str(epochs), "--crop-size", "112", "--mirror", "--seed", "3",
            "--compress", compress, "--max-inflight-mb", "4"]
    kills = []
    with ServerProcess(args, tmp_path / "server.log") as server, \
            BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=30) as client:
        server.wait_ready()
        stop = threading.Event()

        def kill_workers_at_random():
            rng = random.Random(7)
            while not stop.wait(rng.uniform(0.05, 0.25)) and len(kills) < 12:
                workers = [pid for pid in child_pids(server.process.pid) if alive(pid)]  # not zombies
                if workers:
                    victim = rng.choice(workers)
                    try:
                        os.kill(victim, signal.SIGKILL)
                        kills.append(victim)
                    except ProcessLookupError:
                        pass

        killer = threading.Thread(target=kill_workers_at_random)
        killer.start()
        try:
            batches = []
            for _ in range(epochs * size // batch_size):
                batches.append(client.receive())
                time.sleep(0.04)  # a trainer that computes, so kills land while workers work
        finally:
            stop.set()
            killer.join(10)
        assert server.wait() == 0, server.log
    assert len(kills) >= 5
    counts = deliveries(batches)
    assert all(counts[(e, i)] == 1 for e in range(epochs) for i in range(size))
    assert sum(counts.values()) == epochs * size
    # Every death while the server was serving is logged (kills after its last batch left are not)
    assert 5 <= server.log.count("killed by signal SIGKILL") <= len(kills)
    assert "restarting it and re-issuing" in server.log


def test_bad_samples_are_skipped_once_logged_and_batches_stay_full(tmp_path):
    size, batch_size, epochs = 40, 6, 2
    images = random_images(size, (3, 16, 16), seed=2)
    db = write_lmdb(tmp_path / "db", images, range(size), encode=".png")
    import cv2
    ok, png = cv2.imencode(".png", random_images(1, (16, 16, 3))[0])
    ok, small = cv2.imencode(".png", random_images(1, (8, 8, 3))[0])
    from server.caffe_proto import encoded_datum, image_to_datum
    bad = {
        3: b"\x08\x01not a datum",
        11: encoded_datum(png.tobytes()[: len(png) // 2], 11).SerializeToString(),  # truncated PNG
        20: encoded_datum(small.tobytes(), 20).SerializeToString(),  # wrong size
        29: image_to_datum(random_images(1, (1, 16, 16))[0], 29).SerializeToString(),  # wrong channels
    }
    corrupt_records(db, bad)
    port = free_port()
    args = ["--source", "lmdb:%s" % db, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", str(batch_size),
            "--workers", "2", "--epochs", str(epochs), "--phase", "test"]
    with ServerProcess(args, tmp_path / "server.log") as server, \
            BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=30) as client:
        # Every batch of the two epochs; a bad sample's row takes a position after them.
        batches = receive_all(client, -(-epochs * size // batch_size))
        assert server.wait() == 0, server.log
    assert all(b.size == batch_size for b in batches)
    counts = deliveries(batches)
    for epoch in range(epochs):
        assert sorted(i for (e, i) in counts if e == epoch) == sorted(set(range(size)) - set(bad))
    assert max(counts.values()) == 1
    for index in bad:
        assert server.log.count("skipping LMDB %s key '%08d'" % (db, index)) == 1
    # Each bad position skipped once: those of the two epochs, and of the third epoch's start taken for refills.
    third = sorted(i for (e, i) in counts if e == epochs)
    skipped = epochs * len(bad) + len([i for i in bad if third and i < max(third)])
    assert "skipped %d samples (4 distinct bad samples)" % skipped in server.log
    for batch in batches:  # every delivered row is the image its index names
        data = batch.array("data")
        for row, index in enumerate(batch.indices):
            assert np.array_equal(data[row], images[index])


def test_restarted_server_resumes_its_stream_from_state_dir(tmp_path):
    size, batch_size = 50, 5
    source = "npz:%s" % write_npz(tmp_path / "d.npz", random_images(size, (3, 8, 8)), range(size))
    port = free_port()
    state = tmp_path / "state"
    state.mkdir()
    args = ["--source", source, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", str(batch_size),
            "--phase", "test", "--state-dir", str(state), "--max-batches-per-message", "1"]
    with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=30) as client:
        with ServerProcess(args, tmp_path / "first.log") as first:
            before = receive_all(client, 4)
            assert first.stop(signal.SIGTERM) == 0, first.log
        client.timeout_s = 1
        while True:  # what the first server left in the socket buffers
            try:
                before += receive_all(client, 1)
            except NoDataError:
                break
        client.timeout_s = 30
        with ServerProcess(args, tmp_path / "second.log") as second:
            after = receive_all(client, 16)
            second.stop()
    assert "resuming from" in second.log
    # Resumed where the trainer was, not from scratch: nothing lost, nothing repeated (what the
    # second server sent again, the trainer dropped).
    positions = [int(e) * size + int(i) for b in before + after for e, i in zip(b.epochs, b.indices)]
    assert positions == list(range(len(positions)))


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("shape, batches_per_message", [((3, 32, 32), 2), ((3, 16, 16), 1)],
                         ids=["messages of 120 kB", "messages of 15 kB"])
def test_a_shard_server_restarted_mid_stream_costs_the_trainer_no_sample_and_repeats_none(
        tmp_path, signum, shape, batches_per_message):
    """Issue 13's case: two shard servers of one data set, one killed mid-stream and started again
    about a second later with its --state-dir, a trainer that stays connected and reads a little
    slower than they serve. It pauses (as Caffe does for a snapshot) longer than the server's save
    interval before the kill, so that the state saved is that of full queues and socket buffers.
    Messages under 64 kB are copied into ZeroMQ, not sent from the server's slots (sender.py)."""
    size, epochs, batch_size = 2000, 12, 20
    source = "npz:%s" % write_npz(tmp_path / "d.npz", random_images(size, shape), range(size))
    ports = [free_port(), free_port()]
    state = tmp_path / "state"
    state.mkdir()

    def args(shard):
        state_dir = ["--state-dir", str(state)] if shard == 0 else []
        return ["--source", source, "--bind", "tcp://127.0.0.1:%d" % ports[shard], "--shard", "%d/2" % shard,
                "--seed", "3", "--epochs", str(epochs), "--batch-size", str(batch_size), "--workers", "1",
                "--max-batches-per-message", str(batches_per_message)] + state_dir

    batches, total = [], epochs * size // batch_size
    with BatchClient(["tcp://127.0.0.1:%d" % port for port in ports], timeout_s=30) as client, \
            ServerProcess(args(0), tmp_path / "first.log") as first, \
            ServerProcess(args(1), tmp_path / "other.log") as other:
        while len(batches) < total // 4:
            batches += receive_all(client, 1)
            time.sleep(0.002)
        time.sleep(2 * resume_state.SAVE_INTERVAL_S)
        assert first.stop(signum) == (-signum if signum == signal.SIGKILL else 0), first.log
        stopped = time.monotonic()
        client.timeout_s = 0.2
        while time.monotonic() < stopped + 1:  # the other shard, and what the stopped server left, go on
            try:
                batches += receive_all(client, 1)
            except NoDataError:
                pass
        client.timeout_s = 30
        with ServerProcess(args(0), tmp_path / "second.log") as second:
            while len(batches) < total:
                batches += receive_all(client, 1)
                time.sleep(0.002)
            assert second.wait() == 0 and other.wait() == 0, (second.log, other.log)
            client.timeout_s = 1
            with pytest.raises(NoDataError):
                client.receive()
    assert "resuming from" in second.log
    assert deliveries(batches) == Counter({(e, i): 1 for e in range(epochs) for i in range(size)})
    assert client.repeated > 0  # the restart did send batches again: it was mid-stream
    assert client.overlapping_shards == 0


def test_layer_waits_for_a_server_that_comes_back(tmp_path, caplog):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", random_images(20, (3, 8, 8)), range(20))
    port = free_port()
    args = ["--source", source, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", "4"]
    with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=30) as client:
        with ServerProcess(args, tmp_path / "first.log") as first:
            client.receive()
            first.process.kill()
            first.process.wait(10)
        while True:  # what the dead server left in flight still arrives; then the client waits
            try:
                client.timeout_s = 1
                client.receive()
            except TimeoutError:
                break
        client.timeout_s = 30
        # Started here, not from a timer thread: a child dies with the thread that started it (PDEATHSIG).
        with ServerProcess(args, tmp_path / "second.log", prefix=["sh", "-c", 'sleep 6; exec "$@"', "sh"]):
            started = time.monotonic()
            batch = client.receive()
            waited = time.monotonic() - started
    assert batch.size == 4 and 5 < waited < 25
    assert any("waiting for data for 5 s (connected to tcp://127.0.0.1:%d)" % port in r.getMessage()
               for r in caplog.records)


def test_a_trainer_that_vanishes_does_not_stall_the_others(tmp_path):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", random_images(64, (3, 32, 32)), range(64))
    port = free_port()
    args = ["--source", source, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", "8", "--workers", "1"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        survivor = BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=20)
        with survivor:
            with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=20) as doomed:
                receive_all(doomed, 3)
            rss_before = None
            for round_ in range(6):
                receive_all(survivor, 100)
                rss = int([line for line in open("/proc/%d/status" % server.process.pid)
                           if line.startswith("VmRSS")][0].split()[1])
                rss_before = rss_before or rss
            assert rss < rss_before * 1.2 + 2048  # kB: no growth for the trainer that left
        assert server.stop() == 0


def test_garbage_on_the_server_port_does_not_disturb_it(tmp_path):
    source = "npz:%s" % write_npz(tmp_path / "d.npz", random_images(16, (3, 8, 8)), range(16))
    port = free_port()
    args = ["--source", source, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", "4"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        server.wait_ready()
        for payload in (b"GET / HTTP/1.0\r\n\r\n", os.urandom(4096), b"\xff" + b"\x00" * 8 + b"\x7f" * 100):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as intruder:
                intruder.sendall(payload)
        with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=20) as client:
            assert receive_all(client, 5)[-1].size == 4
        assert server.process.poll() is None
        assert server.stop() == 0


def test_trainer_drops_malformed_messages_and_keeps_the_good_ones():
    port = free_port()
    with BatchClient(bind="tcp://127.0.0.1:%d" % port, timeout_s=10) as client:
        context = zmq.Context()
        hostile = context.socket(zmq.PUSH)
        hostile.setsockopt(zmq.LINGER, 0)
        try:
            hostile.connect("tcp://127.0.0.1:%d" % port)
            good = wire.encode_batch("s", 0, {"data": np.ones((2, 3), np.float32)}, np.arange(2), np.zeros(2))
            for garbage in ([b"\x93junk"], [b""], [good[0]], [good[0], b"short"],
                            [wire.encode_header("s", 1, [wire.array_spec("x", np.float32, (2, 10**6))],
                                                np.arange(2), np.zeros(2)), b""]):
                hostile.send_multipart(garbage)
            hostile.send_multipart([bytes(f) for f in good])
            batch = client.receive()
        finally:
            hostile.close()
            context.term()
        assert batch.seq == 0 and np.all(batch.array("data") == 1)
        assert client.rejected == 5


POISON_DATASET = '''
import ctypes, numpy as np

class Poisoned:
    """Item 13 crashes the process that reads it, as a decoder bug would."""
    def __len__(self):
        return 40
    def __getitem__(self, i):
        if i == 13:
            ctypes.string_at(0)  # a real segfault
        return {"data": np.full((3, 4, 4), i, np.uint8), "label": i}

def make():
    return Poisoned()
'''


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_a_sample_that_crashes_workers_is_given_up_after_two_deaths(tmp_path, policy):
    module = tmp_path / "poisoned.py"
    module.write_text(POISON_DATASET)
    port = free_port()
    args = ["--source", "python:%s:make" % module, "--bind", "tcp://127.0.0.1:%d" % port, "--phase", "test",
            "--batch-size", "6", "--workers", "2", "--epochs", "2", "--on-bad-sample", policy]
    with ServerProcess(args, tmp_path / "server.log") as server:
        if policy == "fail":
            assert server.wait() == 1
        else:
            with BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=30) as client:
                batches = receive_all(client, 14)  # every batch of 2 epochs: 2 x 40 positions in batches of 6
            assert server.wait() == 0, server.log
    log = server.log
    # Two deaths make it a suspect, and a probe that reads it alone proves it bad; a later epoch's
    # batch already handed to a worker may cost one more death.
    assert log.count("killed by signal SIGSEGV while reading python:%s:make item 13" % module) in (2, 3)
    proof = "item 13: it was being read in 2 loader worker deaths, and reading it alone killed by signal SIGSEGV"
    if policy == "fail":
        assert proof + " (--on-bad-sample skip would skip it)" in log
        return
    assert "skipping python:%s:make %s" % (module, proof) in log
    counts = deliveries(batches)
    for epoch in range(2):
        assert sorted(i for (e, i) in counts if e == epoch) == [i for i in range(40) if i != 13]
    assert max(counts.values()) == 1
    for batch in batches:
        assert np.array_equal(batch.array("data")[:, 0, 0, 0], batch.indices.astype(np.float32))


def test_a_server_whose_files_all_vanish_stops_saying_so_instead_of_spinning(tmp_path):
    """Issue 16.1: an image list whose files are deleted while it is served."""
    listing = write_image_list(tmp_path, random_images(12, (3, 8, 8), seed=4), range(12))
    port = free_port()
    args = ["--source", "imagelist:%s" % listing, "--root-folder", "%s/" % tmp_path, "--bind",
            "tcp://127.0.0.1:%d" % port, "--batch-size", "4", "--workers", "2", "--max-batches-per-message", "1"]
    with ServerProcess(args, tmp_path / "server.log") as server, \
            BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=1, prefetch=1) as client:
        server.wait_ready()  # the 1 s receive timeout is for batches, not for a start-up on a busy machine
        client.receive()
        for image in tmp_path.glob("*.png"):
            image.unlink()
        started = time.monotonic()
        while server.process.poll() is None and time.monotonic() - started < 30:
            try:
                client.receive()  # what was filled before the files went
            except TimeoutError:
                pass
        assert server.wait() == 1, server.log
    assert time.monotonic() - started < 30
    assert re.search(r"\b\d+ of the 12 samples served are bad, and a whole epoch does not hold the \d+ good ones",
                     server.log), server.log


def test_idle_workers_killed_from_outside_do_not_stop_the_server(tmp_path):
    """A death counts toward the crash-loop limit (MAX_DEATHS_WITHOUT_PROGRESS, 5) only when the
    worker had work or had not yet opened its source: idle workers killed more often than that
    (an operator, the OOM killer) are replaced, and the stream goes on, every sample once."""
    size, batch_size = 40, 4
    images = random_images(size, (3, 64, 64), seed=2)
    db = write_lmdb(tmp_path / "db", images, range(size))
    port = free_port()
    args = ["--source", "lmdb:%s" % db, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", str(batch_size),
            "--workers", "2", "--phase", "test", "--log-interval", "0.2"]

    def workers_idle():  # the last throughput line (every 0.2 s) says no worker has a task
        lines = [line for line in server.log.splitlines() if "workers busy" in line]
        return bool(lines) and " 0 workers busy" in lines[-1]

    with ServerProcess(args, tmp_path / "server.log") as server, \
            BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=30) as client:
        server.wait_ready()
        batches = [client.receive()]
        deadline = time.monotonic() + 20
        killed = []
        for _ in range(8):
            while not workers_idle():  # the trainer reads no more: slots and buffers fill, workers go idle
                assert time.monotonic() < deadline, "the workers never went idle:\n" + server.log
                time.sleep(0.1)
            workers = [pid for pid in child_pids(server.process.pid) if alive(pid) and pid not in killed]
            assert workers, server.log
            os.kill(workers[0], signal.SIGKILL)
            killed.append(workers[0])
            time.sleep(0.5)  # replaced, and its source opened, meanwhile
        batches += receive_all(client, 2 * size // batch_size)
        assert server.process.poll() is None, server.log
        assert server.stop() == 0, server.log
    assert server.log.count("killed by signal SIGKILL") >= 8
    counts = deliveries(batches)
    assert all(counts[(e, i)] == 1 for e in range(2) for i in range(size)), counts
