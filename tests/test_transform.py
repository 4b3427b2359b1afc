"""Transforms against a line-by-line port of Caffe's DataTransformer::Transform loop."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.transform import TEST, TRAIN, TransformParams, choose_crops, crop_into, transform_into, uses_draws

pytestmark = pytest.mark.unit


def caffe_reference(image, crop_size, mirror_flag, h_off, w_off, mean_file, mean_values, scale):
    """data_transformer.cpp's loop, index for index, in float32."""
    channels, datum_height, datum_width = image.shape
    height = crop_size or datum_height
    width = crop_size or datum_width
    data = image.reshape(-1)
    mean = None if mean_file is None else mean_file.reshape(-1)
    out = np.zeros(channels * height * width, np.float32)
    scale = np.float32(scale)
    for c in range(channels):
        for h in range(height):
            for w in range(width):
                data_index = (c * datum_height + h_off + h) * datum_width + w_off + w
                if mirror_flag:
                    top_index = (c * height + h) * width + (width - 1 - w)
                else:
                    top_index = (c * height + h) * width + w
                element = np.float32(data[data_index])
                if mean is not None:
                    out[top_index] = (element - np.float32(mean[data_index])) * scale
                elif mean_values is not None:
                    out[top_index] = (element - np.float32(mean_values[c])) * scale
                else:
                    out[top_index] = element * scale
    return out.reshape(channels, height, width)


def run_transform(params, image, crops, position=0):
    out = np.full((image.shape[0], crops.height, crops.width), np.nan, np.float32)
    transform_into(image, params, crops.h_offs[position], crops.w_offs[position], crops.mirrors[position], out)
    return out


def choose_crop(params, height, width, draw):
    """The crops of one sample."""
    return choose_crops(params, height, width, np.array([draw], np.float64))


@pytest.fixture
def image():
    return np.random.default_rng(1).integers(0, 256, (3, 7, 9), dtype=np.uint8)


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("mean_kind", ["none", "values", "file"])
@pytest.mark.parametrize("scale", [1.0, 0.00390625, 0.017])
def test_matches_caffe_loop_bit_for_bit(image, mirror, mean_kind, scale):
    rng = np.random.default_rng(2)
    mean_file = rng.uniform(0, 255, image.shape).astype(np.float32) if mean_kind == "file" else None
    mean_values = np.array([104.0, 117.0, 123.5], np.float32) if mean_kind == "values" else None
    mean = mean_file if mean_file is not None else (
        mean_values.reshape(3, 1, 1) if mean_values is not None else None)
    params = TransformParams(phase=TRAIN, crop_size=5, mirror=True, scale=scale, mean=mean)
    out = np.full((3, 5, 5), np.nan, np.float32)
    transform_into(image, params, 1, 3, mirror, out)
    expected = caffe_reference(image, 5, mirror, 1, 3, mean_file, mean_values, scale)
    assert np.array_equal(out, expected)


def test_no_crop_keeps_the_whole_image(image):
    params = TransformParams(scale=0.5)
    crops = choose_crop(params, 7, 9, [0.9, 0.9, 0.9])
    assert (crops.h_offs.tolist(), crops.w_offs.tolist(), crops.height, crops.width) == ([0], [0], 7, 9)
    assert np.array_equal(run_transform(params, image, crops), image.astype(np.float32) * np.float32(0.5))


def test_float_images_transform_like_float_data():
    image = np.random.default_rng(3).normal(size=(2, 6, 6)).astype(np.float32)
    params = TransformParams(phase=TEST, crop_size=4, mean=np.array([0.5, -1.0], np.float32).reshape(2, 1, 1),
                             scale=3.0)
    crops = choose_crop(params, 6, 6, [0.0, 0.0, 0.0])
    expected = caffe_reference(image, 4, False, 1, 1, None, [0.5, -1.0], 3.0)
    assert np.array_equal(run_transform(params, image, crops), expected)


