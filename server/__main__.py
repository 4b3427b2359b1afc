"""``python -m server``: the zfeed data server's command line.

Exit status: 0 when done (``--epochs``) or stopped by SIGTERM/SIGINT, start-up
included (server/startup_signals.py); 2 for a configuration it refuses
(server/config.py); 1 when it cannot go on while serving.

This module imports the standard library and ``server.startup_signals``
only: the stop signals' handlers are in place before the server's own
modules are imported (numpy, OpenCV, LMDB, ZeroMQ: a second or more on a
cold start). A container's PID 1 without a handler for SIGTERM never gets
it (the kernel drops it), so a container stopped during those imports sat
out its grace period and was killed (NOTE [ Signals during start-up ]).
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import List, Optional

from server.startup_signals import StartupInterrupted, StartupSignals, stopping_message

log = logging.getLogger("zfeed.server")


def main(argv: Optional[List[str]] = None, ending_process: bool = True) -> int:
    """Run the server; its exit status. ``ending_process``: the caller exits right after (the
    command line), so SIGTERM and SIGINT are then ignored, not given back their old handlers:
    one that arrives while the process ends, its work done, changes nothing (without this
    the default handler killed it, exit status -15 instead of 0)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s zfeed-server %(levelname)s %(message)s")
    signals = StartupSignals()
    try:
        with signals.watching():
            # Imported here, under the handlers: see the module docstring.
            from server import ready_file
            from server.config import ConfigError, parse_config, prepare
            from server.supervisor import DataServer, ServerError
            try:
                config = parse_config(argv)
                ready_file.withdraw(config.ready_file)  # NOTE [ Ready file ]: before the source opens
                server = DataServer(config, prepare(config))
            except ConfigError as exc:
                log.error("%s", exc)
                return 2
            except ready_file.ReadyFileError as exc:
                log.error("%s", exc)
                return 1
        try:
            return server.run()
        except (ServerError, ready_file.ReadyFileError) as exc:
            log.error("%s", exc)
            return 1
    except StartupInterrupted as stop:
        log.info("%s", stopping_message(stop.signum))
        return 0
    finally:
        signals.restore(signal.SIG_IGN if ending_process else None)


if __name__ == "__main__":
    sys.exit(main())
