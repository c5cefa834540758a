"""What a long command (plan, arm, run) is doing now, for whoever watches.

The code that does the work says each step (`step`), and, while a dump
writes its images, how much it has written so far (`growing`, polled once a
second). Watchers are the terminal (`Terminal`: one line rewritten in place on
a terminal, a plain line per step otherwise) and the D-Bus service (a
Progress signal per step). With no watcher, a step costs nothing.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass(frozen=True)
class Step:
    phase: str  # plan, inspect, ram, trial-dump, kexec-load, armed, writeback, kexec
    text: str
    unit: str = ""
    nbytes: int | None = None
    # A periodic update of the step before it (bytes written so far), not a step of its own.
    live: bool = False


Watcher = Callable[[Step], None]
_watchers: list[Watcher] = []
_lock = threading.Lock()


@contextmanager
def watched(watcher: Watcher) -> Iterator[None]:
    with _lock:
        _watchers.append(watcher)
    try:
        yield
    finally:
        with _lock:
            _watchers.remove(watcher)


def step(phase: str, text: str, unit: str = "", nbytes: int | None = None, live: bool = False) -> None:
    with _lock:
        watchers = list(_watchers)
    for w in watchers:
        w(Step(phase, text, unit, nbytes, live))


def _size(path: Path) -> int:
    total = 0
    for p in path.rglob("*") if path.is_dir() else []:
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_blocks * 512
        except OSError:
            continue
    return total


@contextmanager
def growing(phase: str, text: str, unit: str, where: Path, every: float = 1.0) -> Iterator[None]:
    """Say TEXT, then, while the body runs, how many bytes WHERE holds, every EVERY seconds."""
    step(phase, text, unit)
    if not _watchers:
        yield
        return
    done = threading.Event()

    def poll() -> None:
        while not done.wait(every):
            step(phase, text, unit, _size(where), live=True)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield
    finally:
        done.set()
        poller.join()
    step(phase, f"{text}: done", unit, _size(where))


class Terminal:
    """Steps on STREAM, a line each; on a terminal the bytes of a running step update in place."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.open_line = False

    def __call__(self, s: Step) -> None:
        size = f" ({s.nbytes / (1 << 20):.0f} MiB)" if s.nbytes is not None else ""
        if not self.tty:
            if not s.live:
                self.stream.write(f"[{s.phase}] {s.text}{size}\n")
                self.stream.flush()
            return
        # \r and erase-line: a live update rewrites the line it is on; a step ends it.
        self.stream.write(f"\r\x1b[K{s.text}{size}" + ("" if s.live else "\n"))
        self.open_line = s.live
        self.stream.flush()

    def close(self) -> None:
        """Erase a live line left open (the command's own output comes next)."""
        if self.open_line:
            self.stream.write("\r\x1b[K")
            self.open_line = False
            self.stream.flush()