def test_test_phase_crops_the_centre_whatever_the_draw():
    params = TransformParams(phase=TEST, crop_size=4)
    for draw in ([0.0, 0.0, 0.0], [0.99, 0.99, 0.99], [0.3, 0.6, 0.1]):
        crops = choose_crop(params, 9, 12, draw)
        assert (crops.h_offs.tolist(), crops.w_offs.tolist()) == ([(9 - 4) // 2], [(12 - 4) // 2])
        assert crops.mirrors.tolist() == [False]


def test_mirror_coin_is_tossed_in_test_phase_too():
    params = TransformParams(phase=TEST, crop_size=4, mirror=True)
    assert choose_crops(params, 8, 8, np.array([[0.2, 0.0, 0.0], [0.7, 0.0, 0.0]])).mirrors.tolist() == [True, False]


def test_train_offsets_cover_every_position_uniformly():
    params = TransformParams(phase=TRAIN, crop_size=5, mirror=True)
    draws = np.random.default_rng(4).random((30000, 3))
    crops = choose_crops(params, 8, 11, draws)
    h_counts = np.bincount(crops.h_offs, minlength=4)
    w_counts = np.bincount(crops.w_offs, minlength=7)
    assert len(h_counts) == 4 and len(w_counts) == 7  # never outside [0, size - crop]
    assert np.all(np.abs(h_counts / len(draws) - 1 / 4) < 0.02)
    assert np.all(np.abs(w_counts / len(draws) - 1 / 7) < 0.02)
    assert abs(np.mean(crops.mirrors) - 0.5) < 0.02


def test_task_crops_are_each_samples_own_choice():
    """A task's crops, chosen at once, are what each draw alone gives: Caffe's
    ``Rand(n)`` as the truncation of u * n, with draws at the edges of [0, 1)."""
    params = TransformParams(phase=TRAIN, crop_size=5, mirror=True)
    edges = [0.0, 0.5, np.nextafter(0.5, 0.0), np.nextafter(1.0, 0.0), 1 / 3, 2 / 3, 0.25, 0.75]
    draws = np.concatenate([np.array([[u, v, w] for u in edges for v in edges for w in edges[:3]]),
                            np.random.default_rng(6).random((500, 3))])
    crops = choose_crops(params, 8, 11, draws)
    for position, draw in enumerate(draws):
        h_off, w_off = min(int(draw[1] * 4), 3), min(int(draw[2] * 7), 6)
        assert (crops.h_offs[position], crops.w_offs[position]) == (h_off, w_off)
        assert crops.mirrors[position] == (draw[0] < 0.5)
        one = choose_crop(params, 8, 11, draw)
        assert (one.h_offs.tolist(), one.w_offs.tolist(), one.mirrors.tolist()) == ([h_off], [w_off], [draw[0] < 0.5])


def test_crop_larger_than_image_is_refused():
    with pytest.raises(ValueError, match="crop_size 10 is larger than the 8x12 image"):
        choose_crop(TransformParams(crop_size=10), 8, 12, [0.0, 0.0, 0.0])


@settings(max_examples=60, deadline=None)
@given(channels=st.integers(1, 4), height=st.integers(1, 8), width=st.integers(1, 8),
       crop=st.integers(0, 8), mirror=st.booleans(), train=st.booleans(),
       draw=st.lists(st.floats(0, 1, exclude_max=True), min_size=3, max_size=3),
       seed=st.integers(0, 2**16))
def test_any_shape_matches_the_caffe_loop(channels, height, width, crop, mirror, train, draw, seed):
    crop = min(crop, height, width)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (channels, height, width), dtype=np.uint8)
    mean_file = rng.uniform(0, 255, image.shape).astype(np.float32)
    params = TransformParams(phase=TRAIN if train else TEST, crop_size=crop, mirror=mirror,
                             scale=0.25, mean=mean_file)
    crops = choose_crop(params, height, width, draw)
    expected = caffe_reference(image, crop, crops.mirrors[0], crops.h_offs[0], crops.w_offs[0], mean_file, None, 0.25)
    assert np.array_equal(run_transform(params, image, crops), expected)


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("mirror", [False, True])
def test_crop_into_is_the_same_for_decoded_and_planar_images(channels, mirror):
    hwc = np.random.default_rng(5).integers(0, 256, (9, 11, channels), dtype=np.uint8)
    decoded = hwc.transpose(2, 0, 1)  # how decode_image hands images over: channels interleaved
    planar = np.ascontiguousarray(decoded)  # how raw Datums arrive
    outputs = []
    for image in (decoded, planar):
        out = np.zeros((channels, 6, 7), np.uint8)
        crop_into(image, 2, 3, mirror, out)
        outputs.append(out)
    expected = planar[:, 2:8, 3:10][:, :, ::-1] if mirror else planar[:, 2:8, 3:10]
    assert np.array_equal(outputs[0], expected) and np.array_equal(outputs[1], expected)


@pytest.mark.parametrize("params", [TransformParams(), TransformParams(phase=TEST, crop_size=4),
                                    TransformParams(phase=TRAIN, scale=0.5)])
def test_transforms_without_randomness_need_no_draws(params):
    """Workers skip computing draws that ``uses_draws`` says nothing reads: the crops of
    no draws are those of any draws."""
    assert not uses_draws(params)
    drawn = choose_crops(params, 9, 12, np.random.default_rng(8).random((5, 3)))
    undrawn = choose_crops(params, 9, 12, np.empty((5, 0)))
    for field in ("h_offs", "w_offs", "mirrors"):
        assert np.array_equal(getattr(drawn, field), getattr(undrawn, field))
    assert (drawn.height, drawn.width) == (undrawn.height, undrawn.width)


@pytest.mark.parametrize("params", [TransformParams(mirror=True), TransformParams(phase=TRAIN, crop_size=4),
                                    TransformParams(phase=TEST, crop_size=4, mirror=True)])
def test_random_transforms_need_draws(params):
    assert uses_draws(params)
