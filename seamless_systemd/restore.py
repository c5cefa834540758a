"""After the kexec: check the images, restore each unit inside itself, finish up.

Three steps, each run by a unit the generator wires on a restore boot:
  prepare  (seamless-restore.service, early): verify every unit's images;
           a unit whose images are bad loses its restore drop-in and starts cold.
  unit     (ExecStart=+ of the unit's restore drop-in): criu restore, detached,
           in the unit's own cgroup; systemd takes the MainPID from the PID file.
  finish   (seamless-restore-finish.service, after the units): cold-start what
           failed, remove the drop-ins, write the report.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seamless_systemd import (
    criu,
    diskimages,
    hugepages,
    imagesums,
    inflight,
    kernels,
    netlock,
    openfiles,
    podman,
    procs,
    ram,
    report,
    sandbox,
    sockets,
    state,
    systemd,
    sysv,
    volatile,
    warm,
)
from seamless_systemd.config import DEFAULT_MOUNTPOINT, PmemMode
from seamless_systemd.errors import RestoreError, SeamlessError
from seamless_systemd.log import log


def current_generation(cmdline_path: Path = Path("/proc/cmdline")) -> state.Generation | None:
    """The generation named on this boot's command line, if any."""
    words = kernels.split_cmdline(cmdline_path.read_text())
    gens = kernels.param_values(words, kernels.RESTORE_PARAM)
    if not gens or not gens[-1]:
        return None
    mounts = kernels.param_values(words, kernels.MOUNT_PARAM)
    mount = mounts[-1] if mounts and mounts[-1] else str(DEFAULT_MOUNTPOINT)
    why = state.generation_problem(gens[-1], mount)
    if why is not None:
        log.error("%s on the kernel command line: nothing is restored, every unit starts afresh", why)
        return None
    return state.Generation(Path(mount), gens[-1])


def kernel_started_at() -> float:
    """Wall-clock time this kernel started."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def process_started_at() -> float:
    """Wall-clock time this process was started: Python's start and its imports come after it."""
    after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return kernel_started_at() + int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime


def _verdict_path(unit: str) -> Path:
    return state.RESTORE_DIR / f"{unit}.verdict"


def _done_path(unit: str) -> Path:
    return state.RESTORE_DIR / f"{unit}.done"


# The verdict of a unit whose images were checked but for the memory pages'
# contents: restore-unit checks those while CRIU restores (PagesCheck).
PAGES_PENDING = "ok, pages at the restore"


def _checksum_problem(bad: list[str] | None) -> str | None:
    """What imagesums.mismatches' answer means for the restore, in words; None if the images match."""
    if bad is None:
        return "image metadata unreadable: checksums.json names no known algorithm"
    return f"images damaged: checksum mismatch in {', '.join(bad[:5])}" if bad else None


def verify_unit(gen: state.Generation, unit: str, pages: bool = True) -> str | None:
    """Why UNIT's images cannot be restored, or None if they can.

    PAGES: check the memory pages' contents too (else only that they are there).
    """
    if not gen.complete(unit).exists():
        info = gen.dump_info(unit)
        try:
            data = state.read_json(info)
        except (OSError, ValueError):
            return "no images (the unit was not checkpointed)"
        if isinstance(data, dict):
            return f"no complete images ({data.get('outcome')}: {data.get('reason', 'unknown')})"
        return "no complete images (dump.json is not a JSON object)"
    try:
        marker = state.read_json(gen.complete(unit))
        expected = state.read_json(gen.checksums(unit))
        dump = state.read_json(gen.dump_info(unit))
    except (OSError, ValueError) as e:
        return f"image metadata unreadable: {e}"
    for name, value in (("COMPLETE", marker), ("dump.json", dump)):
        if not isinstance(value, dict):
            return f"image metadata unreadable: {name} is not a JSON object"
    if marker.get("generation") != gen.id:
        return f"images belong to generation {marker.get('generation')}, not {gen.id}"
    odd = criu.tree_problem(gen.images(unit))
    if odd is not None:
        return f"images tampered with: {odd}"
    why = _checksum_problem(
        imagesums.mismatches(gen.images(unit), expected, imagesums.ALL if pages else imagesums.METADATA)
    )
    if why is not None:
        return why
    pids = dump.get("pids")
    if not isinstance(pids, list) or not all(isinstance(p, int) and p > 0 for p in pids):
        return "image metadata unreadable: dump.json has no list of PIDs"
    taken = [p for p in pids if (procs.PROC / str(p)).exists()]
    if taken:
        who = ", ".join(f"{p} ({procs.comm(p)})" for p in taken)
        return f"PIDs already taken in this boot: {who}"
    return openfiles.problem(dump.get("open_files"))


