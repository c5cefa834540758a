"""What is written where: the layout of the images file system, atomic JSON files.

On the PMEM file system (survives kexec):
    MOUNT/GEN/manifest.json           what the upgrade is (kernels, units, PID floor, times)
    MOUNT/GEN/units/UNIT/images/      CRIU images of the unit's process tree
    MOUNT/GEN/units/UNIT/images/seamless-tmpfs-files/  copies of the tmpfs files it used
    MOUNT/GEN/units/UNIT/images/seamless-private-tmp/  copies of its private /tmp, /var/tmp
    MOUNT/GEN/units/UNIT/dump.json    how the checkpoint went (PIDs, sockets, times, outcome)
    MOUNT/GEN/units/UNIT/checksums.json
    MOUNT/GEN/units/UNIT/COMPLETE     written last: the images are whole
    MOUNT/GEN/units/UNIT/restore.json how the restore went (new boot)
    MOUNT/GEN/boot.json               the new boot's times
    MOUNT/GEN/report.json             the upgrade report
In /run (this boot only): armed.json, restore/UNIT.{verdict,done,pid,log}.
On disk: /var/lib/seamless/reports/GEN.json and last.json; in-flight.json from
the kexec shutdown to the upgrade's report (inflight).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

RUN_DIR = Path(os.environ.get("SEAMLESS_RUN_DIR", "/run/seamless"))
ARMED = RUN_DIR / "armed.json"
RESTORE_DIR = RUN_DIR / "restore"
STATE_DIR = Path(os.environ.get("SEAMLESS_STATE_DIR", "/var/lib/seamless"))
REPORT_DIR = STATE_DIR / "reports"


def new_generation() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def write_json(path: Path, data: Any) -> None:
    """Write DATA to PATH atomically (temp file, fsync, rename, fsync dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def update_json(path: Path, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = read_json(path) if path.exists() else {}
    data.update(fields)
    write_json(path, data)
    return data


_GENERATION_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def generation_problem(gen: str, mount: str) -> str | None:
    """Why seamless.restore=GEN / seamless.mount=MOUNT of a command line cannot be used; None if they can.

    Standard library only: the generator uses it too. Both come from the boot
    loader's command line; neither may lead out of the images' mount in /run.
    """
    if not _GENERATION_RE.fullmatch(gen):
        return f"malformed seamless.restore={gen!r}"
    if not mount.startswith("/run/") or ".." in mount.split("/"):
        return f"bad seamless.mount={mount!r}"
    return None


def units_with_images(manifest: dict[str, Any]) -> list[str]:
    """The manifest's units that were checkpointed: not Type=oneshot, not restarted by policy.

    Standard library only: the generator uses it too.
    """
    if not isinstance(manifest, dict) or not isinstance(manifest.get("units"), list):
        raise ValueError("the manifest has no list of units")
    stateless, restart = manifest.get("stateless"), manifest.get("restart")
    skip = {u for u in stateless if isinstance(u, str)} if isinstance(stateless, list) else set()
    skip |= set(restart) if isinstance(restart, dict) else set()
    return [u for u in manifest["units"] if isinstance(u, str) and u not in skip]


class Generation:
    """One upgrade's directory on the images file system."""

    def __init__(self, mount: Path, gen: str) -> None:
        self.mount = mount
        self.id = gen
        self.dir = mount / gen

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def boot(self) -> Path:
        return self.dir / "boot.json"

    @property
    def report(self) -> Path:
        return self.dir / "report.json"

    def unit_dir(self, unit: str) -> Path:
        return self.dir / "units" / unit

    def images(self, unit: str) -> Path:
        return self.unit_dir(unit) / "images"

    def volatile_files(self, unit: str) -> Path:
        # Inside images/: checksummed with them; CRIU ignores it.
        return self.images(unit) / "seamless-tmpfs-files"

    def private_tmp(self, unit: str) -> Path:
        # Copies of the unit's private /tmp and /var/tmp (numbered), inside images/ too.
        return self.images(unit) / "seamless-private-tmp"

    def dump_info(self, unit: str) -> Path:
        return self.unit_dir(unit) / "dump.json"

    def restore_info(self, unit: str) -> Path:
        return self.unit_dir(unit) / "restore.json"

    def page_cache(self, unit: str) -> Path:
        # Which pages of which files the tree had resident (see warm).
        return self.unit_dir(unit) / "page-cache.json"

    def checksums(self, unit: str) -> Path:
        return self.unit_dir(unit) / "checksums.json"

    def complete(self, unit: str) -> Path:
        return self.unit_dir(unit) / "COMPLETE"
