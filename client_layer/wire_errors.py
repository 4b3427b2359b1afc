"""The errors of the wire format, raised by ``wire``, ``compression`` and ``batch``."""


class WireError(ValueError):
    """A message that is not a valid zfeed batch; the text says what is wrong."""


class CodecMissingError(WireError):
    """A batch is compressed with a codec whose package this Python lacks: a set-up
    error of this trainer, not a fault of the message."""