def _manifest(gen: state.Generation) -> dict[str, Any] | None:
    """GEN's manifest, or None (said in the journal) if it is unreadable or not a JSON object with units."""
    try:
        manifest = state.read_json(gen.manifest)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("units"), list):
            raise ValueError("not a JSON object with a list of units")
    except (OSError, ValueError) as e:
        log.error(
            "The manifest of upgrade %s (%s) is unreadable: %s; nothing is restored, the units start afresh",
            gen.id,
            gen.manifest,
            e,
        )
        return None
    return manifest


# seamless-restore.service's PID while it checks the units' images (after READY=1); gone when it is done.
CHECKING = state.RESTORE_DIR / "checking"
# How long restore-unit waits for its verdict before it checks the images itself.
VERDICT_TIMEOUT = 600.0


def prepare() -> int:
    """seamless-restore.service (Type=notify): the connections' locks, READY=1, then each unit's verdict.

    READY=1 lets the network and the units' restore-unit processes start; each
    restore-unit then waits for its own unit's verdict (await_verdict), not
    for the checks of every unit.
    """
    try:
        return _prepare()
    finally:
        # On every path (not a restore boot, no manifest, a failure): the boot must not wait for it.
        systemd.notify("READY=1")
        CHECKING.unlink(missing_ok=True)


def _prepare() -> int:
    gen = current_generation()
    if gen is None:
        log.info("Not a restore boot")
        return 0
    if not gen.manifest.exists():
        log.error("No images for generation %s at %s; every unit starts afresh", gen.id, gen.mount)
        return 0
    manifest = _manifest(gen)
    if manifest is None:
        # The generator found it so too: no unit has a restore drop-in, seamless-boot-check reports it.
        return 0
    state.RESTORE_DIR.mkdir(parents=True, exist_ok=True)
    inflight.arrived(gen)
    # Before any restore can change them (see host_cgroup2_options).
    CGROUP2_OPTIONS.write_text(sandbox.cgroup2_options() + "\n")
    state.update_json(
        gen.boot,
        kernel_started_at=kernel_started_at(),
        prepare_exec_at=process_started_at(),
        prepare_started_at=time.time(),
        kernel=os.uname().release,
    )
    units = state.units_with_images(manifest)
    if units:
        # CRIU's probe of the kernel, beside the checks rather than in the first restore. Not
        # waited for: the restores start at READY=1, and the first to need it probes itself.
        criu.start_kernel_probe()
    opts = manifest.get("warm") or {}
    if opts.get("page_cache") or opts.get("huge_pages"):
        _hand_over_page_cache(
            gen, units if opts.get("page_cache") else [], units if opts.get("huge_pages") else []
        )
    # Every unit's connections are held before the network can come up (READY=1 lets
    # network-pre.target through); a unit whose images fail the check lets its own go below.
    locked = {unit for unit in units if _lock_connections(gen, unit)}
    CHECKING.write_text(f"{os.getpid()}\n")
    systemd.notify("READY=1")
    ready_at = time.time()
    systemd.notify(f"STATUS=Checking the images of {len(units)} unit(s)")
    _check_all(gen, units, opts, locked, ready_at)
    return 0


