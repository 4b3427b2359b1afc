"""Caffe's ``(x - mean) * scale``: the one implementation the server and the layer both call.

``data_transformer.cpp`` computes, for ``Dtype`` float,

    (datum_element - mean) * scale    with a mean file or mean values
    datum_element * scale             without a mean

in float32: the mean is subtracted first, then the difference is scaled.
The server runs ``subtract_mean_and_scale`` on its float32 path
(``server/transform.py``); the layer runs it through ``finish_pixels`` on the
uint8 pixels a server sends when the trainer can finish them exactly. Being
the same function, the two are bit-identical by construction, not because a
test says so.

Python 3.8 and numpy only; nothing from ``server``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

# finish_pixels works on chunks of this many output bytes: they stay in the L2 cache.
FINISH_CHUNK_BYTES = 256 * 1024


def subtract_mean_and_scale(source: np.ndarray, mean: Optional[np.ndarray], scale: float, out: np.ndarray) -> None:
    """``out = (source - mean) * scale`` in float32, Caffe's operations in Caffe's order.

    ``mean`` broadcasts against ``source`` (one value per channel as C x 1 x 1, or
    per pixel); None means no mean. ``scale`` is rounded to float32 first, as
    Caffe holds it. ``out`` may be a strided view (a mirrored crop, a row of a batch).
    """
    scale = np.float32(scale)
    if mean is None:
        np.multiply(source, scale, out=out, dtype=np.float32, casting="unsafe")
        return
    np.subtract(source, mean, out=out, dtype=np.float32, casting="unsafe")
    if scale != 1.0:
        np.multiply(out, scale, out=out)


def finish_pixels(pixels: np.ndarray, mean: Optional[np.ndarray], scale: float, out: np.ndarray) -> None:
    """``subtract_mean_and_scale`` over a batch (N x C x H x W), a few samples at a time so
    that each chunk stays in cache (one sample at a time for large images)."""
    rows = max(1, FINISH_CHUNK_BYTES // max(1, out[0].nbytes if len(out) else 1))
    for start in range(0, len(pixels), rows):
        subtract_mean_and_scale(pixels[start:start + rows], mean, scale, out[start:start + rows])
