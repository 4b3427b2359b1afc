"""What every source shares: its error type, the sample type, and array selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


class SourceError(ValueError):
    """The source cannot be used; the message names the file and the problem."""


Sample = Dict[str, np.ndarray]


@dataclass
class SampleBlock:
    """Samples read together: ``arrays`` hold one row per entry of ``positions`` (positions
    in the list of indices asked for), every row of an array the same shape. With ``rows``,
    the samples are instead rows ``rows`` of each array (a store the block selects from,
    which the writer gathers straight into the batch, without a copy in between)."""

    positions: np.ndarray
    arrays: Dict[str, np.ndarray]
    rows: Optional[np.ndarray] = None


def consecutive_slice(indices: np.ndarray):
    """``indices`` as a slice when they are one ascending run (a view then selects them without
    a copy), else ``indices`` themselves."""
    if len(indices) and indices[-1] - indices[0] + 1 == len(indices) and (np.diff(indices) == 1).all():
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return indices


# What ``read_many(indices)`` returns: blocks, and the positions left to ``read`` one by one.
BlockRead = Tuple[List[SampleBlock], np.ndarray]


def image_sample(image: np.ndarray, label: float) -> Sample:
    """An image source's sample: ``data`` (C x H x W) and a float32 ``label``, as Caffe's blobs."""
    return {"data": image, "label": np.float32(label)}


class Source:
    """What every source is (the contract of server/sources/__init__.py, as code).

    Built in the supervisor, forked into the workers, ``open()``ed in each
    worker after the fork and ``close()``d when it exits. ``read(i)`` returns
    sample i; ``read_many(indices)`` reads as many of ``indices`` as it can at
    once (the default: none, all are left to ``read``); ``describe(i)`` names
    sample i for messages. ``transformable``: transform_param may apply.
    """

    transformable = True

    def __len__(self) -> int:
        raise NotImplementedError

    def open(self) -> None:
        """Open handles in this process (after the fork)."""

    def close(self) -> None:
        """Close what ``open`` opened."""

    def describe(self, index: int) -> str:
        raise NotImplementedError

    def read(self, index: int) -> Sample:
        raise NotImplementedError

    def read_many(self, indices: np.ndarray) -> BlockRead:
        return [], np.arange(len(indices))

    def held_rows(self) -> Optional[Dict[str, np.ndarray]]:
        """Every sample's arrays by name, as float32 rows in index order, when ``before_fork``
        read them into memory; else None."""
        return None

    def before_fork(self, shuffled: bool) -> None:
        """Called once in the server before the workers fork, knowing whether passes are
        shuffled: what every worker would read alone at its first batch may be read here
        once, and shared."""


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

    def read_many(self, indices: np.ndarray) -> BlockRead:
        """The wrapped source's blocks with only ``names``; a block without one of them is
        left to ``read``, which says what is missing."""
        blocks, rest = self.source.read_many(indices)
        kept = []
        for block in blocks:
            if all(name in block.arrays for name in self.names):
                kept.append(SampleBlock(block.positions, {name: block.arrays[name] for name in self.names}, block.rows))
            else:
                rest = np.concatenate([rest, block.positions])
        return kept, rest

    def held_rows(self) -> Optional[Dict[str, np.ndarray]]:
        held = self.source.held_rows()
        if held is None or not all(name in held for name in self.names):
            return None
        return {name: held[name] for name in self.names}

    def read(self, index: int) -> Sample:
        sample = self.source.read(index)
        missing = [name for name in self.names if name not in sample]
        if missing:
            raise ValueError("it has no %s array (it has %s)"
                             % (", ".join(map(repr, missing)), ", ".join(sorted(sample))))
        return {name: sample[name] for name in self.names}
