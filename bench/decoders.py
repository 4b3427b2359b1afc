"""JPEG decoders on the loader benchmark's images: speed, and pixels against OpenCV and Caffe.

    python -m bench.decoders [--quick] [--no-caffe]

Every decoder decodes the same JPEGs (the encoded Datums of
``bench.dataset.jpeg_lmdb()``: 512 images of 256x256, quality 90, 4:2:0, as
OpenCV writes them) into H x W x 3 BGR uint8, in one process on one core
(OpenCV's thread pool off, as in the server):

- OpenCV ``cv2.imdecode`` (``IMREAD_UNCHANGED``: Caffe's decoder, and the
  server's for the JPEGs simplejpeg does not get);
- the server's own ``decode_image`` (``server/decode.py``): simplejpeg for
  these JPEGs, after choosing the decoder by their markers
  (NOTE [ JPEGs through simplejpeg ]);
- simplejpeg ``decode_jpeg(colorspace="BGR")``, accurate (default) and with
  ``fastdct`` + ``fastupsample``;
- PyTurboJPEG ``TurboJPEG().decode(pixel_format=TJPF_BGR)``, if its library loads;
- Pillow ``Image.open`` + ``np.asarray`` (RGB; the BGR view is free).

Rounds alternate the decoders (a different order each round); a run decodes
every image once. Reported: median images/s, the median of the per-round
ratios to OpenCV, the pixel difference to OpenCV, and, unless ``--no-caffe``,
the difference to Caffe's own Data layer (IJG libjpeg 9d, run by the Caffe
Python through ``bench/caffe_decode.py``) against issue 3's parity bound:
mean |difference| <= 1.5, 99.9 % within 16, all within 64.
"""

from __future__ import annotations

import argparse
import ctypes.util
import io
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import cv2
import lmdb
import numpy as np
import simplejpeg

from bench import dataset, report
from bench.children import Children, print_report
from harness.children import REPO, caffe_python, child_env
from server.caffe_proto import Datum
from server.decode import COLOR_NATIVE, decode_image

LOG_DIR = dataset.CACHE_DIR / "logs"
CAFFE_DECODE = str(REPO / "bench" / "caffe_decode.py")
CAFFE_DEADLINE_S = 180.0
PARITY_MEAN, PARITY_P999, PARITY_MAX = 1.5, 16, 64

cv2.setNumThreads(1)


@dataclass
class Decoder:
    name: str
    library: str
    decode: Optional[Callable[[bytes], np.ndarray]]  # None: not available, ``library`` says why


def _opencv() -> Decoder:
    build = [line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
             if line.strip().startswith("JPEG:")]
    return Decoder("OpenCV cv2.imdecode", "opencv-python-headless %s, %s"
                   % (cv2.__version__, build[0] if build else "?"),
                   lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED))


def _server() -> Decoder:
    return Decoder("zfeed decode_image (the server's)", "server/decode.py: simplejpeg %s where it gives OpenCV's "
                   "pixels, else OpenCV" % simplejpeg.__version__,
                   lambda data: decode_image(data, COLOR_NATIVE).transpose(1, 2, 0))


def _simplejpeg(fast: bool) -> Decoder:
    name = "simplejpeg%s" % (" fastdct+fastupsample" if fast else "")
    return Decoder(name, "simplejpeg %s (bundled libjpeg-turbo)" % simplejpeg.__version__,
                   lambda data: simplejpeg.decode_jpeg(data, colorspace="BGR", fastdct=fast, fastupsample=fast))


def _pyturbojpeg() -> Decoder:
    name = "PyTurboJPEG"
    try:
        import turbojpeg
        from importlib.metadata import version
    except ImportError as exc:
        return Decoder(name, "not installed (%s)" % exc, None)
    try:
        jpeg = turbojpeg.TurboJPEG()
    except (OSError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        return Decoder(name, "PyTurboJPEG %s: no usable libturbojpeg (it bundles none): %s"
                       % (version("PyTurboJPEG"), first), None)
    return Decoder(name, "PyTurboJPEG %s + the system's %s (it bundles none)"
                   % (version("PyTurboJPEG"), ctypes.util.find_library("turbojpeg") or "libturbojpeg"),
                   lambda data: jpeg.decode(data, pixel_format=turbojpeg.TJPF_BGR))


def _pillow() -> Decoder:
    name = "Pillow"
    try:
        import PIL
        from PIL import Image, features
    except ImportError as exc:
        return Decoder(name, "not installed (%s)" % exc, None)

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image)[:, :, ::-1]

    return Decoder(name, "Pillow %s (bundled libjpeg-turbo %s)" % (PIL.__version__, features.version("libjpeg_turbo")),
                   decode)


def decoders() -> List[Decoder]:
    return [_opencv(), _server(), _simplejpeg(False), _simplejpeg(True), _pyturbojpeg(), _pillow()]


