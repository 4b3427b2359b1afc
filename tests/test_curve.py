"""CURVE: allowed trainers get batches, others nothing, and the wire is not readable."""

import socket
import threading

import numpy as np
import pytest

from client_layer import BatchClient, NoDataError
from harness.children import ServerProcess, free_port, run_server
from harness.datasets import write_npz
from test_startup_checks import refusal
from server.tools.keygen import main as keygen

pytestmark = pytest.mark.integration

MARKER = bytes([123]) * 64  # 64 pixels of value 123, as uint8 pixels travel in clear


@pytest.fixture
def keys(tmp_path):
    folder = tmp_path / "keys"
    for name in ("server", "trainer", "stranger"):
        assert keygen([str(folder), name]) == 0
    return folder


@pytest.fixture
def source(tmp_path):
    images = np.full((12, 3, 8, 8), 123, np.uint8)
    return "npz:%s" % write_npz(tmp_path / "d.npz", images, range(12))


def curve_server_args(source, port, keys):
    return ["--source", source, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", "4",
            "--curve-secret-key", str(keys / "server.key_secret"), "--allow-client-key", str(keys / "trainer.key")]


def client(port, keys, name=None, timeout_s=20.0):
    curve = {}
    if name:
        curve = dict(curve_secret_key=str(keys / ("%s.key_secret" % name)),
                     curve_server_key=str(keys / "server.key"))
    return BatchClient("tcp://127.0.0.1:%d" % port, timeout_s=timeout_s, **curve)


class Relay:
    """A TCP forwarder that records what the server sends: what a wiretap would see."""

    def __init__(self, target_port):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        self.captured = bytearray()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _pipe(self, source, sink, record):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if record:
                    self.captured += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve(self):
        self.listener.settimeout(20)
        while True:
            try:
                downstream, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=20)
            except OSError:
                return
            for s in (downstream, upstream):
                s.settimeout(None)
            threading.Thread(target=self._pipe, args=(downstream, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, downstream, True), daemon=True).start()

    def close(self):
        self.listener.close()


def test_allowed_trainer_receives_batches(tmp_path, keys, source):
    port = free_port()
    with ServerProcess(curve_server_args(source, port, keys), tmp_path / "server.log") as server:
        with client(port, keys, "trainer") as trainer:
            batch = trainer.receive()
        assert np.all(batch.array("data") == 123)
        assert "(CURVE, 1 trainer keys)" in server.log
        assert server.stop() == 0


@pytest.mark.parametrize("name", ["stranger", None])
def test_unknown_or_keyless_trainers_get_nothing(tmp_path, keys, source, name):
    port = free_port()
    with ServerProcess(curve_server_args(source, port, keys), tmp_path / "server.log") as server:
        server.wait_ready()
        with client(port, keys, name, timeout_s=3) as intruder:
            with pytest.raises(NoDataError):
                intruder.receive()
        with client(port, keys, "trainer") as trainer:  # the server still serves the allowed one
            trainer.receive()
        assert server.stop() == 0
    if name == "stranger":
        stranger_key = (keys / "stranger.key").read_text().split('public-key = "')[1].split('"')[0]
        assert "refused a trainer with unknown CURVE key %s" % stranger_key in server.log


@pytest.mark.parametrize("curve", [False, True])
def test_pixels_cross_the_wire_in_clear_only_without_curve(tmp_path, keys, source, curve):
    port = free_port()
    args = curve_server_args(source, port, keys) if curve else [
        "--source", source, "--bind", "tcp://127.0.0.1:%d" % port, "--batch-size", "4"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        server.wait_ready()
        relay = Relay(port)
        try:
            with client(relay.port, keys, "trainer" if curve else None) as trainer:
                batches = [trainer.receive() for _ in range(3)]
        finally:
            relay.close()
        server.stop()
    assert all(np.all(b.array("data") == 123) for b in batches)
    assert len(relay.captured) > 3 * 4 * 3 * 8 * 8  # at least the 3 batches' uint8 pixels went through
    assert (MARKER in relay.captured) is not curve


@pytest.mark.parametrize("extra, message", [
    (["--curve-secret-key", "{keys}/server.key_secret"], "needs at least one --allow-client-key"),
    (["--allow-client-key", "{keys}/trainer.key"], "--allow-client-key needs --curve-secret-key"),
    (["--curve-secret-key", "{keys}/server.key", "--allow-client-key", "{keys}/trainer.key"], "holds no secret key"),
    (["--curve-secret-key", "{keys}/missing", "--allow-client-key", "{keys}/trainer.key"], "cannot read CURVE key"),
])
def test_bad_key_options_are_refused_at_start_up(keys, source, extra, message):
    assert message in refusal(["--source", source] + [e.format(keys=keys) for e in extra])


# -- key files with bad content: refused at start-up, in-process and as a process -------------

def _cut_key(path, which, keep):
    """Rewrite ``path`` with its ``which`` key cut to ``keep`` characters."""
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith(which):
            name, _, value = line.partition("=")
            lines[number] = '%s= "%s"' % (name, value.strip().strip('"')[:keep])
    path.write_text("\n".join(lines) + "\n")


def test_secret_key_cut_short_is_refused_naming_the_file(source, keys):
    _cut_key(keys / "server.key_secret", "secret-key", 20)
    message = refusal(curve_server_args(source, free_port(), keys))
    assert str(keys / "server.key_secret") in message and "40" in message


def test_truncated_client_key_file_is_refused_naming_the_file(source, keys):
    path = keys / "trainer.key"
    text = path.read_text()
    path.write_text(text[:text.index("public-key") + 30])
    message = refusal(curve_server_args(source, free_port(), keys))
    assert str(path) in message


def test_secret_key_file_whose_keys_do_not_match_is_refused(source, keys):
    secret = (keys / "server.key_secret").read_text()
    trainer_public = (keys / "trainer.key").read_text().split('public-key = "')[1].split('"')[0]
    server_public = secret.split('public-key = "')[1].split('"')[0]
    (keys / "server.key_secret").write_text(secret.replace(server_public, trainer_public))
    assert "do not match" in refusal(curve_server_args(source, free_port(), keys))


def test_key_with_characters_outside_z85_is_refused(source, keys):
    path = keys / "trainer.key"
    public = path.read_text().split('public-key = "')[1].split('"')[0]
    path.write_text(path.read_text().replace(public, "~" * 40))
    assert str(path) in refusal(curve_server_args(source, free_port(), keys))


def test_server_with_a_secret_key_cut_short_exits_2_and_does_not_hang(tmp_path, keys, source):
    _cut_key(keys / "server.key_secret", "secret-key", 20)
    result = run_server(curve_server_args(source, free_port(), keys), timeout_s=20)
    assert result.returncode == 2, result.stderr
    assert str(keys / "server.key_secret") in result.stderr and "Traceback" not in result.stderr
