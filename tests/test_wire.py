"""The wire format: round trips, frame splitting, and refusal of every malformed message."""

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_layer import compression, wire
from harness.datasets import smooth_images

pytestmark = pytest.mark.unit

LIMIT = 1 << 30


def make_batch(rows=4, max_frame_bytes=wire.MAX_FRAME_BYTES):
    data = np.arange(rows * 3 * 5 * 5, dtype=np.float32).reshape(rows, 3, 5, 5)
    label = np.arange(rows, dtype=np.float32)
    frames = wire.encode_batch("host:1", 7, {"data": data, "label": label},
                               indices=np.arange(10, 10 + rows), epochs=np.full(rows, 2),
                               max_frame_bytes=max_frame_bytes)
    return data, label, frames


def as_bytes(frames):
    return [bytes(f) for f in frames]


def test_round_trip_is_exact_and_zero_copy():
    data, label, frames = make_batch()
    received = as_bytes(frames)
    batch = wire.decode_batch(received, LIMIT)
    assert (batch.stream, batch.seq, batch.names, batch.size) == ("host:1", 7, ["data", "label"], 4)
    assert batch.indices.tolist() == [10, 11, 12, 13] and batch.epochs.tolist() == [2, 2, 2, 2]
    view = batch.array("data")
    assert np.array_equal(view, data) and np.array_equal(batch.array("label"), label)
    assert np.shares_memory(view, np.frombuffer(received[1], np.uint8))  # no copy on receive


def test_encoding_does_not_copy_the_arrays():
    data, _label, frames = make_batch()
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), data)


def test_large_arrays_split_along_the_batch_axis_under_the_frame_limit():
    row_bytes = 3 * 5 * 5 * 4
    data, label, frames = make_batch(rows=10, max_frame_bytes=3 * row_bytes)
    assert [len(f) for f in frames[1:5]] == [3 * row_bytes] * 3 + [row_bytes]
    batch = wire.decode_batch(as_bytes(frames), LIMIT)
    out = np.empty_like(data)
    batch.copy_into("data", out)
    assert np.array_equal(out, data) and np.array_equal(batch.array("data"), data)


def test_real_frame_limit_keeps_a_caffenet_batch_under_32_mib():
    spec = wire.array_spec("data", np.float32, (64, 3, 227, 227))
    assert spec.frame_count == 3
    assert max(stop - start for start, stop in spec.frame_rows()) * spec.row_bytes < 32 * 2**20


