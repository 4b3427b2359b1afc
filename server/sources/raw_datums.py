"""Raw ``Datum`` records parsed a batch at a time, without a protobuf object per record.

A database written by Caffe's tools holds records that differ only in their
pixels and their label: the same fields in the same order with the same
sizes. For each record length that occurs in a batch, the first record of
that length is walked field by field (``RecordLayout``); every record of
that length whose bytes equal it everywhere except in the pixels and the
label's varint is parsed by slicing one 2-D array. Anything else (encoded or
``float_data`` Datums, a record of another shape or field order, a record
that does not parse) is left to the per-sample path, which reads it with
protobuf and says what is wrong with it: nothing is mis-parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

# Field numbers of caffe.proto's Datum.
_CHANNELS, _HEIGHT, _WIDTH, _DATA, _LABEL, _FLOAT_DATA, _ENCODED = 1, 2, 3, 4, 5, 6, 7
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def _varint(buffer: bytes, position: int) -> Tuple[int, int]:
    """(value, next position) of the varint at ``position``; ValueError past the end."""
    value = shift = 0
    while True:
        if position >= len(buffer) or shift > 63:
            raise ValueError("truncated varint")
        byte = buffer[position]
        value |= (byte & 0x7F) << shift
        position += 1
        shift += 7
        if not byte & 0x80:
            return value, position


@dataclass(frozen=True)
class RecordLayout:
    """Where the pixels and the label sit in records of one length and one structure."""

    template: np.ndarray  # the first record's bytes
    shape: Tuple[int, int, int]  # channels, height, width
    pixels: Tuple[int, int]  # [start, stop) of the data bytes
    label: Optional[Tuple[int, int]]  # [start, stop) of the label's varint bytes; None: label 0
    fixed_columns: np.ndarray  # every byte position that must equal the template's

    @classmethod
    def of(cls, record: bytes) -> Optional["RecordLayout"]:
        """The layout of ``record`` if it is a raw uint8 Datum with each field once, else None."""
        fields = {}
        position = 0
        try:
            while position < len(record):
                tag, value_start = _varint(record, position)
                number, wire_type = tag >> 3, tag & 7
                if not 1 <= number < 2**29:  # protobuf refuses field 0 (and numbers past its range)
                    return None
                if wire_type == _VARINT:
                    value, end = _varint(record, value_start)
                elif wire_type == _BYTES:
                    length, value_start = _varint(record, value_start)
                    end = value_start + length
                    value = None
                elif wire_type in (_FIXED32, _FIXED64):
                    end, value = value_start + (4 if wire_type == _FIXED32 else 8), None
                else:
                    return None
                if end > len(record) or number in fields:
                    return None
                fields[number] = (wire_type, value_start, end, value)
                position = end
        except ValueError:
            return None
        dims = [fields.get(number) for number in (_CHANNELS, _HEIGHT, _WIDTH)]
        data = fields.get(_DATA)
        label = fields.get(_LABEL)
        encoded = fields.get(_ENCODED)
        if (any(d is None or d[0] != _VARINT for d in dims) or data is None or data[0] != _BYTES
                or _FLOAT_DATA in fields or (label is not None and label[0] != _VARINT)
                or (encoded is not None and (encoded[0] != _VARINT or encoded[3] != 0))):
            return None
        shape = tuple(int(d[3]) for d in dims)
        if data[2] - data[1] != shape[0] * shape[1] * shape[2] or 0 in shape:
            return None
        pixels = (data[1], data[2])
        label_bytes = None if label is None else (label[1], label[2])
        variable = np.zeros(len(record), dtype=bool)
        variable[pixels[0]:pixels[1]] = True
        if label_bytes is not None:
            variable[label_bytes[0]:label_bytes[1]] = True
        return cls(np.frombuffer(record, np.uint8).copy(), shape, pixels, label_bytes,
                   np.flatnonzero(~variable))

    def parse(self, records: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fits, images, labels) of ``records`` (N x length uint8): which rows have this
        layout, and the N' x C x H x W images and int32 labels of those that do."""
        fixed = self.fixed_columns
        fits = (records[:, fixed] == self.template[fixed]).all(axis=1)
        labels = np.zeros(len(records), dtype=np.int64)
        if self.label is not None:
            varint = records[:, self.label[0]:self.label[1]].astype(np.uint64)
            # Same length as the template's varint: continuation bits on all bytes but the last.
            fits &= ((varint[:, :-1] & 0x80) != 0).all(axis=1) & ((varint[:, -1] & 0x80) == 0)
            shifts = np.arange(varint.shape[1], dtype=np.uint64) * np.uint64(7)
            # int32 labels are sign-extended to 64 bits on the wire (ten bytes when negative).
            labels = ((varint & np.uint64(0x7F)) << shifts).sum(axis=1, dtype=np.uint64).view(np.int64)
        chosen = fits if not fits.all() else slice(None)
        images = records[chosen, self.pixels[0]:self.pixels[1]].reshape((-1,) + self.shape)
        return fits, images, labels[chosen].astype(np.int32)


@dataclass
class RawDatumBlock:
    """Records ``positions`` (of the list parsed): their images (N x C x H x W) and labels."""

    positions: np.ndarray
    images: np.ndarray
    labels: np.ndarray


def parse_raw_datums(records: Sequence[Optional[bytes]]) -> Tuple[List[RawDatumBlock], np.ndarray]:
    """Blocks of the records that are raw Datums of a common layout, and the positions of
    the rest (missing, or to be read one by one)."""
    try:
        lengths = np.fromiter(map(len, records), np.int64, len(records))
    except TypeError:  # a missing record (None); ``None in records`` would cost as much as this every time
        lengths = np.fromiter((len(r) if r is not None else -1 for r in records), np.int64, len(records))
    blocks: List[RawDatumBlock] = []
    rest: List[np.ndarray] = [np.flatnonzero(lengths < 0)]
    for length in np.unique(lengths[lengths > 0]).tolist():
        positions = np.flatnonzero(lengths == length)
        layout = RecordLayout.of(bytes(records[positions[0]]))
        if layout is None:
            rest.append(positions)
            continue
        chosen = records if len(positions) == len(records) else [records[p] for p in positions.tolist()]
        rows = np.frombuffer(b"".join(chosen), np.uint8).reshape(len(positions), length)
        fits, images, labels = layout.parse(rows)
        if len(images):
            blocks.append(RawDatumBlock(positions[fits], images, labels))
        rest.append(positions[~fits])
    return blocks, np.sort(np.concatenate(rest))
