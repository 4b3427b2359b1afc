"""Writing samples into batch rows, and refusing samples that do not fit."""

import numpy as np
import pytest

from server.batch_layout import BatchLayout
from server.transform import TransformParams

DRAW = np.array([0.9, 0.0, 0.0])


def layout_and_batch(first, transform=TransformParams(phase="test", crop_size=4), batch_size=2):
    layout = BatchLayout.from_sample(first, transform)
    batch = {name: np.zeros(shape, dtype) for name, dtype, shape in layout.batch_arrays(batch_size)}
    return layout, batch


def image(channels=3, height=6, width=6, value=7):
    return np.full((channels, height, width), value, np.uint8)


def test_layout_follows_the_first_sample_and_the_crop():
    layout, batch = layout_and_batch({"data": image(), "label": np.float32(3)})
    assert layout.batch_arrays(2) == [("data", np.float32, (2, 3, 4, 4)), ("label", np.float32, (2,))]
    layout.write_sample({"data": image(value=9), "label": np.float32(5)}, DRAW, batch, 1)
    assert np.all(batch["data"][1] == 9) and batch["label"].tolist() == [0, 5]


def test_untransformed_arrays_are_copied_as_float32():
    layout, batch = layout_and_batch({"x": np.zeros((2, 3), np.int16), "y": np.float64(1)}, transform=None)
    layout.write_sample({"x": np.arange(6, dtype=np.int16).reshape(2, 3), "y": 2.5}, DRAW, batch, 0)
    assert batch["x"].dtype == np.float32 and batch["x"][0].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert batch["y"][0] == 2.5


@pytest.mark.parametrize("sample, message", [
    ({"data": image(channels=1), "label": 1}, "it has 1 channels, the batch 3"),
    ({"data": image(height=3), "label": 1}, "crop_size 4 is larger than the 3x6 image"),
    ({"data": image(), "labels": 1}, "it has no 'label' array"),
    ({"data": image()}, "it has arrays ['data'], the batch ['data', 'label']"),
    ({"data": image(), "label": np.zeros(2)}, "its 'label' is (2,), the batch holds ()"),
])
def test_samples_that_do_not_fit_are_refused(sample, message):
    layout, batch = layout_and_batch({"data": image(), "label": np.float32(3)})
    with pytest.raises(ValueError) as caught:
        layout.write_sample(sample, DRAW, batch, 0)
    assert message in str(caught.value)


def test_uncropped_images_must_all_have_the_first_size():
    layout, batch = layout_and_batch({"data": image(), "label": 0}, transform=TransformParams())
    with pytest.raises(ValueError, match="it is 6x5, the batch holds 6x6 images"):
        layout.write_sample({"data": image(width=5), "label": 0}, DRAW, batch, 0)