def test_a_message_of_several_batches_splits_into_consecutive_batches_without_copies():
    pixels = np.arange(12 * 2 * 3 * 3, dtype=np.uint8).reshape(12, 2, 3, 3)
    label = np.arange(12, dtype=np.float32)
    finish = {"finish": {"data": {"mean": [1.0, 2.0], "scale": 0.5}}}
    received = as_bytes(wire.encode_batch("host:1", 7, {"data": pixels, "label": label},
                                          indices=np.arange(100, 112), epochs=np.arange(12) // 5,
                                          extra=finish, batch_rows=4))
    batches = wire.decode_batch(received, LIMIT).split()
    assert [b.seq for b in batches] == [7, 8, 9]
    for number, batch in enumerate(batches):
        rows = slice(4 * number, 4 * number + 4)
        assert batch.size == 4 and batch.shape("data") == (4, 2, 3, 3)
        assert batch.indices.tolist() == list(range(100, 112))[rows]
        assert batch.epochs.tolist() == (np.arange(12) // 5)[rows].tolist()
        assert np.array_equal(batch.raw("data"), pixels[rows])
        assert np.shares_memory(batch.raw("data"), np.frombuffer(received[1], np.uint8))
        expected = (pixels[rows].astype(np.float32) - np.float32([1, 2]).reshape(2, 1, 1)) * np.float32(0.5)
        assert np.array_equal(batch.array("data"), expected)
        assert np.array_equal(batch.array("label"), label[rows])
    assert sum(b.wire_bytes for b in batches) == sum(len(f) for f in received)


def test_a_message_of_one_batch_splits_into_itself():
    _, _, frames = make_batch()
    batch = wire.decode_batch(as_bytes(frames), LIMIT)
    assert batch.split() == [batch]


def test_copy_into_checks_the_destination_shape():
    _, _, frames = make_batch()
    with pytest.raises(ValueError, match="destination"):
        wire.decode_batch(as_bytes(frames), LIMIT).copy_into("data", np.empty((4, 3, 5, 4), np.float32))


def header_of(frames):
    return msgpack.unpackb(frames[0], raw=False)


def with_header(frames, **changes):
    header = header_of(frames)
    header.update(changes)
    return [msgpack.packb(header, use_bin_type=True)] + as_bytes(frames[1:])


@pytest.mark.parametrize("changes, message", [
    ({"zfeed": 3}, "version 3, this side speaks version 4"),
    ({"batch_rows": 3}, "'batch_rows' 3 does not divide the message's 4 samples"),
    ({"batch_rows": 0}, "'batch_rows' 0 does not divide"),
    ({"batch_rows": True}, "'batch_rows' True does not divide"),
    ({"batch_rows": 2, "arrays": [["data", "<f4", [4, 3, 5, 5], 1], ["label", "<f4", [4], 4]]},
     "several batches must hold each array in one frame"),
    ({"zfeed": None}, "version None"),
    ({"kind": "hello"}, "kind 'hello'"),
    ({"seq": "x"}, "integer 'seq'"),
    ({"arrays": []}, "1 to 64 arrays"),
    ({"arrays": [["data", "|O", [4], 4]]}, "dtype '|O'"),
    ({"arrays": [["data", "<U4", [4], 4]]}, "dtype '<U4'"),
    ({"arrays": [["data", ">f4", [4, 3, 5, 5], 4], ["label", "<f4", [4], 4]]}, "dtype '>f4'"),
    ({"arrays": [["data", "<f4", [4, -3, 5, 5], 4], ["label", "<f4", [4], 4]]}, "non-negative"),
    ({"arrays": [["data", "<f4", [4, 2**40, 2**40], 4], ["label", "<f4", [4], 4]]}, "larger than"),
    ({"arrays": [["data", "<f4", [4, 3, 5, 5], 0], ["label", "<f4", [4], 4]]}, "rows_per_frame"),
    ({"arrays": [["data", "<f4", [4, 3, 5, 5], 4], ["data", "<f4", [4], 4]]}, "repeat"),
    ({"arrays": [["data", "<f4", [4, 3, 5, 6], 4], ["label", "<f4", [4], 4]]}, "needs 1440"),
    ({"arrays": [["data", "<f4", [5, 3, 5, 5], 5], ["label", "<f4", [4], 4]]}, "5 rows for 4 samples"),
    ({"arrays": [["data", "<f4", [4, 3, 5, 5], 1], ["label", "<f4", [4], 4]]}, "frames, its header describes"),
    ({"index": b"\x00" * 5}, "'index' is not a packed"),
    ({"epoch": [1, 2]}, "'epoch' is not a packed"),
    ({"epoch": b"\x00" * 12}, "4 indices but 3 epochs"),
    ({"extra": 3}, "'extra' is not a map"),
    ({"codec": 3}, "'codec' 3 is not one of"),
    ({"origin": 3}, "'origin' is not {server"),
    ({"origin": {"server": "a", "shard": [2, 2], "seed": 0, "samples": 9}}, "'origin' is not"),
    ({"origin": {"server": "", "shard": [0, 2], "seed": 0, "samples": 9}}, "'origin' is not"),
    ({"origin": {"server": "a", "shard": [0, True], "seed": 0, "samples": 9}}, "'origin' is not"),
    ({"origin": {"server": "a", "shard": [0, 2], "seed": -1, "samples": 9}}, "'origin' is not"),
    ({"origin": {"server": "a", "shard": [0, 2], "seed": 0}}, "'origin' is not"),
    ({"origin": {"server": "a", "shard": [0, 2], "seed": 0, "samples": 9, "resumed": 1}}, "'origin' is not"),
])
def test_malformed_headers_are_refused_with_a_reason(changes, message):
    _, _, frames = make_batch()
    with pytest.raises(wire.WireError, match=message.replace("(", r"\(").replace("'", "'")):
        wire.decode_batch(with_header(frames, **changes), LIMIT)


def test_the_origin_travels_to_every_batch_of_a_message():
    origin = wire.StreamOrigin("5eb0f00d", 1, 3, 2**64 - 1, 1000, resumed=True)
    rows = 4
    arrays = {"data": np.zeros((rows, 2), np.float32), "label": np.zeros(rows, np.float32)}
    specs = [wire.array_spec(name, a.dtype, a.shape) for name, a in arrays.items()]
    header = wire.encode_header("host:1", 7, specs, np.arange(rows), np.zeros(rows), batch_rows=2, origin=origin)
    frames = [header] + [bytes(f) for spec in specs for f in wire.array_frames(spec, arrays[spec.name])]
    batches = wire.decode_batch(frames, LIMIT).split()
    assert [b.origin for b in batches] == [origin, origin]
    assert wire.decode_batch(as_bytes(make_batch()[2]), LIMIT).origin is None  # optional for other senders


def test_an_origin_without_resumed_is_from_a_server_that_started_afresh():
    """Servers before the field existed leave it out; the layer takes their stream as started afresh."""
    _, _, frames = make_batch()
    origin = {"server": "a", "shard": [0, 2], "seed": 0, "samples": 9}
    assert wire.decode_batch(with_header(frames, origin=origin), LIMIT).origin == wire.StreamOrigin("a", 0, 2, 0, 9)
    assert not wire.decode_batch(with_header(frames, origin=origin), LIMIT).origin.resumed


def test_missing_or_extra_frames_are_refused():
    _, _, frames = make_batch()
    with pytest.raises(wire.WireError, match="message has 4 frames, its header describes 3"):
        wire.decode_batch(as_bytes(frames) + [b"x"], LIMIT)
    with pytest.raises(wire.WireError, match="message has 2 frames, its header describes 3"):
        wire.decode_batch(as_bytes(frames[:-1]), LIMIT)
    with pytest.raises(wire.WireError, match="empty message"):
        wire.decode_batch([], LIMIT)


def test_truncated_frame_is_refused():
    _, _, frames = make_batch()
    received = as_bytes(frames)
    received[1] = received[1][:-1]
    with pytest.raises(wire.WireError, match="frame 1 of array 'data' is 1199 bytes"):
        wire.decode_batch(received, LIMIT)


def test_batch_over_the_size_limit_is_refused_before_reading_frames():
    _, _, frames = make_batch()
    with pytest.raises(wire.WireError, match="larger than the 1000-byte limit"):
        wire.decode_batch(as_bytes(frames), 1000)


def test_header_that_is_not_msgpack_or_not_a_map_is_refused():
    _, _, frames = make_batch()
    for header in (b"\xc1garbage", msgpack.packb([1, 2]), msgpack.packb({1: 2})):
        with pytest.raises(wire.WireError):
            wire.decode_batch([header] + as_bytes(frames[1:]), LIMIT)


def test_msgpack_extension_types_are_refused():
    # msgpack-numpy and pickle-based codecs ride on ext types: never decoded here.
    ext = msgpack.packb({"zfeed": wire.WIRE_VERSION, "x": msgpack.ExtType(1, b"cos\nsystem\n")}, use_bin_type=True)
    with pytest.raises(wire.WireError, match="not valid msgpack"):
        wire.decode_batch([ext], LIMIT)


def test_sender_refuses_unsupported_arrays():
    with pytest.raises(wire.WireError, match="dtype object"):
        wire.array_spec("x", np.dtype(object), (2,))
    with pytest.raises(wire.WireError, match="0-d"):
        wire.array_spec("x", np.float32, ())
    with pytest.raises(wire.WireError, match="frame limit"):
        wire.array_spec("x", np.float32, (1, 100), max_frame_bytes=100)
    spec = wire.array_spec("x", np.float32, (4, 2))
    with pytest.raises(wire.WireError, match="not C-contiguous"):
        wire.array_frames(spec, np.zeros((2, 4), np.float32).T)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=6))
