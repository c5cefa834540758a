"""'run --or-reboot': when the seamless upgrade is refused, the ordinary reboot a fleet tool asked for.

The reboot is systemd's own (reboot.target, as 'systemctl reboot' starts it),
into the boot loader's default entry: on Debian, the newest kernel, the one
'seamless-upgrade run' would have chosen. Before it, the refusal goes to the
journal (journal.FALLBACK) and into the last report, so that the next boot's
'seamless-upgrade status' says why the services were restarted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from seamless_systemd import journal, kernels, state, systemd
from seamless_systemd.errors import SeamlessError
from seamless_systemd.log import log

BOOT = Path("/boot")
MODULES = Path("/lib/modules")


def reboot_problem(kernel: str | None) -> str | None:
    """Why an ordinary reboot must not happen either: the kernel it would boot is damaged.

    The boot loader's default is taken to be the newest kernel (Debian's
    GRUB), or KERNEL if the caller named one.
    """
    try:
        target = kernels.choose(kernels.installed(BOOT, MODULES), kernel)
    except SeamlessError as e:
        return str(e)
    return kernels.image_problem(target.image, os.uname().machine)


def record(reason: str, kernel: str | None, now: float | None = None) -> dict[str, Any]:
    """The report of an upgrade that became an ordinary reboot (what 'seamless-upgrade report' shows)."""
    when = time.time() if now is None else now
    return {
        "generation": "reboot-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)),
        "kernel": {"from": os.uname().release, "to": kernel or "the boot loader's default"},
        "outcome": "rebooted",
        "reason": f"the seamless upgrade was refused, so the machine rebooted the ordinary way: {reason}",
        "units": [],
        "seconds": {},
        "rebooted_at": when,
    }


def keep(rep: dict[str, Any], reports: Path | None = None) -> None:
    where = state.REPORT_DIR if reports is None else reports
    try:
        state.write_json(where / f"{rep['generation']}.json", rep)
        state.write_json(where / "last.json", rep)
    except OSError as e:
        # The journal has it all the same; a full /var is no reason to stop a reboot.
        log.warning("Cannot keep the report of this reboot in %s: %s", where, e.strerror or e)


def reboot(reason: str, kernel: str | None = None) -> None:
    """Say why, keep the report, start reboot.target."""
    rep = record(reason, kernel)
    keep(rep)
    journal.event(
        journal.FALLBACK,
        f"Kernel upgrade refused, rebooting the ordinary way instead: {reason}",
        journal.WARNING,
        echo=False,
        reason=reason,
        kernel_from=rep["kernel"]["from"],
        kernel_to=kernel,
    )
    if kernel is not None:
        log.warning("The ordinary reboot boots the boot loader's default entry, which may not be %s", kernel)
    systemd.start_unit("reboot.target", "replace-irreversibly")