def _check_all(
    gen: state.Generation, units: list[str], opts: dict[str, Any], locked: set[str], ready_at: float
) -> None:
    """Check the units' images side by side; each unit's verdict is written as soon as it is known."""
    deferred = {u for u in units if _pages_at_restore(gen, u)}

    def timed(unit: str) -> tuple[str | None, float]:
        t0 = time.monotonic()
        return verify_unit(gen, unit, pages=unit not in deferred), round(time.monotonic() - t0, 3)

    dropped = []
    seconds = {}
    # The units' images are checked side by side (zlib and file reads let go of the GIL),
    # and meanwhile the paths they name are looked up (see warm).
    with (
        concurrent.futures.ThreadPoolExecutor(max_workers=1) as side,
        concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
    ):
        lookups = side.submit(warm.resolve, _paths_named(gen, units)) if opts.get("dentries") else None
        checks = {pool.submit(timed, unit): unit for unit in units}
        for done in concurrent.futures.as_completed(checks):
            unit = checks[done]
            why, seconds[unit] = done.result()
            if why is None:
                _write_verdict(unit, PAGES_PENDING if unit in deferred else "ok")
                pages = " (the memory pages as it is restored)" * (unit in deferred)
                log.info("%s: images verified%s", unit, pages)
                continue
            if unit in locked:
                # Its connections are not coming back: their peers may hear so now.
                netlock.unlock(unit)
            if gen.complete(unit).exists():
                dropped.append(unit)
                _done_path(unit).write_text(why + "\n")
            state.write_json(gen.restore_info(unit), {"outcome": "cold-started", "reason": why})
            _write_verdict(unit, f"bad: {why}")
            log.warning("%s will start afresh: %s", unit, why)
        if lookups is not None:
            found = lookups.result()
            log.info("Looked up %d path(s) the images name in %.2f s", found["paths"], found["seconds"])
            state.update_json(gen.boot, dentries=found)
    if dropped:
        # Their drop-ins go away, so a start job not begun yet runs the normal ExecStart (one that
        # began at READY=1 reads the bad verdict, fails, and seamless-restore-finish starts it afresh).
        systemd.daemon_reload()
    # One write of this boot's record for the whole check (the verdicts went out as they came).
    state.update_json(
        gen.boot,
        ready_at=ready_at,
        verify_seconds={u: seconds[u] for u in units},
        prepare_finished_at=time.time(),
    )


def _write_verdict(unit: str, verdict: str) -> None:
    """Whole or not at all: restore-unit may be reading it already."""
    tmp = _verdict_path(unit).with_suffix(".verdict-tmp")
    tmp.write_text(verdict + "\n")
    tmp.rename(_verdict_path(unit))