def test_random_frames_never_crash_the_decoder(frames):
    try:
        wire.decode_batch(frames, 1 << 20)
    except wire.WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 10_000), value=st.integers(0, 255), cut=st.integers(0, 10_000))
def test_mutated_headers_decode_or_are_refused_cleanly(position, value, cut):
    _, _, frames = make_batch()
    header = bytearray(frames[0])
    header[position % len(header)] = value
    header = bytes(header[: max(1, len(header) - cut % 8)])
    try:
        batch = wire.decode_batch([header] + as_bytes(frames[1:]), 1 << 20)
    except wire.WireError:
        return
    for name in batch.names:  # whatever was accepted is consistent with its frames
        assert batch.array(name).nbytes == batch.spec(name).nbytes


def test_fuzz_many_thousands_of_random_and_mutated_messages():
    """A seeded fuzz run: every message decodes consistently or is refused with WireError."""
    rng = np.random.default_rng(20261123)
    _, _, frames = make_batch(rows=3)
    valid = as_bytes(frames)
    accepted = 0
    for _ in range(20000):
        message = [bytearray(f) for f in valid]
        kind = rng.integers(4)
        if kind == 0:  # random bytes in a random number of frames
            message = [rng.bytes(int(rng.integers(0, 64))) for _ in range(int(rng.integers(1, 5)))]
        elif kind == 1:  # flip bytes of the header
            for _ in range(int(rng.integers(1, 6))):
                message[0][int(rng.integers(len(message[0])))] = int(rng.integers(256))
        elif kind == 2:  # truncate or extend one frame
            victim = int(rng.integers(len(message)))
            message[victim] = message[victim][: int(rng.integers(len(message[victim]) + 1))] + rng.bytes(
                int(rng.integers(0, 3)))
        else:  # drop or duplicate a frame
            victim = int(rng.integers(len(message)))
            message = message[:victim] + message[victim + 1:] if rng.integers(2) else message + [message[victim]]
        try:
            batch = wire.decode_batch([bytes(f) for f in message], 1 << 20)
        except wire.WireError:
            continue
        accepted += 1
        for name in batch.names:
            assert batch.array(name).nbytes == batch.spec(name).nbytes
    assert accepted < 20000  # the mutations really produce refusals


