"""Logging setup: level from SYSTEMD_LOG_LEVEL, plain messages on stderr."""

from __future__ import annotations

import logging
import logging.handlers
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
    setup_journal()


# What belongs in the journal but not on the sysadmin's terminal (e.g. the end
# of CRIU's log behind a refusal that is explained in words): sent to syslog,
# which journald reads, when there is one.
journal = logging.getLogger("seamless.journal")
journal.propagate = False
journal.addHandler(logging.NullHandler())


def setup_journal(socket_path: str = "/dev/log") -> None:
    if not os.path.exists(socket_path):
        return
    try:
        handler: logging.Handler = logging.handlers.SysLogHandler(address=socket_path)
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("seamless-upgrade: %(message)s"))
    journal.handlers[:] = [handler]