def jpeg_bytes(path) -> List[bytes]:
    """The encoded images of the LMDB, in key order (Caffe's cursor order)."""
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            images = []
            for _key, value in txn.cursor():
                datum = Datum()
                datum.ParseFromString(value)
                images.append(bytes(datum.data))
    finally:
        env.close()
    return images


def decode_rate(decode: Callable[[bytes], np.ndarray], images: List[bytes]) -> float:
    start = time.perf_counter()
    for data in images:
        decode(data)
    return len(images) / (time.perf_counter() - start)


def as_chw(images: List[np.ndarray]) -> np.ndarray:
    return np.stack([np.ascontiguousarray(image.transpose(2, 0, 1)) for image in images])


def difference(pixels: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    diff = np.abs(pixels.astype(np.int16) - reference.astype(np.int16))
    return {"mean": float(diff.mean()), "p999": float(np.percentile(diff, 99.9)), "max": int(diff.max()),
            "differing": float((diff != 0).mean())}


def caffe_reference(children: Children, count: int) -> np.ndarray:
    out = dataset.CACHE_DIR / ("caffe-decoded-%d.npy" % count)
    process = children.start("decoders-caffe", [caffe_python(), CAFFE_DECODE, str(dataset.jpeg_lmdb()),
                                                 str(out), "--count", str(count)], child_env())
    children.result(process, CAFFE_DEADLINE_S)
    return np.load(out)


def run(rounds: int, with_caffe: bool) -> str:
    head = report.machine_line("zfeed decoder benchmark (bench/decoders.py)")
    images = jpeg_bytes(dataset.jpeg_lmdb())
    available = [d for d in decoders() if d.decode is not None]
    missing = [d for d in decoders() if d.decode is None]
    reference = as_chw([available[0].decode(data) for data in images])
    decoded = {d.name: as_chw([d.decode(data) for data in images]) for d in available}
    caffe = None
    if with_caffe:
        with Children(LOG_DIR) as children:
            caffe = caffe_reference(children, len(images))
    rates: Dict[str, List[float]] = {d.name: [] for d in available}
    for round_number in range(rounds):
        shift = round_number % len(available)
        for decoder in available[shift:] + available[:shift]:
            rates[decoder.name].append(decode_rate(decoder.decode, images))
        print("  round %d: %s" % (round_number + 1, ", ".join("%s %.0f" % (name.split()[0], r[-1])
                                                              for name, r in rates.items())), file=sys.stderr)
    opencv = rates[available[0].name]
    rows = []
    for decoder in available:
        ratio = report.paired_ratio(rates[decoder.name], opencv)
        to_cv = difference(decoded[decoder.name], reference)
        row = [decoder.name, decoder.library, "%.0f" % statistics.median(rates[decoder.name]), "%.2f" % ratio,
               "%.3f / %d (%.2f %% differ)" % (to_cv["mean"], to_cv["max"], 100 * to_cv["differing"])]
        if caffe is not None:
            to_caffe = difference(decoded[decoder.name], caffe)
            holds = (to_caffe["mean"] <= PARITY_MEAN and to_caffe["p999"] <= PARITY_P999
                     and to_caffe["max"] <= PARITY_MAX)
            row += ["%.3f / %.0f / %d" % (to_caffe["mean"], to_caffe["p999"], to_caffe["max"]),
                    "holds" if holds else "BROKEN"]
        row.append(report.runs(rates[decoder.name]))
        rows.append(row)
    header = ["Decoder", "Library", "images/s (median)", "ratio to OpenCV", "vs OpenCV: mean / max abs"]
    if caffe is not None:
        header += ["vs Caffe (libjpeg 9d): mean / p99.9 / max", "parity bound (1.5 / 16 / 64)"]
    header.append("runs")
    notes = [
        "",
        "- %d rounds over %d JPEGs (256x256, quality 90, 4:2:0, ~%.0f KB each); a run decodes every image "
        "once into H x W x 3 BGR uint8, in this one process on one core; the decoders alternate, in a "
        "different order each round. Ratio: median of the per-round ratios to OpenCV."
        % (rounds, len(images), statistics.mean(len(d) for d in images) / 1e3),
        "- Pixel differences are in 8-bit levels over all %d images%s. Pillow decodes RGB; its BGR view costs nothing."
        % (len(images), "; Caffe's reference is its own Data layer (TEST, no transform) in the Caffe Python"
           if caffe is not None else ""),
        "- Machine shared with other test runs: preliminary figures. Load average at the end: %s."
        % report.load_average(),
    ]
    notes += ["- Not measured: %s: %s." % (d.name, d.library) for d in missing]
    return "\n".join([head, "", report.markdown_table(header, rows)] + notes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decoders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 15")
    parser.add_argument("--no-caffe", action="store_true", help="skip the comparison with Caffe's decoder")
    args = parser.parse_args(argv)
    return print_report("bench.decoders", LOG_DIR, lambda: run(3 if args.quick else 15, not args.no_caffe))


if __name__ == "__main__":
    sys.exit(main())
