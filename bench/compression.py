"""Would compressing the uint8 pixel frame help? Ratio and speed on real batches, and what that means per link.

    python -m bench.compression [--quick]

Real batches: a real server (1 worker, the JPEG LMDB of ``bench.dataset``,
crop 227, mirror, mean values 104,117,123, batch 64, uint8 pixels on the
wire) sends to a ``BatchClient`` here, and the ``data`` frames (64 x 3 x
227 x 227 uint8, 9.9 MB, one frame) of several batches are kept. Each
codec compresses and decompresses every frame whole, on one core, in
interleaved rounds:

- lz4 frame (``lz4.frame``, level 0 = default fast mode);
- zstd levels -3 (fast), 1 and 3 (``zstandard``, single-threaded);
- zstd 1 and lz4 after a horizontal byte delta (``x[w] - x[w-1]`` mod 256
  per row, a stand-in for the filters blosc2 would bring), the numpy delta
  and its inverse (``cumsum``) included in the time.

Then a table of what a link of 1 and 10 Gbit/s could carry with each
payload (line rate over bytes per batch: no TCP or Ethernet overhead, an
upper bound for every row alike), and what compressing and decompressing
each batch would cost the server and the trainer at that rate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np

from bench import dataset, report
from bench.children import Children, print_report
from bench.server_rate import ServedStream

LOG_DIR = dataset.CACHE_DIR / "logs"
LINKS = (("1 Gbit/s", 125e6), ("10 Gbit/s", 1250e6))
FLOAT32_FACTOR = 4


@dataclass(frozen=True)
class Plan:
    batches: int
    rounds: int


FULL = Plan(batches=8, rounds=5)
QUICK = Plan(batches=3, rounds=2)


@dataclass
class Codec:
    name: str
    compress: Callable[[memoryview], bytes]
    decompress: Callable[[bytes, int], object]


def _delta(frame: memoryview, width: int) -> np.ndarray:
    rows = np.frombuffer(frame, np.uint8).reshape(-1, width)
    out = np.empty_like(rows)
    out[:, 0] = rows[:, 0]
    np.subtract(rows[:, 1:], rows[:, :-1], out=out[:, 1:])
    return out


def _undelta(data: np.ndarray, width: int) -> np.ndarray:
    return np.cumsum(data.reshape(-1, width), axis=1, dtype=np.uint8)


def codecs(width: int) -> List[Codec]:
    import lz4.frame
    import zstandard

    def zstd(level: int) -> Codec:
        compressor = zstandard.ZstdCompressor(level=level, threads=0)
        decompressor = zstandard.ZstdDecompressor()
        return Codec("zstd %d" % level, compressor.compress,
                     lambda data, size: decompressor.decompress(data, max_output_size=size))

    zstd1 = zstandard.ZstdCompressor(level=1, threads=0)
    unzstd = zstandard.ZstdDecompressor()
    return [
        Codec("lz4 (frame, default)", lambda frame: lz4.frame.compress(frame, compression_level=0),
              lambda data, size: lz4.frame.decompress(data)),
        zstd(-3), zstd(1), zstd(3),
        Codec("zstd 1 after horizontal delta", lambda frame: zstd1.compress(_delta(frame, width)),
              lambda data, size: _undelta(np.frombuffer(unzstd.decompress(data, max_output_size=size), np.uint8),
                                          width)),
        Codec("lz4 after horizontal delta", lambda frame: lz4.frame.compress(_delta(frame, width), compression_level=0),
              lambda data, size: _undelta(np.frombuffer(lz4.frame.decompress(data), np.uint8), width)),
    ]


def versions() -> str:
    import lz4
    import zstandard

    return "zstandard %s (libzstd %s), lz4 %s (liblz4 %s)" % (
        zstandard.__version__, ".".join(map(str, zstandard.ZSTD_VERSION)), lz4.__version__,
        lz4.library_version_string())


def real_frames(count: int) -> Tuple[List[bytes], Tuple[int, ...]]:
    with Children(LOG_DIR) as children:
        with ServedStream(children, "lmdb:%s" % dataset.jpeg_lmdb(), workers=1,
                          name="compression-server") as stream:
            frames = []
            shape = None
            for _ in range(count):
                batch = stream.next_batch()
                pixels = batch.raw("data")
                shape = pixels.shape
                frames.append(pixels.tobytes())
    return frames, shape


def measure(frames: List[bytes], codec_list: List[Codec], rounds: int) -> Dict[str, dict]:
    size = len(frames[0])
    results = {c.name: {"ratio": [], "compress": [], "decompress": []} for c in codec_list}
    for round_number in range(rounds):
        shift = round_number % len(codec_list)
        for codec in codec_list[shift:] + codec_list[:shift]:
            for frame in frames:
                start = time.perf_counter()
                packed = codec.compress(memoryview(frame))
                middle = time.perf_counter()
                unpacked = codec.decompress(packed, size)
                end = time.perf_counter()
                if round_number == 0 and bytes(memoryview(unpacked).cast("B")) != frame:
                    raise AssertionError("%s does not round-trip" % codec.name)
                result = results[codec.name]
                result["ratio"].append(size / len(packed))
                result["compress"].append(size / (middle - start) / 1e6)
                result["decompress"].append(size / (end - middle) / 1e6)
        print("  round %d done" % (round_number + 1), file=sys.stderr)
    return {name: {key: statistics.median(values) for key, values in r.items()} for name, r in results.items()}


def link_table(size: int, measured: Dict[str, dict]) -> str:
    rows = []
    for link, rate in LINKS:
        payloads = [("float32 (--wire-format float32)", size * FLOAT32_FACTOR, None),
                    ("uint8, uncompressed (default)", size, None)]
        payloads += [("uint8 + %s" % name, size / m["ratio"], m) for name, m in measured.items()]
        for name, nbytes, m in payloads:
            carried = rate / nbytes
            server_ms = trainer_ms = cores = ""
            if m is not None:
                compress_s, decompress_s = size / (m["compress"] * 1e6), size / (m["decompress"] * 1e6)
                server_ms, trainer_ms = "%.1f" % (1000 * compress_s), "%.1f" % (1000 * decompress_s)
                cores = "%.2f / %.2f" % (carried * compress_s, carried * decompress_s)
            rows.append([link, name, "%.2f" % (nbytes / 1e6), "%.1f" % carried, "%.0f" % (carried * 64),
                         "%.2f" % (size / nbytes), server_ms, trainer_ms, cores])
    return report.markdown_table(
        ["link", "payload", "MB per batch", "batches/s the link carries", "images/s the link carries",
         "ratio to uint8 uncompressed", "server CPU ms per batch (compress)", "trainer CPU ms per batch (decompress)",
         "cores busy at that rate: server / trainer"], rows)


def run(plan: Plan) -> str:
    head = report.machine_line("zfeed wire compression (bench/compression.py)")
    frames, shape = real_frames(plan.batches)
    measured = measure(frames, codecs(shape[-1]), plan.rounds)
    size = len(frames[0])
    rows = [[name, "%.3f" % m["ratio"], "%.0f" % m["compress"], "%.0f" % m["decompress"],
             "%.1f" % (size / m["compress"] / 1e3), "%.1f" % (size / m["decompress"] / 1e3)]
            for name, m in measured.items()]
    codec_table = report.markdown_table(["codec (one core)", "ratio (raw / compressed)", "compress MB/s",
                                         "decompress MB/s", "compress ms per batch", "decompress ms per batch"],
                                        rows)
    notes = [
        "",
        "- %d real uint8 data frames of %s (%.1f MB each) from a real server (JPEG LMDB, crop 227, mirror); "
        "%d rounds, codecs interleaved; medians. MB/s count uncompressed bytes. %s."
        % (plan.batches, " x ".join(map(str, shape)), size / 1e6, plan.rounds, versions()),
        "",
        link_table(size, measured),
        "",
        "- Computed from the figures above, not measured through a shaped link (bench/multihost.py measures "
        "the server's --compress through tc-shaped links): what the link carries is its line rate over the "
        "bytes of a batch; compressing costs the server (spread over its workers, each compressing a batch "
        "it filled) and decompressing costs the trainer, per batch, as in the codec table. Compression pays "
        "only where the link, not the server, is the bound: compare the batches/s a link carries with what "
        "the server's workers make (bench/efficiency.py, bench/plot.py).",
        "- The machine is shared with other test runs: preliminary figures. Load average at the end: %s."
        % report.load_average(),
    ]
    return "\n".join([head, "", codec_table] + notes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compression", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 batches, 2 rounds")
    args = parser.parse_args(argv)
    return print_report("bench.compression", LOG_DIR, lambda: run(QUICK if args.quick else FULL))


if __name__ == "__main__":
    sys.exit(main())
