"""Compression of the wire's frames: the codecs a server's ``--compress`` may name.

A header's ``codec`` names one of ``CODECS``; a frame shorter than its rows'
bytes then holds them compressed: an lz4 block without a stored size, or one
zstd frame (``wire`` decides which frames). ``Codec.decompress`` fills a
buffer of exactly the expected size, so no frame can claim more memory than
its header allows. A codec's package (``lz4``, ``zstandard``) is imported
only when a ``Codec`` of it is made, that is for a batch that uses it.

Python 3.8 with numpy; nothing from ``server``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Tuple

import numpy as np

from client_layer.wire_errors import CodecMissingError, WireError

CODECS = {"lz4": ("lz4.block", "lz4"), "zstd": ("zstandard", "zstandard")}  # name: (module, package)
# Measured (bench/compression.py): zstd -3 shrinks real crops 1.34x at ~1.5 GB/s per core.
DEFAULT_ZSTD_LEVEL = -3


class Codec:
    """One compression codec of the wire (``CODECS``), its package imported on first use.

    Not thread-safe: it keeps one (de)compression context for its calls.
    """

    def __init__(self, name: str, level: Optional[int] = None):
        if name not in CODECS:
            raise WireError("codec %r is unknown; zfeed compresses with %s" % (name, ", ".join(CODECS)))
        if level is not None and name != "zstd":
            raise WireError("only zstd takes a level; %s does not" % name)
        self.name = name
        self.level = DEFAULT_ZSTD_LEVEL if level is None and name == "zstd" else level
        module, package = CODECS[name]
        try:
            self._module = importlib.import_module(module)
        except ImportError:
            raise CodecMissingError("%s compression needs the %r package, which this Python (%s) lacks: pip install %s "
                            "(or run the data server without --compress)"
                            % (name, package, sys.executable, package)) from None
        self._compressor = None
        self._decompressor = None

    def describe(self) -> str:
        return self.name if self.level is None else "%s level %d" % (self.name, self.level)

    def compress(self, data: memoryview) -> bytes:
        if self.name == "lz4":
            return self._module.compress(data, store_size=False)
        if self._compressor is None:
            self._compressor = self._module.ZstdCompressor(level=self.level)
        return self._compressor.compress(data)

    def decompress(self, data: memoryview, size: int) -> memoryview:
        """Exactly ``size`` bytes from ``data``, or ``WireError``; never allocates more."""
        try:
            if self.name == "lz4":
                out = self._module.decompress(data, uncompressed_size=size)
                filled = len(out)
            else:
                out, filled = self._zstd_decompress(data, size)
        except Exception as exc:  # each codec raises its own error types
            raise WireError("%s frame does not decompress: %s" % (self.name, exc)) from None
        if filled != size:
            raise WireError("%s frame decompresses to %s%d bytes, its rows hold %d"
                            % (self.name, "more than " if filled > size else "", min(filled, size), size))
        return memoryview(out)  # bytes (lz4) or a uint8 array (zstd): one-dimensional bytes

    def _zstd_decompress(self, data: memoryview, size: int) -> Tuple[np.ndarray, int]:
        # Not ZstdDecompressor.decompress: it allocates what the frame header claims.
        if self._decompressor is None:
            self._decompressor = self._module.ZstdDecompressor()
        out = np.empty(size, np.uint8)
        reader = self._decompressor.stream_reader(data)
        view, filled = memoryview(out), 0
        while filled < size:
            count = reader.readinto(view[filled:])
            if not count:
                break
            filled += count
        if filled == size and reader.read(1):
            filled += 1  # more data than the rows hold
        return out, filled