def checks_running() -> bool:
    """Whether seamless-restore.service is still checking images (its verdicts may still come)."""
    try:
        pid = int(CHECKING.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _await_checks(timeout: float = VERDICT_TIMEOUT, until: Path | None = None) -> None:
    """While seamless-restore.service checks images (at most TIMEOUT), or until the file UNTIL exists."""
    deadline = time.monotonic() + timeout
    while not (until is not None and until.exists()) and checks_running() and time.monotonic() < deadline:
        time.sleep(0.02)


def await_verdict(unit: str, timeout: float = VERDICT_TIMEOUT) -> str | None:
    """UNIT's verdict, waited for while seamless-restore.service still checks; None if none will come."""
    _await_checks(timeout, until=_verdict_path(unit))
    try:
        return _verdict_path(unit).read_text().strip()
    except FileNotFoundError:
        return None


def _paths_named(gen: state.Generation, units: list[str]) -> list[str]:
    """The files the units' trees used, as their dump records list them."""
    out: list[str] = []
    for unit in units:
        try:
            paths = state.read_json(gen.dump_info(unit)).get("paths", [])
        except (OSError, ValueError, AttributeError):
            continue
        out += [p for p in paths if isinstance(p, str) and p.startswith("/")]
    return out


PAGE_CACHE = state.RESTORE_DIR / "page-cache.json"


def _hand_over_page_cache(gen: state.Generation, units: list[str], huge: list[str]) -> None:
    """The units' page-cache lists, for seamless-warm.service (in /run: the images' RAM may go back first).

    HUGE: the units whose memory it collapses into huge pages again once they run (see hugepages).
    """
    lists = []
    for unit in units:
        try:
            entry = state.read_json(gen.page_cache(unit))
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            log.warning("%s: its page-cache list is unreadable (%s); it is not read back", unit, e)
            continue
        if isinstance(entry, dict) and isinstance(entry.get("files"), list):
            lists.append({"unit": unit, **entry})
    if lists or huge:
        state.write_json(PAGE_CACHE, {"generation": gen.id, "lists": lists, "huge_pages": huge})


def warm_page_cache() -> int:
    """seamless-warm.service: read back the page cache the preserved trees had; the result to the report."""
    if not PAGE_CACHE.exists():
        log.info("No page-cache list in this boot")
        return 0
    data = state.read_json(PAGE_CACHE)
    started = time.time()
    result = warm.rewarm(data.get("lists", []))
    result.update(started_at=started, kernel_started_at=kernel_started_at())
    log.info(
        "Page cache: read back %d MiB of %d MiB in %.1f s (%d file(s) skipped)",
        result["read_bytes"] >> 20,
        result["asked_bytes"] >> 20,
        result["seconds"],
        result["skipped_files"],
    )
    huge = [u for u in data.get("huge_pages") or [] if isinstance(u, str)]
    if huge:
        result["huge_pages"] = _collapse(huge)
    keep_report(f"{data.get('generation')}.page-cache.json", result)
    PAGE_CACHE.unlink(missing_ok=True)
    return 0


def _collapse(units: list[str]) -> dict[str, Any]:
    """The units' memory in huge pages again (see hugepages); what it did, by unit.

    A unit that started afresh instead has nothing split, and nothing to gain: it is asked all the same.
    """
    pids = {}
    for unit in units:
        try:
            info = systemd.unit_info(unit)
        except SeamlessError as e:
            log.warning("%s: no main PID to collapse huge pages in (%s)", unit, e)
            continue
        if info.active_state in systemd.RUNNING and info.main_pid > 0:
            pids[unit] = info.main_pid
    got = hugepages.collapse_trees(pids)
    for unit, procs_ in got.items():
        mib = sum(p.get("collapsed_bytes", 0) for p in procs_) >> 20
        after = sum(p.get("huge_kib_after") or 0 for p in procs_) >> 10
        log.info("%s: %d MiB collapsed into huge pages again (%d MiB in them now)", unit, mib, after)
    return got


def keep_report(name: str, data: Any, last: bool = False) -> bool:
    """Write report DATA as NAME (and last.json) in /var/lib/seamless/reports; False if /var cannot take it.

    A full or read-only /var never fails a restore boot: the services are
    restored all the same, and this boot's report stays on the images' file
    system (what 'seamless-upgrade report' shows in this boot).
    """
    try:
        state.REPORT_DIR.mkdir(parents=True, exist_ok=True)
        state.write_json(state.REPORT_DIR / name, data)
        if last:
            state.write_json(state.REPORT_DIR / "last.json", data)
    except OSError as e:
        log.error(
            "Cannot keep the report %s in %s (%s); free some room there: this boot's report is still on "
            "the images' file system ('seamless-upgrade report' shows it until the next boot)",
            name,
            state.REPORT_DIR,
            e.strerror or e,
        )
        return False
    return True


def _lock_connections(gen: state.Generation, unit: str) -> bool:
    """Until UNIT is restored, the peers of its connections must not get a reset (see netlock).

    Whether a lock was put up (a chain to remove if the unit is not restored).
    """
    try:
        conns = [
            c
            for c in state.read_json(gen.dump_info(unit)).get("tcp_connections", [])
            if not sockets.is_loopback(str(c[2]))
        ]
    except (OSError, ValueError, AttributeError, IndexError, TypeError):
        return False  # its check says what is wrong with its images
    if not conns:
        return False
    try:
        n = netlock.lock(unit, conns)
        log.info("%s: %d TCP connection(s) held until the restore", unit, n)
    except SeamlessError as e:
        log.warning("%s: cannot hold its TCP connections until the restore (%s)", unit, e)
    return True


ADDRESS_TIMEOUT = 120.0
CGROUP2_OPTIONS = state.RESTORE_DIR / "cgroup2-options"


def host_cgroup2_options() -> str:
    """The host's cgroup2 options as restore-prepare found them, before any restore ran.

    Restores run side by side: one that read the options now
    could read them while another's CRIU had cleared them, and would then
    "put back" the cleared ones when it is done.
    """
    try:
        return CGROUP2_OPTIONS.read_text().strip() or sandbox.cgroup2_options()
    except OSError:
        return sandbox.cgroup2_options()


def _lazy(gen: state.Generation) -> bool:
    """Whether the upgrade asked for a lazy restore (lazy_restore: in the config at arm time)."""
    try:
        return bool(state.read_json(gen.manifest).get("lazy_restore"))
    except (OSError, ValueError, AttributeError):
        return False


def _pages_at_restore(gen: state.Generation, unit: str) -> bool:
    """Whether UNIT's memory pages are checked while CRIU restores them (not a container's archive)."""
    try:
        return bool(state.read_json(gen.dump_info(unit)).get("kind") != "podman")
    except (OSError, ValueError, AttributeError):
        return False


class PagesCheck:
    """The memory pages' checksums, checked in a thread while CRIU restores the tree.

    CRIU's post-restore action (libexec/criu-action) waits for the verdict
    in PATH before the tree runs: "ok", or the restore is aborted and the
    tree killed, so no process ever runs on pages that came back damaged.
    """

    def __init__(self, images: Path, expected: Any, path: Path) -> None:
        self.path = path
        self.seconds: float | None = None
        self.problem: str | None = None
        path.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._check, args=(images, expected), daemon=True)
        self._thread.start()

    def _check(self, images: Path, expected: Any) -> None:
        t0 = time.monotonic()
        try:
            self.problem = _checksum_problem(imagesums.mismatches(images, expected, imagesums.PAGES))
        except OSError as e:
            self.problem = f"images unreadable: {e}"
        except Exception as e:  # a verdict always, or CRIU's post-restore action waits it out
            self.problem = f"the pages' check failed: {type(e).__name__}: {e}"
        self.seconds = round(time.monotonic() - t0, 3)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("ok\n" if self.problem is None else f"bad: {self.problem}\n")
        tmp.rename(self.path)

    def result(self) -> str | None:
        """Wait for the check; why the pages cannot be used, or None."""
        self._thread.join()
        return self.problem