def pixel_batch(finish):
    pixels = np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2)
    return as_bytes(wire.encode_batch("s", 0, {"data": pixels}, np.arange(2), np.zeros(2),
                                      extra={"finish": finish} if finish is not None else None))


def test_finished_pixels_are_float32_caffe_arithmetic():
    batch = wire.decode_batch(pixel_batch({"data": {"mean": [1.5, 2.0, 3.0], "scale": 0.25}}), LIMIT)
    raw = batch.raw("data")
    expected = (raw.astype(np.float32) - np.array([1.5, 2, 3], np.float32).reshape(3, 1, 1)) * np.float32(0.25)
    assert raw.dtype == np.uint8 and batch.dtype("data") == np.float32
    assert np.array_equal(batch.array("data"), expected)
    out = np.empty((2, 3, 2, 2), np.float32)
    batch.copy_into("data", out)
    assert np.array_equal(out, expected)
    with pytest.raises(ValueError, match="finished into float32"):
        batch.copy_into("data", np.empty((2, 3, 2, 2), np.float64))
    plain = wire.decode_batch(pixel_batch({"data": {"mean": None, "scale": 2.0}}), LIMIT)
    assert np.array_equal(plain.array("data"), plain.raw("data").astype(np.float32) * 2)


@pytest.mark.parametrize("finish, message", [
    ({"label": {"mean": None, "scale": 1.0}}, "not an N x C x H x W uint8 array"),
    ({"data": {"mean": [1, 2], "scale": 1.0}}, "must list 3 numbers"),
    ({"data": {"mean": None, "scale": "x"}}, "scale of 'data' is not a number"),
    ({"data": {"mean": None}}, "exactly 'mean' and 'scale'"),
    ([1], "'finish' is not a map"),
])
def test_malformed_finish_instructions_are_refused(finish, message):
    with pytest.raises(wire.WireError, match=message):
        wire.decode_batch(pixel_batch(finish), LIMIT)


# -- compression (--compress) --------------------------------------------------------------------

CODEC_NAMES = sorted(compression.CODECS)


def compressed_batch(codec_name, data, max_frame_bytes=wire.MAX_FRAME_BYTES):
    label = np.arange(len(data), dtype=np.float32)
    return wire.encode_batch("s", 3, {"data": data, "label": label}, np.arange(len(data)), np.zeros(len(data)),
                             max_frame_bytes=max_frame_bytes, codec=compression.Codec(codec_name))


@pytest.mark.parametrize("codec_name", CODEC_NAMES)
def test_compressed_frames_are_shorter_and_decode_to_the_same_arrays(codec_name):
    data = smooth_images(6)
    frames = compressed_batch(codec_name, data)
    assert header_of(frames)["codec"] == codec_name
    assert len(frames[1]) < data.nbytes * 0.8  # really compressed
    assert len(frames[2]) == 6 * 4  # six float32 labels do not shrink: sent raw
    batch = wire.decode_batch(as_bytes(frames), LIMIT)
    assert np.array_equal(batch.raw("data"), data)
    assert np.array_equal(batch.array("label"), np.arange(6, dtype=np.float32))
    assert batch.wire_bytes == sum(len(frame) for frame in as_bytes(frames))  # as received, compressed


