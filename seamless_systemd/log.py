"""Logging setup: level from SYSTEMD_LOG_LEVEL, plain messages on stderr."""

from __future__ import annotations

import logging
import os

_LEVELS = {
    "emerg": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "crit": logging.CRITICAL,
    "err": logging.ERROR,
    "warning": logging.WARNING,
    "notice": logging.INFO,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}

log = logging.getLogger("seamless")


def setup(debug: bool = False) -> None:
    level = logging.DEBUG if debug else _LEVELS.get(os.environ.get("SYSTEMD_LOG_LEVEL", "info"), logging.INFO)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