def restore_unit(unit: str) -> int:
    """ExecStart=+ of UNIT's restore drop-in."""
    gen = current_generation()
    if gen is None:
        raise RestoreError("not a restore boot (no seamless.restore= on the kernel command line)")
    started = time.time()
    verdict = await_verdict(unit)
    verdict_wait = round(time.time() - started, 3)
    if verdict is None:
        # seamless-restore.service failed or did not run: check for itself.
        why = verify_unit(gen, unit)
        verdict = "ok" if why is None else f"bad: {why}"
    record: dict[str, Any] = {
        "exec_at": process_started_at(),
        "started_at": started,
        "verdict_wait_seconds": verdict_wait,
    }
    made: list[int] = []  # System V segments made for the restore (see sysv)
    conns: list[list[Any]] = []
    if _done_path(unit).exists() and verdict in ("ok", PAGES_PENDING):
        # A second start in this boot (e.g. after a crash) must not bring back
        # the old images: state written since would be lost. (A bad verdict says why below.)
        raise RestoreError(
            f"{unit} was already restored or started afresh in this boot; its images are stale. "
            f"Run 'systemctl daemon-reload' and start {unit} again to start it afresh"
        )
    pages: PagesCheck | None = None
    try:
        if verdict not in ("ok", PAGES_PENDING):
            raise RestoreError(verdict.removeprefix("bad: "))
        if verdict == PAGES_PENDING:
            pages = PagesCheck(
                gen.images(unit), state.read_json(gen.checksums(unit)), state.RESTORE_DIR / f"{unit}.pages"
            )
        dump = state.read_json(gen.dump_info(unit))
        pidfile = state.RESTORE_DIR / f"{unit}.pid"
        pidfile.unlink(missing_ok=True)
        if dump.get("kind") == "podman":
            main_pid = _restore_container(gen, unit, dump, pidfile)
            _done_path(unit).write_text("restored\n")
            record.update(outcome="restored", finished_at=time.time(), main_pid=main_pid)
            log.info("Restored %s (container %s), main PID %d", unit, dump["container"], main_pid)
            return 0
        _same_dynamic_user(unit, dump.get("dynamic_uid"))
        put, kept = volatile.put_back(dump.get("volatile_files", []), gen.volatile_files(unit))
        if put or kept:
            record.update(tmpfs_files_put_back=put, tmpfs_files_already_there=kept)
        conns = dump.get("tcp_connections", [])
        waited = time.monotonic()
        missing = netlock.wait_for_addresses({str(c[0]) for c in conns}, ADDRESS_TIMEOUT)
        if conns:
            # How long the restore waited for the network to give the machine its addresses.
            record["address_wait_seconds"] = round(time.monotonic() - waited, 3)
        if missing:
            raise RestoreError(
                f"its TCP connections need the address(es) {', '.join(missing)}, which this machine "
                f"did not get within {ADDRESS_TIMEOUT:.0f} s"
            )
        inherit = [(1, f"socket:[{ino}]") for ino in dump.get("journal_inodes", [])]
        listen = dump.get("listen_sockets", [])
        inherit += _socket_unit_fds(listen)
        inet_sockets = _socket_unit_inet(dump.get("socket_unit_inet", []))
        root = None
        outside: list[tuple[int, str]] = []
        sockets.prepare_renamed(dump.get("renamed_sockets", []))
        if dump.get("mount_ns"):
            root = sandbox.restore_root(sandbox.root_writable(dump.get("mounts", [])))
            sandbox.recreate_private_tmp(dump.get("private_tmp", []), gen.private_tmp(unit))
            outside = sandbox.open_outside_files(dump.get("outside_files", []))
        # Only a sandbox's restore mounts a cgroup2 (see sandbox.keep_cgroup2_options).
        cgroup_options = host_cgroup2_options() if root is not None else ""
        segments = dump.get("sysv_shm", [])
        made += sysv.recreate(segments)
        scales = state.RESTORE_DIR / f"{unit}.tcp-scales.json" if dump.get("tcp_established") else None
        helper = netlock.ScalesHelper(scales) if scales is not None else None
        try:
            record["criu_started_at"] = time.time()
            with _keep_socket_files([str(path) for _, path in listen]):
                lazy_server = criu.restore(
                    gen.images(unit),
                    pidfile,
                    state.RESTORE_DIR / f"{unit}.log",
                    inherit + [(fd, f"{ext}") for fd, ext in outside],
                    timeout=300,
                    shell_job=bool(dump.get("shell_job")),
                    tcp=bool(dump.get("tcp_established")),
                    root=root,
                    remount=dump.get("mounts", []),
                    sysv_shm=bool(segments),
                    lazy=_lazy(gen),
                    gate=pages.path if pages is not None else None,
                    tcp_scales=scales,
                )
            record["criu_finished_at"] = time.time()
            record["lazy_pages_server"] = lazy_server
            if scales is not None and scales.exists():
                record["tcp_window_scales_repaired"] = state.read_json(scales)
            if pages is not None and pages.result() is not None:  # CRIU waits for it: not reached
                sandbox.kill_tree(int(pidfile.read_text().strip()))
                raise RestoreError(str(pages.result()))
        finally:
            if helper is not None:
                helper.stop()
                if helper.error:
                    log.warning("%s: %s", unit, helper.error)
            for fd, _ in outside:
                os.close(fd)
            sandbox.keep_cgroup2_options(cgroup_options)
        main_pid = int(pidfile.read_text().strip())
        sysv.finish(segments)
        record["renamed_sockets"] = sockets.rename_restored(main_pid, dump.get("renamed_sockets", []))
        for sock in inet_sockets:
            # The .socket unit's socket joined the port first, CRIU's copy second.
            sockets.steer_port_group(sock, 1)
            sock.close()
        if dump.get("mount_ns"):
            weaker = sandbox.weaker(dump.get("mounts", []), main_pid)
            if weaker:
                sandbox.kill_tree(main_pid)
                raise RestoreError(f"the restored sandbox was weaker than the unit's ({'; '.join(weaker)})")
        _done_path(unit).write_text("restored\n")
        if dump.get("pid_file"):
            # The service's own PID file went with /run; tools that read it find it again.
            Path(dump["pid_file"]).write_text(f"{main_pid}\n")
        record.update(outcome="restored", finished_at=time.time(), main_pid=main_pid)
        log.info("Restored %s, main PID %d", unit, main_pid)
        return 0
    except (SeamlessError, OSError, ValueError) as failure:
        sysv.remove(made)
        damaged = pages.result() if pages is not None else None
        # Damaged pages are the reason CRIU stopped (its post-restore action refused them).
        e: Exception = failure if damaged is None else RestoreError(damaged)
        reason = str(e)
        killed = stop_half_restored(unit)
        if killed:
            reason += f"; {len(killed)} half-restored process(es) it left in the unit were killed"
            log.warning("%s: killed the half-restored process(es) %s", unit, ", ".join(map(str, killed)))
        left = procs.unmount_below(gen.images(unit))
        if left:
            log.warning("%s: detached the mounts the restore left in its images: %s", unit, ", ".join(left))
        record.update(outcome="restore-failed", finished_at=time.time(), reason=reason)
        raise RestoreError(f"{unit}: restore failed, it will be started afresh: {e}") from e
    finally:
        if pages is not None and pages.seconds is not None:
            record["pages_verify_seconds"] = pages.seconds
        if record.get("outcome") == "restored" and conns:
            # The peers' segments pass first, then the nudge, then the chain goes (unlock).
            netlock.let_through(unit, conns)
            _nudge_peers(unit, record, conns)
        netlock.unlock(unit)
        state.write_json(gen.restore_info(unit), record)


