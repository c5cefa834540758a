"""What brings the machine back when the new kernel never reaches its restore.

Two things can: the kernel's own panic timeout (panic=SECONDS on the new
kernel's command line: a panic reboots instead of sitting at the message, as
it does with Debian's default of 0), and a hardware watchdog that systemd
arms for the kexec (KExecWatchdogSec= in system.conf) and that is still
counting when the new kernel hangs. The first is ours to set; the second is
the machine's and the administrator's, so plan only says whether it is there
(docs/design.md, When something fails).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from seamless_systemd import kernels
from seamless_systemd.errors import SeamlessError

WATCHDOGS = Path("/sys/class/watchdog")


def with_panic(cmdline: str, seconds: int) -> str:
    """CMDLINE with panic=SECONDS added, unless it names a panic= of its own or SECONDS is 0."""
    words = kernels.split_cmdline(cmdline)
    if seconds <= 0 or kernels.param_values(words, "panic"):
        return cmdline
    return " ".join([*words, f"panic={seconds}"])


@dataclasses.dataclass(frozen=True)
class Watchdog:
    # The first hardware watchdog's identity (e.g. 'iTCO_wdt'), or None: the machine has none.
    identity: str | None
    # systemd's KExecWatchdogSec= in microseconds (0: off), or None: systemd was not asked.
    kexec_usec: int | None


def watchdog_facts(sysfs: Path = WATCHDOGS) -> Watchdog:
    identity = None
    for dev in sorted(sysfs.glob("watchdog*")) if sysfs.is_dir() else []:
        try:
            identity = (dev / "identity").read_text().strip() or dev.name
        except OSError:
            identity = dev.name
        break
    try:
        from seamless_systemd import systemd

        usec: int | None = systemd.manager_property("KExecWatchdogUSec")
    except (SeamlessError, ImportError):
        usec = None
    return Watchdog(identity, usec)


def notes(cmdline: str, wd: Watchdog) -> list[str]:
    """What plan says about a new kernel that panics or hangs before its restore (CMDLINE: its own)."""
    out = []
    panic = kernels.param_values(kernels.split_cmdline(cmdline), "panic")
    if panic and panic[-1] not in ("", "0"):
        out.append(
            f"if the new kernel panics before its restore, it reboots (panic={panic[-1]}); the services "
            "start afresh on the kernel the boot loader picks, and 'seamless-upgrade report' says so"
        )
    else:
        out.append(
            "if the new kernel panics before its restore it stays at the panic message (panic=0 on its "
            "command line): set panic_reboot in the config, or panic=SECONDS on the kernel command line"
        )
    if wd.identity is None:
        out.append(
            "if the new kernel hangs before its restore, nothing resets the machine: it has no hardware "
            "watchdog (/sys/class/watchdog is empty); a reset by hand boots it normally and the report "
            "then says the upgrade did not arrive"
        )
    elif not wd.kexec_usec:
        out.append(
            f"if the new kernel hangs before its restore, nothing resets the machine: the hardware watchdog "
            f"({wd.identity}) is not armed for a kexec; set KExecWatchdogSec= in /etc/systemd/system.conf "
            "(and boot with watchdog.stop_on_reboot=0 if its driver stops it at a reboot)"
        )
    else:
        after = "its driver's default" if wd.kexec_usec >= 1 << 63 else f"{wd.kexec_usec // 1_000_000} s"
        out.append(
            f"if the new kernel hangs before its restore, the hardware watchdog ({wd.identity}) resets the "
            f"machine after {after} (systemd's KExecWatchdogSec=), unless its driver "
            "stops it at the kexec (boot with watchdog.stop_on_reboot=0 to keep it counting)"
        )
    return out
