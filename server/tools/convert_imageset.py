"""Build an LMDB of Caffe Datums from images, like Caffe's ``convert_imageset``.

Run as ``python -m server.tools.convert_imageset SOURCE OUTPUT_DB``. SOURCE is
a Caffe list file (``path label`` per line) or a folder with one sub-folder
per class. Records are keyed ``"%08d_%s" % (i, relative_path)`` in write
order, as Caffe keys them, so an LMDB cursor returns them in that order.

Differences from Caffe, on purpose: an unreadable image stops the run (Caffe
skips it with a log line), an existing OUTPUT_DB is refused and a failed run
removes what it wrote, and ``--gray --encoded`` stores a grayscale image
(Caffe stores the original colour file).
"""

import argparse
import os
import random
import shutil
import sys
from typing import NamedTuple, Optional

import cv2
import lmdb
import numpy as np
from tqdm import tqdm

from server.caffe_proto import encoded_datum, image_to_datum
from server.sources import read_image_list, scan_class_folder

COMMIT_EVERY = 1000
# Only address space: LMDB files are sparse on Linux and grow with the data.
INITIAL_MAP_SIZE = 1 << 40
_SAME_FORMAT = {"jpeg": "jpg"}


class ImagesetError(Exception):
    """One input image could not be converted.

    ``index`` is its position in the entries passed to ``convert_imageset``
    (before shuffling), ``path`` the file that was read.
    """

    def __init__(self, index, path, reason):
        super().__init__(f"{path}: {reason}")
        self.index, self.path, self.reason = index, path, reason


def _image_format(name):
    """'jpg' for 'JPEG', 'png' for 'png', ...: one spelling per format."""
    name = name.lower()
    return _SAME_FORMAT.get(name, name)


def _format_of(path):
    return _image_format(os.path.splitext(path)[1].lstrip("."))


class _ImageOptions(NamedTuple):
    gray: bool
    resize: tuple  # (height, width); (0, 0) keeps the size
    encoded: bool
    encode_type: Optional[str]  # canonical spelling, see _image_format


def _datum_bytes(index, path, label, options):
    """Read one image and serialise its Datum; the image's shape for check_size."""
    try:
        with open(path, "rb") as f:
            file_bytes = f.read()
    except OSError as exc:
        raise ImagesetError(index, path, exc.strerror) from None
    # imdecode of the file's bytes decodes exactly as imread (EXIF orientation
    # included) and the same bytes serve --encoded; a missing file is an OSError.
    flag = cv2.IMREAD_GRAYSCALE if options.gray else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(file_bytes, np.uint8), flag)
    if image is None:
        raise ImagesetError(index, path, "not a readable image")
    height, width = options.resize
    if height and width:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if not options.encoded:
        return image_to_datum(image.transpose(2, 0, 1), label).SerializeToString(), image.shape
    target = options.encode_type or _format_of(path)
    if not (height or options.gray) and target == _format_of(path):
        return encoded_datum(file_bytes, label).SerializeToString(), image.shape
    try:
        ok, buffer = cv2.imencode("." + target, image)
    except cv2.error:
        ok = False
    if not ok:
        raise ImagesetError(index, path, f"cannot encode as {target!r}; pass --encode-type")
    return encoded_datum(buffer.tobytes(), label).SerializeToString(), image.shape


class _LmdbWriter:
    """Puts records in transactions of COMMIT_EVERY, doubling map_size when full."""

    def __init__(self, path, map_size):
        self._env = lmdb.open(path, map_size=map_size, writemap=False, meminit=False)
        self._pending = []
        self.max_key_size = self._env.max_key_size()

    def put(self, key, value):
        self._pending.append((key, value))
        if len(self._pending) >= COMMIT_EVERY:
            self.commit()

    def commit(self):
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:
                self._env.set_mapsize(2 * self._env.info()["map_size"])
        self._pending.clear()

    def close(self):
        self._env.close()


