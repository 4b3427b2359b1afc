"""``--ready-file PATH``: a file that exists exactly while the server serves.

NOTE [ Ready file ]
``withdraw`` runs right after the options are read, before the source is
opened, so that a file left by an earlier run (a server that was SIGKILLed)
never announces a server that is still starting. ``announce`` runs once the
socket is bound (or connecting) and the workers run: from then on a trainer
that connects gets batches. It writes one JSON object, ``{"pid", "bind",
"connect", "metrics_port", "stream_id"}``, to a temporary file in the same
directory and renames it over PATH, so a reader sees all of it or nothing.
The shutdown withdraws it first of all, so a server that stops serving stops
saying it is ready at once. Readers: a container's readiness probe
(``test -f PATH``) and the harness of the demo, tests and benchmarks
(``harness/children.py``), which waits for it instead of reading logs.
"""

from __future__ import annotations

import json
import os
from typing import Sequence


class ReadyFileError(OSError):
    """The ready file cannot be written; the message names it."""


def withdraw(path: str) -> None:
    """Remove ``path`` if it exists ("": no ready file)."""
    if path:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def announce(path: str, bind: Sequence[str], connect: Sequence[str], metrics_port: int, stream_id: str) -> None:
    """Write ``path`` atomically ("": no ready file); ReadyFileError when it cannot be written."""
    if not path:
        return
    content = json.dumps({"pid": os.getpid(), "bind": list(bind), "connect": list(connect),
                          "metrics_port": metrics_port, "stream_id": stream_id})
    partial = "%s.%d.tmp" % (path, os.getpid())
    try:
        with open(partial, "w") as out:
            out.write(content + "\n")
        os.replace(partial, path)
    except OSError as exc:
        withdraw(partial)
        raise ReadyFileError("cannot write --ready-file %s: %s" % (path, exc)) from None
