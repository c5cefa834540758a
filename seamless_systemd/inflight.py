"""The upgrade in flight: a record on disk from the kexec shutdown to the upgrade's report.

The images live in RAM; what happened to an upgrade whose new boot never got
to its restore (the new kernel panicked or hung and the machine was reset,
the power was cut, the kexec failed and systemd rebooted) would be lost with
them. So the checkpoint hooks of the kexec shutdown write
/var/lib/seamless/in-flight.json first; restore-prepare notes there that the
new kernel arrived, and restore-finish removes it once the report is written.

A boot that finds it and restores nothing is not the upgrade's restore boot:
seamless-boot-check.service (pulled in by the generator on such boots) turns
the record into the report, says why in the journal, and starts afresh the
units that ran before and are not running now. Writing the record is best
effort: a full /var never holds up a checkpoint or a restore.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from seamless_systemd import diskimages, report, state, systemd
from seamless_systemd.errors import SeamlessError
from seamless_systemd.log import log

PATH = state.STATE_DIR / "in-flight.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = state.read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def begin(gen: state.Generation, manifest: dict[str, Any], path: Path = PATH) -> None:
    """The kexec shutdown of upgrade GEN has begun (every checkpoint hook calls this; the first writes)."""
    old = _read(path)
    if old is not None and old.get("generation") == gen.id:
        return
    try:
        state.write_json(
            path,
            {
                "generation": gen.id,
                "mount": str(gen.mount),
                "kernel": manifest.get("kernel") or {},
                "units": list(manifest.get("units") or []),
                "stateless": list(manifest.get("stateless") or []),
                "kexec_started_at": time.time(),
            },
        )
    except OSError as e:
        log.warning("Cannot record the upgrade in flight in %s (%s); the checkpoint goes on", path, e)


def arrived(gen: state.Generation, path: Path = PATH) -> None:
    """The new kernel of upgrade GEN reached its restore."""
    data = _read(path)
    if data is None or data.get("generation") != gen.id:
        return
    try:
        state.update_json(path, arrived_at=time.time(), arrived_kernel=os.uname().release)
    except OSError as e:
        log.warning("Cannot note in %s that the new kernel arrived (%s)", path, e)


def end(gen: state.Generation, path: Path = PATH) -> None:
    """Upgrade GEN's report is written: nothing is in flight any more."""
    data = _read(path)
    if data is not None and data.get("generation") == gen.id:
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            log.warning("Cannot remove %s (%s): the next boot will report the upgrade again", path, e)


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def what_happened(data: dict[str, Any], kernel_now: str, skipped: str | None) -> tuple[str, str]:
    """(outcome, reason) of the upgrade DATA describes, seen from a boot that restores nothing.

    SKIPPED: why this boot's generator restored nothing although its command
    line named an upgrade (None: an ordinary boot).
    """
    to = (data.get("kernel") or {}).get("to", "?")
    started = _when(data.get("kexec_started_at"))
    if skipped is not None:
        return "not-restored", (
            f"kernel {kernel_now} came up after the kexec shutdown of {started} "
            f"but restored nothing ({skipped})"
        )
    if data.get("arrived_at"):
        return "interrupted", (
            f"kernel {data.get('arrived_kernel', to)} began the restore at {_when(data['arrived_at'])}, "
            "but that boot ended before the upgrade was finished (a crash, a reset or a power cut); "
            f"this boot, of kernel {kernel_now}, is an ordinary one"
        )
    return "not-arrived", (
        f"kernel {to} never reached its restore: the kexec shutdown began at {started}, then the machine "
        "was reset or lost power (during the checkpoints or the kexec, or the new kernel panicked or hung), "
        f"or the kexec failed and it rebooted; this boot, of kernel {kernel_now}, is an ordinary one and "
        "the images were not used"
    )


def build_report(
    data: dict[str, Any], outcome: str, reason: str, units: list[dict[str, Any]]
) -> dict[str, Any]:
    kernel = data.get("kernel") or {}
    return {
        "generation": data.get("generation"),
        "kernel": {"from": kernel.get("from"), "to": kernel.get("to")},
        "outcome": outcome,
        "reason": reason,
        "boot": {"kernel": os.uname().release, "checked_at": time.time()},
        "units": units,
        "seconds": {},
    }


def _skipped() -> str | None:
    """Why this boot's generator restored nothing though an upgrade was named (generator.json)."""
    decision = _read(state.RUN_DIR / "generator.json")
    if not decision or not decision.get("generation"):
        return None
    return str(decision.get("skipped") or "no unit had complete images")


def check(path: Path = PATH) -> int:
    """seamless-boot-check.service: report the upgrade that did not come back, start its units."""
    if not path.exists():
        return 0
    data = _read(path)
    if data is None or state.generation_problem(str(data.get("generation")), str(data.get("mount"))):
        log.warning("Ignoring the unreadable record of an upgrade in flight %s", path)
        path.unlink(missing_ok=True)
        return 0
    outcome, reason = what_happened(data, os.uname().release, _skipped())
    units = []
    for unit in data.get("units") or []:
        if not isinstance(unit, str):
            continue
        entry: dict[str, Any] = {"unit": unit, "main_pid_before": None, "container": None}
        try:
            info = systemd.start_if_stopped(unit, f"upgrade {data['generation']} did not come back")
            stateless = unit in (data.get("stateless") or [])
            entry.update(
                outcome="rerun" if stateless else "cold-started",
                reason=f"started normally, not restored: the upgrade {outcome.replace('-', ' ')}",
                main_pid_after=info.main_pid or None,
                active_state=info.active_state,
            )
        except SeamlessError as e:
            entry.update(outcome="start-failed", reason=f"{e}", main_pid_after=None)
        units.append(entry)
    rep = build_report(data, outcome, reason, units)
    report.announce(rep)
    try:
        state.REPORT_DIR.mkdir(parents=True, exist_ok=True)
        state.write_json(state.REPORT_DIR / f"{data['generation']}.json", rep)
        state.write_json(state.REPORT_DIR / "last.json", rep)
    except OSError as e:
        log.error(
            "Cannot write the report of upgrade %s (%s); the record stays in %s", data["generation"], e, path
        )
        return 0
    # pmem.mode: disk — images this boot did not use must not stay on the disk (the services' memory).
    diskimages.remove(str(data["generation"]))
    path.unlink(missing_ok=True)
    return 0
