"""Writing samples into batch rows, and refusing samples that do not fit."""

import numpy as np
import pytest

from server.batch_layout import BatchLayout, RowWriter
from server.transform import TransformParams

pytestmark = pytest.mark.unit

DRAWS = np.array([[0.9, 0.0, 0.0], [0.1, 0.5, 0.99]])


def layout_and_batch(first, transform=TransformParams(phase="test", crop_size=4), batch_size=2):
    layout = BatchLayout.from_sample(first, transform)
    batch = layout.zeros(batch_size)
    return layout, batch


def write_one(layout, batch, sample, row):
    writer = RowWriter(layout, batch, DRAWS[:1])
    writer.write(0, row, sample)
    writer.finish()


def image(channels=3, height=6, width=6, value=7):
    return np.full((channels, height, width), value, np.uint8)


def test_layout_follows_the_first_sample_and_the_crop():
    layout, batch = layout_and_batch({"data": image(), "label": np.float32(3)})
    assert [(s.name, s.dtype, s.shape) for s in layout.batch_specs(2)] == [("data", np.float32, (2, 3, 4, 4)), ("label", np.float32, (2,))]
    write_one(layout, batch, {"data": image(value=9), "label": np.float32(5)}, 1)
    assert np.all(batch["data"][1] == 9) and batch["label"].tolist() == [0, 5]


def test_untransformed_arrays_are_copied_as_float32():
    layout, batch = layout_and_batch({"x": np.zeros((2, 3), np.int16), "y": np.float64(1)}, transform=None)
    write_one(layout, batch, {"x": np.arange(6, dtype=np.int16).reshape(2, 3), "y": 2.5}, 0)
    assert batch["x"].dtype == np.float32 and batch["x"][0].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert batch["y"][0] == 2.5


def test_a_task_is_written_as_row_by_row_writes_would_write_it():
    """Rows in any order, a refused sample in between, labels of mixed types gathered into
    one assignment: the same bits as assigning each value to its row."""
    transform = TransformParams(phase="train", crop_size=4, mirror=True)
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (3, 6, 7), dtype=np.uint8) for _ in range(4)]
    labels = [np.float32(1.5), np.int64(2**53 + 1), np.float64(0.1), np.asarray(7, np.uint8)]
    layout, batch = layout_and_batch({"data": images[0], "label": labels[0]}, transform, batch_size=5)
    batch["label"][:] = -1
    draws = rng.random((5, 3))
    writer = RowWriter(layout, batch, draws)
    rows = [3, 0, 4, 1]
    writer.write(0, rows[0], {"data": images[0], "label": labels[0]})
    with pytest.raises(ValueError, match="it has 1 channels"):
        writer.write(1, 2, {"data": images[1][:1], "label": np.float32(9)})
    for position, (row, picture, label) in enumerate(zip(rows[1:], images[1:], labels[1:]), start=2):
        writer.write(position, row, {"data": picture, "label": label})
    writer.finish()
    expected_labels = np.full(5, -1, np.float32)
    for position, (row, picture, label) in enumerate(zip(rows, images, labels)):
        expected_labels[row] = label
        draw = draws[position if position == 0 else position + 1]
        h_off, w_off = min(int(draw[1] * 3), 2), min(int(draw[2] * 4), 3)
        crop = picture[:, h_off:h_off + 4, w_off:w_off + 4].astype(np.float32)
        assert np.array_equal(batch["data"][row], crop[:, :, ::-1] if draw[0] < 0.5 else crop)
    assert np.array_equal(batch["label"].view(np.uint32), expected_labels.view(np.uint32))


@pytest.mark.parametrize("sample, message", [
    ({"data": image(channels=1), "label": 1}, "it has 1 channels, the batch 3"),
    ({"data": image(height=3), "label": 1}, "crop_size 4 is larger than the 3x6 image"),
    ({"data": image(), "labels": 1}, "it has no 'label' array"),
    ({"data": image()}, "it has arrays ['data'], the batch ['data', 'label']"),
    ({"data": image(), "label": np.zeros(2)}, "its 'label' is (2,), the batch holds ()"),
])
def test_samples_that_do_not_fit_are_refused(sample, message):
    layout, batch = layout_and_batch({"data": image(), "label": np.float32(3)})
    writer = RowWriter(layout, batch, DRAWS)
    with pytest.raises(ValueError) as caught:
        writer.write(0, 0, sample)
    assert message in str(caught.value)
    writer.finish()
    assert batch["label"].tolist() == [0, 0]


def test_uncropped_images_must_all_have_the_first_size():
    layout, batch = layout_and_batch({"data": image(), "label": 0}, transform=TransformParams())
    with pytest.raises(ValueError, match="it is 6x5, the batch holds 6x6 images"):
        write_one(layout, batch, {"data": image(width=5), "label": 0}, 0)