@pytest.mark.parametrize("codec_name", CODEC_NAMES)
def test_frames_that_do_not_shrink_travel_raw_beside_compressed_ones(codec_name):
    data = smooth_images(6)
    data[3:] = np.random.default_rng(1).integers(0, 256, data[3:].shape)  # noise: incompressible
    row_bytes = data[0].nbytes
    frames = compressed_batch(codec_name, data, max_frame_bytes=3 * row_bytes)
    assert len(frames[1]) < 3 * row_bytes and len(frames[2]) == 3 * row_bytes
    assert np.array_equal(wire.decode_batch(as_bytes(frames), LIMIT).raw("data"), data)


@pytest.mark.parametrize("codec_name", CODEC_NAMES)
def test_corrupt_compressed_frames_are_refused(codec_name):
    frames = as_bytes(compressed_batch(codec_name, smooth_images(4)))
    for damaged in (frames[1][: len(frames[1]) // 2], frames[1][:40] + bytes(len(frames[1]) - 40)):
        with pytest.raises(wire.WireError, match=codec_name):
            wire.decode_batch([frames[0], damaged, frames[2]], LIMIT)


@pytest.mark.parametrize("codec_name", CODEC_NAMES)
def test_a_frame_that_decompresses_to_more_than_its_rows_is_refused(codec_name):
    frames = as_bytes(compressed_batch(codec_name, smooth_images(4)))
    larger = as_bytes(compressed_batch(codec_name, smooth_images(8)))
    with pytest.raises(wire.WireError, match=codec_name):
        wire.decode_batch([frames[0], larger[1], frames[2]], LIMIT)


def test_a_zstd_frame_claiming_a_huge_size_allocates_only_the_rows(monkeypatch):
    import tracemalloc

    import zstandard

    frames = as_bytes(compressed_batch("zstd", smooth_images(4)))
    bomb = zstandard.ZstdCompressor(level=1).compress(bytes(200 * 2**20))  # 200 MiB of zeros
    assert len(bomb) < 4 * 3 * 40 * 48 and zstandard.get_frame_parameters(bomb).content_size == 200 * 2**20
    tracemalloc.start()
    try:
        with pytest.raises(wire.WireError, match="more than"):
            wire.decode_batch([frames[0], bomb, frames[2]], LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


def test_unknown_codec_and_overlong_frames_are_refused():
    frames = compressed_batch("zstd", smooth_images(4))
    with pytest.raises(wire.WireError, match="'codec' 'brotli'"):
        wire.decode_batch(with_header(frames, codec="brotli"), LIMIT)
    raw = as_bytes(make_batch()[2])
    with pytest.raises(wire.WireError, match="frame 1 of array 'data' is"):
        wire.decode_batch([with_header(raw, codec="zstd")[0], raw[1] + b"x", raw[2]], LIMIT)


def test_a_missing_codec_package_is_named_with_the_fix(monkeypatch):
    frames = as_bytes(compressed_batch("zstd", smooth_images(4)))
    monkeypatch.setitem(compression.CODECS, "zstd", ("zfeed_no_such_module", "zstandard"))
    with pytest.raises(wire.WireError, match=r"needs the 'zstandard' package.*pip install zstandard"):
        wire.decode_batch(frames, LIMIT)
    # An uncompressed batch needs no codec package at all.
    raw = as_bytes(make_batch()[2])
    assert wire.decode_batch(with_header(raw, codec="zstd"), LIMIT).size == 4


@pytest.mark.parametrize("codec_name", CODEC_NAMES)
def test_fuzzed_compressed_messages_decode_consistently_or_are_refused(codec_name):
    rng = np.random.default_rng(7)
    valid = as_bytes(compressed_batch(codec_name, smooth_images(3, (3, 12, 12))))
    refused = 0
    for _ in range(3000):
        message = [bytearray(f) for f in valid]
        for _ in range(int(rng.integers(1, 4))):
            message[1][int(rng.integers(len(message[1])))] = int(rng.integers(256))
        if rng.integers(2):
            message[1] = message[1][: int(rng.integers(len(message[1]) + 1))]
        try:
            batch = wire.decode_batch([bytes(f) for f in message], 1 << 20)
        except wire.WireError:
            refused += 1
            continue
        assert batch.raw("data").nbytes == batch.spec("data").nbytes
    assert refused > 0
