"""seamless-upgrade: the command line. The only place errors become exit codes."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from seamless_systemd import (
    __version__,
    config,
    fallback,
    inflight,
    log,
    ram,
    report,
    restore,
    state,
)
from seamless_systemd.errors import CommandError, LockedError, PreflightError, SeamlessError


def _lazy(name: str) -> ModuleType:
    """seamless_systemd.NAME, executed when first used.

    restore-prepare and restore-unit run in the downtime of every restore and
    need none of these; under emulation their imports took most of a second
    of each start (docs/benchmarks.md).
    """
    full = f"seamless_systemd.{name}"
    if full in sys.modules:
        return sys.modules[full]
    spec = importlib.util.find_spec(full)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module {full}")
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from seamless_systemd import newkernel, progress, reserve, status, timeline, upgrade
else:
    newkernel, progress, reserve, status, timeline, upgrade = map(
        _lazy, ("newkernel", "progress", "reserve", "status", "timeline", "upgrade")
    )


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 20):.0f} MiB"


def _print_plan(plan: upgrade.Plan) -> None:
    print(f"Kernel:  {plan.kernel_from} -> {plan.kernel_to.version}")
    print(
        f"         {plan.kernel_to.image}" + (f" + {plan.kernel_to.initrd}" if plan.kernel_to.initrd else "")
    )
    if plan.mode == config.PmemMode.ON_DEMAND.value:
        print(
            f"Images:  RAM on demand: {_mib(plan.ram_bytes)} taken as hugepages at arm time "
            f"({_mib(plan.ram_available)} available), images need about {_mib(plan.estimate_bytes)}"
        )
        print("         named to the new kernel only (memmap=), given back to it after the restore")
    elif plan.mode == config.PmemMode.DISK.value:
        print(
            f"Images:  on disk (pmem.mode: disk): {plan.pmem_device}, {_mib(plan.pmem_capacity)} free, "
            f"images need about {_mib(plan.estimate_bytes)}"
        )
        print("         no RAM given up; written and read back through the disk, so slower than a PMEM")
    else:
        print(
            f"PMEM:    {plan.pmem_device}: size {_mib(plan.pmem_size)}, room for images "
            f"{_mib(plan.pmem_capacity)}, images need about {_mib(plan.estimate_bytes)}"
        )
        print(
            "         memmap= reservation "
            + (
                "kept on the new kernel's command line"
                if plan.memmap_kept
                else "NOT on the command line: the images would be lost"
            )
        )
    print("Units:")
    for u in plan.units:
        state_ = f"PID {u.main_pid}, {len(u.pids)} process(es), memory {_mib(u.memory_bytes)}"
        if u.container:
            state_ = (
                f"podman container {u.container} (conmon PID {u.main_pid}), memory {_mib(u.memory_bytes)}"
            )
        if u.stateless:
            state_ = "Type=oneshot: no process to preserve, it runs again at boot"
        elif u.restart:
            state_ = f"PID {u.main_pid}: restarted afresh, not preserved (see the note)"
        print(f"  {u.unit}: " + ("cannot be preserved (see below)" if u.problem else state_))
    for n in plan.notes:
        print(f"Note: {n}")
    if plan.problems:
        print("Refusing to upgrade:")
        for p in plan.problems:
            print(f"  - {p}")
    else:
        print("Ready: 'seamless-upgrade run' (or 'systemctl start kexec-upgrade.target') upgrades now.")


def cmd_plan(args: argparse.Namespace, cfg: config.Config) -> int:
    plan = upgrade.make_plan(cfg, args.kernel)
    if args.json:
        print(json.dumps(plan.as_dict(), indent=2))
    else:
        _print_plan(plan)
    return PreflightError.exit_code if plan.problems else 0


def cmd_arm(args: argparse.Namespace, cfg: config.Config) -> int:
    with upgrade.lock():
        gen = upgrade.arm(cfg, args.kernel, trial=not args.no_trial)
    armed = state.read_json(state.ARMED)
    print(f"Armed upgrade {gen.id}: 'systemctl kexec' now preserves {', '.join(armed['units'])}")
    return 0


def cmd_run(args: argparse.Namespace, cfg: config.Config) -> int:
    with upgrade.lock():
        gen = upgrade.run_upgrade(cfg, args.kernel)
    print(f"Upgrade {gen.id} started: the machine now kexecs into the new kernel")
    return 0


# --or-reboot did neither: a package manager or another upgrade is at work (sysexits' EX_TEMPFAIL).
TRY_AGAIN = 75


def cmd_run_or_reboot(args: argparse.Namespace) -> int:
    """'run --or-reboot': the seamless upgrade if it can be armed, else an ordinary reboot.

    For the tools that reboot a fleet (kured, Ansible, unattended-upgrades):
    exit 0 means the machine is going down either way. A package manager at
    work, or another upgrade, gets neither (TRY_AGAIN): rebooting then could
    leave a half-installed kernel.
    """
    try:
        cfg = config.load(args.config_dir)
        return cmd_run(args, cfg)
    except LockedError as e:
        log.log.error("%s; neither upgrading nor rebooting now, run again later", e)
        return TRY_AGAIN
    except SeamlessError as e:
        holder = upgrade.lock_holder(upgrade.DPKG_LOCK)
        if holder is not None:
            log.log.error(
                "%s\nA package manager is at work (PID %d): neither upgrading nor rebooting now, "
                "run again once it has finished",
                e,
                holder,
            )
            return TRY_AGAIN
        reason = "; ".join(e.problems) if isinstance(e, PreflightError) else str(e)
        log.log.error("%s", e)
    damaged = fallback.reboot_problem(args.kernel)
    if damaged is not None:
        log.log.error("Not rebooting either, the machine would not come back: %s", damaged)
        return 1
    fallback.reboot(reason, args.kernel)
    print("The seamless upgrade was refused: rebooting the ordinary way instead")
    return 0


def cmd_disarm(args: argparse.Namespace, cfg: config.Config) -> int:
    upgrade.disarm()
    return 0


def cmd_status(args: argparse.Namespace, cfg: config.Config) -> int:
    out = status.data(cfg)
    armed, last = out["armed"], out["last_report"]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if armed:
        print(
            f"Armed: upgrade {armed['generation']}; the next 'systemctl kexec' preserves "
            f"{', '.join(armed['units'])}" + ("" if out["kexec_loaded"] else " (but no kernel is loaded!)")
        )
    else:
        print("Not armed: shutdowns are ordinary.")
    if out["ram"]:
        held = out["ram"]
        print(
            f"RAM for the images: {_mib(held['bytes'])} in {len(held['ranges'])} range(s), "
            f"taken in {held['seconds']:.1f} s and served as {held['device']} by {ram.UNIT}"
        )
    print(f"Configured units: {', '.join(cfg.units) or '(none)'}")
    if cfg.containers:
        print(f"Configured podman containers: {', '.join(cfg.containers)}")
    for verdict in out["kernels"]:
        text = newkernel.say(verdict)
        print(text[0].upper() + text[1:])
    if last:
        print("Last upgrade:\n" + report.render(last))
    return 0


def cmd_report(args: argparse.Namespace, cfg: config.Config) -> int:
    rep = status.last_report()
    if rep is None:
        print("No upgrade report on this machine yet.", file=sys.stderr)
        return 1
    if args.svg is not None:
        picture = timeline.render(rep)
        if str(args.svg) == "-":
            sys.stdout.write(picture)
        else:
            args.svg.write_text(picture)
            print(f"Timeline of upgrade {rep['generation']}: {args.svg}", file=sys.stderr)
        return 0
    print(json.dumps(rep, indent=2) if args.json else report.render(rep))
    return 0


_HANDLERS = {
    "plan": cmd_plan,
    "arm": cmd_arm,
    "run": cmd_run,
    "disarm": cmd_disarm,
    "status": cmd_status,
    "report": cmd_report,
}


def _watching(work: Callable[[], int]) -> int:
    """WORK with its steps shown on stderr: a line rewritten in place on a terminal, plain lines otherwise."""
    terminal = progress.Terminal()
    try:
        with progress.watched(terminal):
            return work()
    finally:
        terminal.close()


# The commands the package's own units run, and which unit runs each.
INTERNAL = {
    "checkpoint": "seamless-checkpoint@.service",
    "restore-unit": "the restore drop-in of each unit",
    "restore-prepare": "seamless-restore.service",
    "restore-finish": "seamless-restore-finish.service",
    "warm-page-cache": "seamless-warm.service",
    "ram-serve": "seamless-ram.service",
    "boot-check": "seamless-boot-check.service",
    "kernel-installed": "the kernel install hooks (/etc/kernel/postinst.d, kernel-install)",
    "dbus-serve": "seamless-dbus.service, when a D-Bus call activates it",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="seamless-upgrade", description="Upgrade the kernel with kexec, keeping services running."
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--config-dir", type=Path, default=config.DEFAULT_DIR)
    parser.add_argument("--debug", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("plan", "show what an upgrade would do, refuse what would fail"),
        ("arm", "prepare the upgrade; the next 'systemctl kexec' performs it"),
        ("run", "arm and kexec into the new kernel now"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--kernel", metavar="VERSION", help="target kernel (default: newest installed)")
        if name == "plan":
            p.add_argument("--json", action="store_true")
        if name == "arm":
            p.add_argument("--no-trial", action="store_true", help="skip the trial checkpoint")
        if name == "run":
            p.add_argument(
                "--or-reboot",
                action="store_true",
                help="if the upgrade is refused, reboot the ordinary way instead (for fleet tools)",
            )
    sub.add_parser("disarm", help="cancel an armed upgrade")
    p = sub.add_parser("setup", help="reserve RAM for the images at every boot (memmap=), or --remove it")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--size", metavar="SIZE", help="how much RAM to reserve, e.g. 512M or 2G")
    how.add_argument("--remove", action="store_true", help="take the reservation out again")
    p.add_argument("--dry-run", action="store_true", help="say which range, write nothing")
    sub.add_parser("status", help="show the status").add_argument("--json", action="store_true")
    p = sub.add_parser("report", help="show the report of the last upgrade")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--svg", type=Path, metavar="FILE", help="draw its timeline as SVG into FILE ('-': stdout)"
    )
    # Called by the package's units, not by people.
    for name in ("checkpoint", "restore-unit"):
        sub.add_parser(name, help=argparse.SUPPRESS).add_argument("unit")
    sub.add_parser("restore-prepare", help=argparse.SUPPRESS)
    sub.add_parser("restore-finish", help=argparse.SUPPRESS)
    sub.add_parser("warm-page-cache", help=argparse.SUPPRESS)
    sub.add_parser("ram-serve", help=argparse.SUPPRESS)
    sub.add_parser("boot-check", help=argparse.SUPPRESS)
    sub.add_parser("kernel-installed", help=argparse.SUPPRESS).add_argument("version")
    sub.add_parser("dbus-serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    log.setup(args.debug)
    try:
        if os.geteuid() != 0 and args.command in INTERNAL:
            raise SeamlessError(
                f"'seamless-upgrade {args.command}' is run as root by the package's units "
                f"({INTERNAL[args.command]}), not by hand"
            )
        if os.geteuid() != 0 and args.command in ("plan", "arm", "run", "disarm", "setup"):
            raise SeamlessError(
                f"'seamless-upgrade {args.command}' must run as root: it inspects the services' "
                "processes, /proc/iomem and the PMEM device"
            )
        if args.command == "checkpoint":
            return upgrade.checkpoint(args.unit)
        if args.command == "restore-unit":
            return restore.restore_unit(args.unit)
        if args.command == "restore-prepare":
            return restore.prepare()
        if args.command == "restore-finish":
            return restore.finish()
        if args.command == "warm-page-cache":
            return restore.warm_page_cache()
        if args.command == "ram-serve":
            return ram.serve()
        if args.command == "boot-check":
            return inflight.check()
        if args.command == "kernel-installed":
            return newkernel.installed(args.version, args.config_dir)
        if args.command == "dbus-serve":
            from seamless_systemd import dbus_service  # dbus-fast only where the service runs

            return dbus_service.main()
        if args.command == "setup":
            return reserve.remove() if args.remove else reserve.setup(args.size, args.dry_run)
        if args.command == "run" and args.or_reboot:
            return _watching(lambda: cmd_run_or_reboot(args))
        cfg = config.load(args.config_dir)
        handler = _HANDLERS[args.command]
        if args.command in ("plan", "arm", "run") and not getattr(args, "json", False):
            return _watching(lambda: handler(args, cfg))
        return handler(args, cfg)
    except CommandError as e:
        log.log.error("%s", e)
        return e.exit_code
    except SeamlessError as e:
        log.log.error("%s", e)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
