"""What every source shares: its error type, the sample type, and array selection."""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


class SourceError(ValueError):
    """The source cannot be used; the message names the file and the problem."""


Sample = Dict[str, np.ndarray]


def image_sample(image: np.ndarray, label: float) -> Sample:
    """An image source's sample: ``data`` (C x H x W) and a float32 ``label``, as Caffe's blobs."""
    return {"data": image, "label": np.float32(label)}


class SelectedArrays:
    """``source`` yielding only the arrays ``names``, in that order (e.g. a Data layer
    with one top gets no ``label``). Everything else is the wrapped source's."""

    def __init__(self, source, names: Sequence[str]):
        self.source = source
        self.names = tuple(names)

    def __len__(self) -> int:
        return len(self.source)

    def __getattr__(self, name):
        return getattr(self.source, name)

    def read(self, index: int) -> Sample:
        sample = self.source.read(index)
        missing = [name for name in self.names if name not in sample]
        if missing:
            raise ValueError("it has no %s array (it has %s)"
                             % (", ".join(map(repr, missing)), ", ".join(sorted(sample))))
        return {name: sample[name] for name in self.names}