def own_cgroup() -> str | None:
    """This process's cgroup (v2), e.g. /system.slice/ssh.service."""
    try:
        return Path("/proc/self/cgroup").read_text().strip().split("::", 1)[-1]
    except OSError:
        return None


def stop_half_restored(unit: str, wait: float = 10.0) -> list[int]:
    """SIGKILL what a failed restore left in UNIT's cgroup (all but this process); their PIDs.

    A criu restore that dies midway (killed, out of memory, past its limit)
    leaves tasks that are neither the old tree nor a new one, with their
    signals blocked: systemd's SIGTERM would wait out the unit's stop timeout.
    Only when this process runs as UNIT (its ExecStart=+), never elsewhere.
    """
    group = own_cgroup()
    if group is None or Path(group).name != unit:
        return []
    me, killed = os.getpid(), set()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        left = [p for p in procs.cgroup_pids(group) if p != me]
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.update(left)
        time.sleep(0.1)
    return sorted(killed)


def _nudge_peers(unit: str, record: dict[str, Any], conns: list[list[Any]]) -> None:
    """The peers of the restored connections retransmit now, not at their backed-off timeout (netlock)."""
    remote = [c for c in conns if not sockets.is_loopback(str(c[2]))]
    try:
        record["tcp_peers_nudged"] = netlock.nudge(procs.tree(int(record["main_pid"])), remote)
    except (OSError, ValueError) as e:
        log.warning("%s: could not nudge the peers of its TCP connections: %s", unit, e)


