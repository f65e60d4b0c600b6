"""``python -m dispatcher``: run the reference dispatcher until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys

from dispatcher.app import Dispatcher
from dispatcher.config import config_from_args
from dispatcher.controller import ControllerError


def main(argv: list[str] | None = None) -> int:
    config, log_level = config_from_args(argv)
    logging.basicConfig(
        level=getattr(logging, log_level, logging.INFO),
        format="%(asctime)s %(levelname)s [dispatcher %(name)s] %(message)s",
    )
    # httpx logs every request at INFO; keep the dispatcher's own lines readable.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        dispatcher = Dispatcher(config)
    except ValueError as exc:
        logging.getLogger("dispatcher").error("cannot start: %s", exc)
        return 2

    def stop(signum: int, _frame: object) -> None:
        logging.getLogger("dispatcher").info("received %s; stopping", signal.Signals(signum).name)
        dispatcher.request_stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        dispatcher.start()
    except (ControllerError, OSError) as exc:
        logging.getLogger("dispatcher").error("cannot start: %s", exc)
        dispatcher.stop()
        return 1
    dispatcher.wait()
    dispatcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
