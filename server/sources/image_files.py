"""Image files, as Caffe's ImageData layer reads them: from a list file, or one folder per class.

Each image is read with OpenCV as 3-channel BGR (``is_color: true``, the
default) or 1-channel gray, then, when a size is given, resized to exactly
``new_height`` x ``new_width`` with ``cv::resize``'s default bilinear
interpolation, as Caffe's ``ReadImageToCVMat`` does. A path is
``root_folder + path`` (string concatenation, as Caffe builds it); a
relative result is relative to ``base_dir``, the directory Caffe runs in.
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

from server.decode import COLOR_BGR, read_image_file
from server.sources.base import Sample, Source, SourceError, image_sample

IMAGE_SUFFIXES = frozenset(".bmp .jpeg .jpg .pbm .pgm .png .ppm .tif .tiff .webp".split())


def read_image_list(list_path: str) -> Tuple[List[Tuple[str, int]], List[int]]:
    """Parse a Caffe ImageData list into ``(entries, line_numbers)``.

    Each non-blank line is ``PATH LABEL``, split at the last space so PATH may
    contain spaces; ``line_numbers[i]`` is the 1-based line of ``entries[i]``.
    Raises SourceError naming the file and line for a malformed or empty list.
    """
    entries, line_numbers = [], []
    try:
        with open(list_path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                line = line.rstrip()
                if not line:
                    continue
                path, _, label_text = line.rpartition(" ")
                try:
                    label = int(label_text)
                except ValueError:
                    label = None
                if not path or label is None or not -2**31 <= label < 2**31:
                    raise SourceError("%s line %d: expected 'PATH LABEL' with an int32 label, got %r"
                                      % (list_path, number, line))
                entries.append((path, label))
                line_numbers.append(number)
    except OSError as exc:
        raise SourceError("cannot read image list %s: %s" % (list_path, exc.strerror)) from None
    if not entries:
        raise SourceError("image list %s names no images" % list_path)
    return entries, line_numbers


def scan_class_folder(folder):
    """Entries of a folder holding one sub-folder per class: ``(entries, classes)``.

    ``classes`` are the sorted sub-folder names; class k gets label k. Each
    class contributes its image files (by suffix, searched recursively,
    hidden names skipped) in sorted order, as paths relative to ``folder``.
    """
    classes = sorted(name for name in os.listdir(folder)
                     if not name.startswith(".") and os.path.isdir(os.path.join(folder, name)))
    entries = []
    for label, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(folder, name)):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [os.path.relpath(os.path.join(dirpath, f), folder) for f in filenames
                      if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]
        entries += [(path, label) for path in sorted(found)]
    return entries, classes


class ImageFilesSource(Source):
    """Image files with integer labels: ``entries`` are ``(path, label)``, read from ``root_folder + path``."""

    def __init__(self, entries: Sequence[Tuple[str, int]], root_folder: str = "",
                 color: str = COLOR_BGR, resize_hw: Tuple[int, int] = (0, 0), base_dir: str = ""):
        self.entries = list(entries)
        self.root_folder = root_folder
        self.color = color
        self.resize_hw = resize_hw
        self.base_dir = base_dir

    def __len__(self) -> int:
        return len(self.entries)

    def path(self, index: int) -> str:
        path = self.root_folder + self.entries[index][0]
        return os.path.join(self.base_dir, path) if self.base_dir else path

    def describe(self, index: int) -> str:
        return "image %s" % self.path(index)

    def read(self, index: int) -> Sample:
        return image_sample(read_image_file(self.path(index), self.color, self.resize_hw),
                            self.entries[index][1])


def image_list_source(list_path: str, root_folder: str = "", color: str = COLOR_BGR,
                      resize_hw: Tuple[int, int] = (0, 0), base_dir: str = "") -> ImageFilesSource:
    """The images a Caffe ImageData list names (see ``read_image_list``)."""
    entries, _ = read_image_list(list_path)
    return ImageFilesSource(entries, root_folder, color, resize_hw, base_dir)


def image_folder_source(folder: str, color: str = COLOR_BGR,
                        resize_hw: Tuple[int, int] = (0, 0)) -> ImageFilesSource:
    """The images of a folder with one sub-folder per class (labels: sorted class names)."""
    if not os.path.isdir(folder):
        raise SourceError("image folder %s does not exist" % folder)
    entries, classes = scan_class_folder(folder)
    if not entries:
        raise SourceError("image folder %s has no class sub-folders with images (%s)"
                          % (folder, ", ".join(sorted(IMAGE_SUFFIXES))))
    return ImageFilesSource(entries, os.path.join(folder, ""), color, resize_hw)
