"""``python -m server``: the zfeed data server's command line."""

from __future__ import annotations

import logging
import sys
from typing import List, Optional

from server.config import ConfigError, parse_config, prepare
from server.supervisor import DataServer, ServerError

log = logging.getLogger("zfeed.server")


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s zfeed-server %(levelname)s %(message)s")
    try:
        config = parse_config(argv)
        server = DataServer(config, prepare(config))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        return server.run()
    except ServerError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
