"""Incremental pre-dump: copy a unit's memory while it runs, so the final freeze writes only what changed.

At arm time the trial dump (``criu dump --leave-running --track-mem``) is
kept as round 0 in IMAGES/pre-0; then rounds of ``criu pre-dump
--track-mem --pre-dump-mode=read`` write IMAGES/pre-1, pre-2, ..., each with
a ``parent`` link to the round before, until the delta stops shrinking. At
the kexec shutdown the final dump gets ``--prev-images-dir pre-N
--track-mem --auto-dedup``: it writes the pages dirtied since round N
(soft-dirty bits, which each round clears) and punches the pages it wrote
out of the rounds before (each round does the same), so the images hold
each page about once. The restore reads the chain through the ``parent``
links; the checksums cover every round (the links themselves are skipped),
and are made at arm time for the rounds, so that the shutdown hashes only
the final dump and the pieces its --auto-dedup punched (imagesums).

The rounds are used only for the tree they were taken of: a unit whose
processes changed since (restarted, forked) is dumped whole.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from seamless_systemd import criu, state
from seamless_systemd.errors import CommandError
from seamless_systemd.log import log
from seamless_systemd.run import run

ROUND_PREFIX = "pre-"
MAX_ROUNDS = 4
# Another round only while the delta shrinks by a fifth or more, and is worth it.
SHRINK = 0.8
SMALL = 1 << 20
RECORD = "predump.json"

# criu/include/magic.h: service files (stats-*) start with these two words.
_SERVICE_MAGIC = 0x55105940
_STATS_MAGIC = 0x57093306
# images/stats.proto, dump_stats_entry: field number -> name.
_DUMP_STATS = {
    1: "freezing_time_us",
    2: "frozen_time_us",
    3: "memdump_time_us",
    4: "memwrite_time_us",
    5: "pages_scanned",
    6: "pages_skipped_parent",
    7: "pages_written",
    9: "pages_lazy",
}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """A protobuf message's (field number, varint or bytes) pairs; other wire types are an error."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((number, value))
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            out.append((number, buf[pos : pos + size]))
            pos += size
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return out


def dump_stats(images: Path) -> dict[str, int]:
    """CRIU's own figures for the dump or pre-dump into IMAGES (its stats-dump file); {} if none."""
    try:
        data = (images / "stats-dump").read_bytes()
        magic, kind, size = struct.unpack_from("<III", data)
        if magic != _SERVICE_MAGIC or kind != _STATS_MAGIC:
            return {}
        entry = dict(_fields(data[12 : 12 + size]))
        dump = entry.get(1)
        if not isinstance(dump, bytes):
            return {}
        return {_DUMP_STATS[n]: v for n, v in _fields(dump) if n in _DUMP_STATS and isinstance(v, int)}
    except (OSError, struct.error, ValueError):
        return {}


def supported() -> bool:
    """Whether this kernel tracks dirtied pages (soft-dirty), which the rounds need."""
    try:
        run([criu.CRIU, "check", "--feature", "mem_dirty_track"], timeout=60)
    except CommandError as e:
        log.info("No pre-dump rounds: CRIU finds no memory change tracking in this kernel (%s)", e)
        return False
    return True


def pages_bytes(images: Path) -> int:
    """Bytes of memory pages one round wrote (not its parents'; holes punched later not counted)."""
    files = [p for p in images.glob("pages-*.img") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_blocks * 512 for p in files)


def rounds(
    main_pid: int,
    pids: tuple[int, ...],
    images: Path,
    log_dir: Path,
    timeout: float,
    max_rounds: int = MAX_ROUNDS,
) -> dict[str, Any]:
    """Pre-dump rounds of the tree PIDS after the trial dump in IMAGES/pre-0; what was written.

    A round that fails ends the rounds; the last good one stays the parent.
    """
    parent = f"{ROUND_PREFIX}0"
    first = images / parent
    done = [{"round": 0, "bytes": pages_bytes(first), **dump_stats(first)}]
    for n in range(1, max_rounds + 1):
        here = images / f"{ROUND_PREFIX}{n}"
        here.mkdir(parents=True, exist_ok=True)
        argv = [
            criu.CRIU,
            "pre-dump",
            "--tree",
            str(main_pid),
            "--images-dir",
            str(here),
            "--prev-images-dir",
            f"../{parent}",
            "--track-mem",
            "--pre-dump-mode=read",
            # What this round writes again is punched out of the rounds before.
            "--auto-dedup",
            *criu.parent_options(),
            "--log-file",
            str(log_dir / f"pre-dump-{n}.log"),
            "-v4",
        ]
        try:
            run(argv, timeout=timeout)
        except CommandError as e:
            log.warning("Pre-dump round %d of PID %d failed, keeping round %d: %s", n, main_pid, n - 1, e)
            break
        written = pages_bytes(here)
        done.append({"round": n, "bytes": written, **dump_stats(here)})
        parent = here.name
        before = int(done[-2]["bytes"])
        if written < SMALL or written > before * SHRINK:
            break
    return {"main_pid": main_pid, "pids": list(pids), "parent": parent, "rounds": done}


def parent_for(unit_dir: Path, images: Path, pids: tuple[int, ...]) -> str | None:
    """The round the final dump builds on, if the rounds were taken of this very tree."""
    path = unit_dir / RECORD
    if not path.exists():
        return None
    try:
        rec = state.read_json(path)
        parent = str(rec["parent"])
        same = rec.get("pids") == list(pids)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not same:
        log.info("The tree changed since its pre-dump rounds: it is dumped whole")
        return None
    if not parent.startswith(ROUND_PREFIX) or "/" in parent or not (images / parent).is_dir():
        return None
    return parent
