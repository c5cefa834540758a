"""A kernel was installed: would 'seamless-upgrade run' switch to it, keeping the services?

Run by the kernel install hooks (Debian's /etc/kernel/postinst.d/seamless-systemd,
kernel-install's 90-seamless.install elsewhere) once the kernel and its
initramfs are in /boot. The answer is the plan's, for that kernel, as things
stand now: its image, build options, modules and initramfs, kexec, the
images' RAM, and the configured units. The package manager that runs the hook
holds the dpkg lock, which plan would refuse; that one problem is left out.

The answer goes three ways: to the terminal of whoever installs the kernel
(apt shows a hook's output), to the journal (journal.KERNEL), and into
/var/lib/seamless/kernels/VERSION.json, which 'seamless-upgrade status'
shows while that kernel is newer than the running one. Nothing here may
fail the kernel's installation: every error becomes part of the answer.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from seamless_systemd import config, journal, kernels, state, upgrade
from seamless_systemd.errors import SeamlessError
from seamless_systemd.log import log

RECORDS = state.STATE_DIR / "kernels"


def judge(version: str, config_dir: Path = config.DEFAULT_DIR) -> dict[str, Any]:
    """The verdict on kernel VERSION as the next upgrade's target."""
    verdict: dict[str, Any] = {
        "version": version,
        "running": os.uname().release,
        "checked_at": time.time(),
        "problems": [],
        "notes": [],
        "units": [],
    }
    try:
        cfg = config.load(config_dir)
        facts = upgrade.gather(cfg, version)
        # The package manager installing this kernel holds the dpkg lock: that is why we run.
        plan = upgrade.decide(cfg, dataclasses.replace(facts, package_manager_pid=None))
        verdict["problems"] = list(plan.problems)
        verdict["notes"] = list(plan.notes)
        verdict["units"] = [u.unit for u in plan.units if u.preserved and not u.problem]
        newest = kernels.choose(kernels.installed(), cfg.kernel).version
        if newest != version:
            verdict["notes"].append(
                f"'seamless-upgrade run' chooses {newest}; "
                f"'seamless-upgrade run --kernel {version}' picks this one"
            )
    except (SeamlessError, OSError) as e:
        verdict["problems"].append(f"could not be checked: {e}")
    verdict["ready"] = not verdict["problems"]
    return verdict


def say(verdict: dict[str, Any]) -> str:
    version = verdict["version"]
    if verdict["ready"]:
        units = verdict["units"]
        kept = f"keeping {len(units)} service(s): {', '.join(units)}" if units else "keeping no service"
        return f"kernel {version} is installed: 'seamless-upgrade run' switches to it, {kept}"
    return f"kernel {version} is installed, but a seamless switch to it would be refused: " + "; ".join(
        verdict["problems"]
    )


def keep(verdict: dict[str, Any], records: Path | None = None) -> None:
    where = RECORDS if records is None else records
    try:
        state.write_json(where / f"{verdict['version']}.json", verdict)
    except OSError as e:
        log.warning(
            "Cannot keep the check of kernel %s in %s: %s", verdict["version"], where, e.strerror or e
        )


def installed(version: str, config_dir: Path = config.DEFAULT_DIR) -> int:
    """The install hooks' command: check, say, keep. Always 0: a kernel installs whatever we think."""
    if not version or "/" in version or version.startswith("."):
        log.error("Not a kernel version: %r (the hook is called with the version first)", version)
        return 0
    verdict = judge(version, config_dir)
    keep(verdict)
    text = say(verdict)
    print(f"seamless-systemd: {text}")
    journal.event(
        journal.KERNEL,
        text[0].upper() + text[1:],
        journal.INFO if verdict["ready"] else journal.WARNING,
        echo=False,
        kernel_to=version,
        ready=verdict["ready"],
        reason="; ".join(verdict["problems"]) or None,
    )
    return 0


def pending(records: Path | None = None) -> list[dict[str, Any]]:
    """The checks of installed kernels newer than the running one, newest first (for status)."""
    where = RECORDS if records is None else records
    running = kernels.version_key(os.uname().release)
    have = {k.version for k in kernels.installed()}
    out = []
    for path in sorted(where.glob("*.json")) if where.is_dir() else []:
        try:
            verdict = state.read_json(path)
        except (OSError, ValueError):
            continue
        version = str(verdict.get("version"))
        if version in have and kernels.version_key(version) > running:
            out.append(verdict)
    return sorted(out, key=lambda v: kernels.version_key(str(v["version"])), reverse=True)