def _same_dynamic_user(unit: str, dumped: int | None) -> None:
    """A DynamicUser= unit's processes come back with the UID they had; the unit must have it again.

    systemd picks the UID from a hash of the user's name, so it is normally the
    same in every boot; if it was taken, the unit got another one, and its
    state directory now belongs to that one.
    """
    if dumped is None:
        return
    now = systemd.unit_info(unit).dynamic_uid
    if now != dumped:
        raise RestoreError(
            f"its dynamic user (DynamicUser=) has UID {now} in this boot, but the checkpointed "
            f"processes run as UID {dumped}"
        )


def _restore_container(gen: state.Generation, unit: str, dump: dict[str, Any], pidfile: Path) -> int:
    """podman brings the container back; its new conmon (in this unit's cgroup) is the MainPID."""
    ctr = podman.restore(
        gen.images(unit) / podman.ARCHIVE,
        str(dump["container"]),
        state.RESTORE_DIR / f"{unit}.log",
        300,
        tcp=bool(dump.get("tcp_established")),
    )
    # The unit's own ExecStop= finds the container through its --cidfile, lost with /run.
    for path, text in ((dump.get("cidfile"), ctr.id), (dump.get("pid_file"), f"{ctr.conmon_pid}\n")):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
    pidfile.write_text(f"{ctr.conmon_pid}\n")
    return ctr.conmon_pid


SD_LISTEN_FDS_START = 3


def _listen_fds() -> list[tuple[int, socket.socket]]:
    """The sockets systemd passed to this start of the unit (LISTEN_FDS), each as a copy."""
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    out = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        with contextlib.suppress(OSError):
            out.append((fd, socket.socket(fileno=os.dup(fd))))
    return out


def _socket_unit_fds(dumped: list[list[Any]]) -> list[tuple[int, str]]:
    """Match the unix sockets systemd passed us (LISTEN_FDS) to the dumped ones, by path."""
    if not dumped:
        return []
    ours: dict[str, int] = {}
    for fd, s in _listen_fds():
        with s:
            name = s.getsockname()
        if isinstance(name, bytes):  # abstract: b"\0name"
            name = "@" + name[1:].decode(errors="replace")
        if isinstance(name, str) and name:
            ours[name] = fd
    out = []
    for ino, path in dumped:
        if path not in ours:
            raise RestoreError(
                f"systemd did not pass the socket {path} that the unit had from its .socket unit "
                f"(passed: {', '.join(sorted(ours)) or 'none'})"
            )
        out.append((ours[path], f"socket:[{ino}]"))
    return out


def _socket_unit_inet(dumped: list[list[Any]]) -> list[socket.socket]:
    """The .socket unit's TCP/UDP sockets (LISTEN_FDS) on the ports of the dumped ones.

    CRIU cannot be handed an inet socket; it makes a new one and binds it to
    the same port, which works only beside a socket bound with SO_REUSEPORT
    (the generator's drop-in gives the .socket unit ReusePort=yes).
    """
    if not dumped:
        return []
    passed = [s for _, s in _listen_fds()]
    out = []
    types = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
    for kind, address, port in dumped:
        sock = next(
            (
                s
                for s in passed
                if s.type == types.get(kind)
                and sockets.same_address(s.getsockname(), str(address), int(port))
            ),
            None,
        )
        if sock is None:
            raise RestoreError(
                f"systemd did not pass the {str(kind).upper()} socket {address} port {port} that the unit "
                "had from its .socket unit"
            )
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            raise RestoreError(
                f"the .socket unit's socket on port {port} was not bound with ReusePort=yes (the "
                "generator's drop-in for it is missing), so the restored copy cannot share the port"
            )
        out.append(sock)
    for s in passed:
        if s not in out:
            s.close()
    return out