def convert_imageset(entries, output_path, *, root_folder="", encoded=False, encode_type=None,
                     resize=(0, 0), gray=False, shuffle=False, seed=None, check_size=False,
                     progress=False, map_size=INITIAL_MAP_SIZE):
    """Write ``entries`` (``(relative_path, label)`` pairs) as Datums to a new LMDB.

    Images are read from ``os.path.join(root_folder, relative_path)`` as BGR
    (or 1-channel with ``gray``) and optionally resized to ``resize =
    (height, width)`` with bilinear interpolation. Raw Datums hold CHW
    bytes. With ``encoded``, a Datum holds the original file when its pixels
    are unchanged (no resize, no gray) and its format is ``encode_type`` (or
    no type is forced); otherwise the image is re-encoded to ``encode_type``,
    else to the file's own format. ``shuffle`` permutes the order with
    ``random.Random(seed)`` (seed None: not reproducible). ``check_size``
    requires one image shape throughout. Returns the number of records.

    Raises ValueError for bad options, FileExistsError if ``output_path``
    exists, ImagesetError for a bad image; on any failure the partly
    written LMDB is removed.
    """
    height, width = resize
    if height < 0 or width < 0 or bool(height) != bool(width):
        raise ValueError(f"resize needs both height and width, or neither; got {resize}")
    if encode_type and not encoded:
        raise ValueError("encode_type only applies to encoded Datums")
    if os.path.exists(output_path):
        raise FileExistsError(f"{output_path} already exists; remove it or choose another output")
    options = _ImageOptions(gray, (height, width), encoded,
                            encode_type and _image_format(encode_type))
    order = list(range(len(entries)))
    if shuffle:
        random.Random(seed).shuffle(order)
    writer = _LmdbWriter(output_path, map_size)
    try:
        with tqdm(order, disable=not progress, file=sys.stderr, unit="img") as bar:
            first_shape = None
            for i, index in enumerate(bar):
                relative_path, label = entries[index]
                path = os.path.join(root_folder, relative_path)
                key = ("%08d_%s" % (i, relative_path)).encode("utf-8")
                if len(key) > writer.max_key_size:
                    raise ImagesetError(index, path,
                                        f"LMDB key longer than {writer.max_key_size} bytes")
                value, shape = _datum_bytes(index, path, label, options)
                first_shape = first_shape or shape
                if check_size and shape != first_shape:
                    raise ImagesetError(index, path, f"size {shape[:2]} differs from the first "
                                                     f"image's {first_shape[:2]} (--check-size)")
                writer.put(key, value)
        writer.commit()
    except BaseException:
        writer.close()
        shutil.rmtree(output_path, ignore_errors=True)
        raise
    writer.close()
    return len(order)


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m server.tools.convert_imageset",
        description="Convert images to an LMDB of Caffe Datums (like Caffe's convert_imageset).")
    parser.add_argument("source", help="a Caffe list file ('relative/path label' per line; "
                                       "the label follows the last space) or a folder with one "
                                       "sub-folder per class (sorted names get labels 0..K-1)")
    parser.add_argument("output", help="LMDB directory to create; must not exist")
    parser.add_argument("--source-kind", choices=("list", "folder"),
                        help="how to read SOURCE (default: folder if it is a directory, else list)")
    parser.add_argument("--root-folder", default="",
                        help="folder the paths of a list file are relative to (default: current)")
    parser.add_argument("--encoded", action="store_true",
                        help="store encoded image files instead of raw CHW pixels")
    parser.add_argument("--encode-type", choices=("jpg", "png"),
                        help="with --encoded, re-encode every image to this format")
    parser.add_argument("--resize-height", type=int, default=0,
                        help="resize to this height, bilinear (needs --resize-width)")
    parser.add_argument("--resize-width", type=int, default=0,
                        help="resize to this width, bilinear (needs --resize-height)")
    parser.add_argument("--gray", action="store_true", help="read images as 1-channel grayscale")
    parser.add_argument("--shuffle", action="store_true", help="randomly permute the images")
    parser.add_argument("--seed", type=int, help="seed for --shuffle, for a reproducible order")
    parser.add_argument("--check-size", action="store_true",
                        help="fail unless all images end up the same size")
    return parser


def _entries_for(args):
    """``(entries, root_folder, where)``; ``where(index)`` locates an entry for messages."""
    kind = args.source_kind or ("folder" if os.path.isdir(args.source) else "list")
    if kind == "folder":
        if args.root_folder:
            raise ValueError("--root-folder applies only to a list file source")
        entries, classes = scan_class_folder(args.source)
        print(f"convert_imageset: {len(classes)} classes, {len(entries)} images", file=sys.stderr)
        return entries, args.source, lambda index: ""
    entries, line_numbers = read_image_list(args.source)
    return entries, args.root_folder, lambda index: f"{args.source} line {line_numbers[index]}: "


def main(argv=None):
    """CLI entry point; returns the exit status (2 for a user mistake)."""
    args = _parser().parse_args(argv)
    try:
        entries, root_folder, where = _entries_for(args)
        count = convert_imageset(
            entries, args.output, root_folder=root_folder, encoded=args.encoded,
            encode_type=args.encode_type, resize=(args.resize_height, args.resize_width),
            gray=args.gray, shuffle=args.shuffle, seed=args.seed, check_size=args.check_size,
            progress=True)
    except ImagesetError as exc:
        print(f"convert_imageset: error: {where(exc.index)}{exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, lmdb.Error) as exc:
        print(f"convert_imageset: error: {exc}", file=sys.stderr)
        return 2
    print(f"convert_imageset: wrote {count} records to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
