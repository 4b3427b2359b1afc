"""Decoding gives OpenCV's pixels whichever decoder runs (NOTE [ JPEGs through simplejpeg ]).

The corpus is built here: colour (YCbCr and RGB) and gray JPEGs from three
encoders (OpenCV, Pillow, simplejpeg), every chroma subsampling, progressive,
restart intervals, odd and tiny sizes, qualities 10 to 100, every Exif
orientation, CMYK, corrupt and truncated files, patched frame headers
(lossless, 12-bit) and PNGs. The arithmetic-coded JPEGs in tests/images
were written by libjpeg-turbo 2.1.5's cjpeg (``cjpeg -arithmetic
[-progressive]``), as no Python encoder writes them.
"""

import io
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg
from PIL import Image

from server.decode import COLOR_BGR, COLOR_GRAY, COLOR_NATIVE, decode_image, read_image_file, simplejpeg_colorspace

pytestmark = pytest.mark.unit

IMAGES = Path(__file__).parent / "images"
# What Caffe's OpenCV path asks for under each mode (server/decode.py's contract).
OPENCV_FLAGS = {COLOR_NATIVE: cv2.IMREAD_UNCHANGED, COLOR_BGR: cv2.IMREAD_COLOR, COLOR_GRAY: cv2.IMREAD_GRAYSCALE}
SIZES = [(1, 1), (2, 3), (7, 5), (16, 16), (17, 33), (33, 17), (255, 257)]
SUBSAMPLINGS = ["411", "420", "422", "440", "444"]
EXIF_ORIENTATION = 0x0112


def picture(height, width, channels=3, seed=0):
    """Gradients with noise: edges and texture that every chroma and DCT path has to get right."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 7 + y * 3) % 256, (x * y) % 256, (y * 11) % 256][:channels], -1)
    noise = np.random.default_rng(seed).integers(-40, 40, base.shape)
    image = np.clip(base + noise, 0, 255).astype(np.uint8)
    return image[:, :, 0] if channels == 1 else image


def opencv(image, *params, ext=".jpg"):
    ok, encoded = cv2.imencode(ext, image, list(params))
    assert ok
    return encoded.tobytes()


def pillow(image, mode=None, **options):
    out = io.BytesIO()
    source = Image.fromarray(image)
    (source.convert(mode) if mode else source).save(out, "JPEG", **options)
    return out.getvalue()


def exif(orientation):
    tags = Image.Exif()
    tags[EXIF_ORIENTATION] = orientation
    return tags.tobytes()


def patched_frame(data, marker=None, precision=None):
    """``data`` with its start-of-frame marker or sample precision replaced."""
    at = data.index(b"\xff\xc0")
    patched = bytearray(data)
    if marker is not None:
        patched[at + 1] = marker
    if precision is not None:
        patched[at + 4] = precision
    return bytes(patched)


def build_corpus():
    """{name: (bytes, the decoder the rule names under native/color/gray)}: ``simplejpeg`` or ``opencv``."""
    corpus = {}
    fast = {COLOR_NATIVE: "simplejpeg", COLOR_BGR: "simplejpeg", COLOR_GRAY: "simplejpeg"}
    slow = {COLOR_NATIVE: "opencv", COLOR_BGR: "opencv", COLOR_GRAY: "opencv"}
    turned = {COLOR_NATIVE: "simplejpeg", COLOR_BGR: "opencv", COLOR_GRAY: "opencv"}
    for (height, width), sampling in itertools.product(SIZES, SUBSAMPLINGS):
        image = picture(height, width, seed=height * width)
        factor = (cv2.IMWRITE_JPEG_SAMPLING_FACTOR, getattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR_" + sampling))
        name = "opencv %dx%d %s" % (height, width, sampling)
        corpus[name] = opencv(image, *factor), fast
        corpus[name + " progressive"] = opencv(image, *factor, cv2.IMWRITE_JPEG_PROGRESSIVE, 1), fast
        corpus[name + " restart"] = opencv(image, *factor, cv2.IMWRITE_JPEG_RST_INTERVAL, 1), fast
        corpus["simplejpeg %dx%d %s" % (height, width, sampling)] = \
            simplejpeg.encode_jpeg(image, colorspace="BGR", colorsubsampling=sampling), fast
    for height, width in SIZES:
        image, gray = picture(height, width), picture(height, width, channels=1)
        size = "%dx%d" % (height, width)
        corpus["opencv gray " + size] = opencv(gray), fast
        corpus["opencv gray progressive " + size] = opencv(gray, cv2.IMWRITE_JPEG_PROGRESSIVE, 1), fast
        for quality in (10, 100):
            corpus["opencv q%d optimized %s" % (quality, size)] = \
                opencv(image, cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1), fast
        for subsampling in (0, 1, 2):
            corpus["pillow %s subsampling %d" % (size, subsampling)] = pillow(image, subsampling=subsampling), fast
        corpus["pillow progressive " + size] = pillow(image, progressive=True), fast
        corpus["pillow rgb " + size] = pillow(image, keep_rgb=True), fast  # no YCbCr: RGB components
        corpus["pillow rgb progressive " + size] = pillow(image, keep_rgb=True, progressive=True), fast
        corpus["pillow cmyk " + size] = pillow(image, mode="CMYK"), slow
        for orientation in range(1, 9):
            corpus["pillow exif %d %s" % (orientation, size)] = pillow(image, exif=exif(orientation)), turned
            corpus["pillow gray exif %d %s" % (orientation, size)] = pillow(gray, exif=exif(orientation)), turned
        corpus["png " + size] = opencv(image, ext=".png"), slow
        corpus["png gray " + size] = opencv(gray, ext=".png"), slow
        corpus["png alpha " + size] = opencv(picture(height, width, channels=3)[:, :, [0, 1, 2, 0]], ext=".png"), slow
    for path in sorted(IMAGES.glob("*.jpg")):
        exif_segment = path.name in ("cat.jpg", "cat_gray.jpg")
        expected = slow if path.name.startswith("arithmetic") else turned if exif_segment else fast
        corpus["file " + path.name] = path.read_bytes(), expected
    whole = opencv(picture(64, 48))
    # The rule sends these two to simplejpeg, which refuses them: OpenCV decides what they are.
    corpus["truncated"] = whole[:len(whole) // 2], fast
    corrupt = bytearray(whole)
    corrupt[len(whole) // 2:len(whole) // 2 + 16] = bytes(16)
    corpus["corrupt scan"] = bytes(corrupt), fast
    corpus["trailing bytes"] = whole + b"\x00" * 100, fast
    corpus["lossless frame (patched)"] = patched_frame(whole, marker=0xC3), slow
    corpus["12-bit frame (patched)"] = patched_frame(whole, precision=12), slow
    corpus["no frame"] = whole[:2] + whole[whole.index(b"\xff\xda"):], slow
    corpus["cut in the frame header"] = whole[:whole.index(b"\xff\xc0") + 7], slow
    corpus["empty"] = b"", slow
    corpus["not an image"] = b"\xff\xd8 this is not a JPEG at all", slow
    return corpus


CORPUS = build_corpus()


def opencv_pixels(data, color):
    """What decode_image must give: OpenCV's own decode, or None where it must refuse."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), OPENCV_FLAGS[color]) if data else None
    if image is None or image.dtype != np.uint8 or (image.ndim == 3 and image.shape[2] == 4):
        return None
    return image[np.newaxis] if image.ndim == 2 else image.transpose(2, 0, 1)