@contextlib.contextmanager
def _keep_socket_files(paths: list[str]) -> Iterator[None]:
    """Keep the .socket units' socket files in place while CRIU restores.

    CRIU unlinks the path of every bound unix socket it restores, even when it
    is handed the socket itself (--inherit-fd); the socket would then live on
    without a name and no client could reach it. A second hard link to the
    socket file, renamed back afterwards, keeps the name.
    """
    kept = []
    for path in paths:
        if path.startswith("/") and os.path.exists(path):
            spare = f"{path}.seamless-keep"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spare)
            os.link(path, spare)
            kept.append((path, spare))
    try:
        yield
    finally:
        for path, spare in kept:
            if os.path.exists(path):
                os.unlink(spare)
            else:
                os.rename(spare, path)


def finish() -> int:
    """Cold-start what was not restored, drop the restore drop-ins, write the report."""
    gen = current_generation()
    ranges = ram.this_boot_ranges()
    manifest = _manifest(gen) if gen is not None and gen.manifest.exists() else None
    if gen is None or manifest is None:
        if gen is not None and ranges:
            # No images to restore from: their RAM is of no use any more.
            ram.give_back(ranges, gen.mount)
        return 0
    state.RESTORE_DIR.mkdir(parents=True, exist_ok=True)
    # seamless-restore.service may still be writing this boot's record (a unit dropped at the end).
    _await_checks()
    # Every restore is over: the host's cgroup2 has its own options, whatever they did.
    if CGROUP2_OPTIONS.exists():
        sandbox.keep_cgroup2_options(host_cgroup2_options())
    to_restart = []
    for unit in manifest["units"]:
        info = gen.restore_info(unit)
        data = state.read_json(info) if info.exists() else {}
        u = systemd.unit_info(unit)
        outcome = data.get("outcome")
        if outcome == "restored" and u.active_state == "active" and u.main_pid == data.get("main_pid"):
            pass
        else:
            if outcome == "restored":
                why = f"restored, then the unit was {u.active_state} (MainPID {u.main_pid})"
                data = {**data, "outcome": "cold-started", "reason": why}
            elif outcome == "restore-failed":
                data = {**data, "outcome": "cold-started"}
            elif outcome is None and unit in manifest.get("restart", {}):
                data = {"outcome": "restarted", "reason": manifest["restart"][unit]}
            elif outcome is None and unit in manifest.get("stateless", []):
                data = {"outcome": "rerun", "reason": "Type=oneshot: no process to preserve, it ran again"}
            elif outcome is None:
                data = {"outcome": "cold-started", "reason": verify_unit(gen, unit) or "not restored"}
            state.write_json(info, data)
            if u.active_state not in systemd.RUNNING:
                to_restart.append(unit)
        _done_path(unit).write_text("finished\n")
    sandbox.unmount_root()
    for name in netlock.leftover_chains():
        log.warning("Removing the leftover connection lock %s", name)
        netlock.remove_chain(name)
    systemd.daemon_reload()
    for unit in to_restart:
        try:
            systemd.start_if_stopped(unit, "it was not restored")
        except SeamlessError as e:
            log.error("Could not start %s: %s", unit, e)
    state.update_json(gen.boot, finished_at=time.time())
    rep = report.build(gen)
    state.write_json(gen.report, rep)
    if ranges:
        # RAM on demand: the images are used up; their RAM goes back to this kernel.
        rep["ram"] = {**(manifest.get("ram") or {}), "given_back": ram.give_back(ranges, gen.mount)}
    keep_report(f"{gen.id}.json", rep, last=True)
    # Even if /var could not take the report: the upgrade did come back.
    inflight.end(gen)
    if manifest.get("pmem_mode") == PmemMode.DISK.value:
        # The images are used up, and they hold the services' memory: off the disk.
        diskimages.remove(gen.id)
    report.announce(rep)
    return 0