@pytest.mark.parametrize("color", [COLOR_NATIVE, COLOR_BGR, COLOR_GRAY])
def test_every_image_decodes_to_opencvs_pixels(color):
    mismatched = []
    for name, (data, _) in CORPUS.items():
        expected = opencv_pixels(data, color)
        try:
            decoded = decode_image(data, color)
        except ValueError:
            decoded = None
        if expected is None or decoded is None:
            if (expected is None) != (decoded is None):
                mismatched.append("%s: OpenCV %s, decode_image %s" % (name, expected is not None, decoded is not None))
        elif decoded.shape != expected.shape or not np.array_equal(decoded, expected):
            mismatched.append("%s: %s against OpenCV's %s" % (name, decoded.shape, expected.shape))
    assert not mismatched, "\n".join(mismatched)


@pytest.mark.parametrize("color", [COLOR_NATIVE, COLOR_BGR, COLOR_GRAY])
def test_each_kind_goes_to_the_decoder_the_rule_names(color):
    """So that the identity above is really simplejpeg's where it should be."""
    wrong = ["%s: %s, expected %s" % (name, routed, expected[color])
             for name, (data, expected) in CORPUS.items()
             for routed in ["opencv" if simplejpeg_colorspace(data, color) is None else "simplejpeg"]
             if routed != expected[color]]
    assert not wrong, "\n".join(wrong)
    refused = []
    for name, (data, _) in CORPUS.items():
        colorspace = simplejpeg_colorspace(data, color)
        if colorspace is not None:
            try:
                simplejpeg.decode_jpeg(data, colorspace)
            except ValueError:
                refused.append(name)
    assert refused == ["truncated", "corrupt scan"]  # every other one really is simplejpeg's
    fast = sum(expected[color] == "simplejpeg" for _, expected in CORPUS.values())
    assert fast >= 150  # the identity test above is mostly simplejpeg's


def test_gray_jpegs_keep_one_channel_natively_and_get_three_under_force_color():
    data, _ = CORPUS["opencv gray 17x33"]
    assert decode_image(data, COLOR_NATIVE).shape == (1, 17, 33)
    assert decode_image(data, COLOR_BGR).shape == (3, 17, 33)
    assert decode_image(CORPUS["opencv 17x33 420"][0], COLOR_GRAY).shape == (1, 17, 33)


@pytest.mark.parametrize("name", ["cat.jpg", "cat_gray.jpg", "fish-bike.jpg", "arithmetic.jpg"])
@pytest.mark.parametrize("color", [COLOR_BGR, COLOR_GRAY])
@pytest.mark.parametrize("resize_hw", [(0, 0), (31, 45)])
def test_image_files_read_as_imread_reads_them(name, color, resize_hw):
    path = str(IMAGES / name)
    expected = cv2.imread(path, OPENCV_FLAGS[color])
    if resize_hw != (0, 0):
        expected = cv2.resize(expected, resize_hw[::-1], interpolation=cv2.INTER_LINEAR)
    expected = expected[np.newaxis] if expected.ndim == 2 else expected.transpose(2, 0, 1)
    assert np.array_equal(read_image_file(path, color, resize_hw), expected)


def test_a_png_file_reads_as_imread_reads_it(tmp_path):
    path = str(tmp_path / "p.png")
    cv2.imwrite(path, picture(9, 13))
    assert np.array_equal(read_image_file(path, COLOR_BGR), cv2.imread(path, cv2.IMREAD_COLOR).transpose(2, 0, 1))


@pytest.mark.parametrize("content", [None, b"", b"\xff\xd8\xff"])
def test_unreadable_files_are_refused_with_their_path(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot read image .*bad.jpg: missing, truncated or not an image"):
        read_image_file(str(path))
