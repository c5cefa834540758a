"""The upgrade report: what happened to each unit, and how long each phase took."""

from __future__ import annotations

import mmap
from typing import Any

from seamless_systemd import journal, state


def _span(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 3)


def _us(x: int | None) -> float | None:
    return None if x is None else round(x / 1e6, 3)


def _pages(n: int | None) -> int | None:
    return None if n is None else n * mmap.PAGESIZE


def build(gen: state.Generation) -> dict[str, Any]:
    manifest = state.read_json(gen.manifest)
    boot = state.read_json(gen.boot) if gen.boot.exists() else {}
    units = []
    dump_starts, dump_ends, rest_starts, rest_ends = [], [], [], []
    for unit in manifest["units"]:
        dump = state.read_json(gen.dump_info(unit)) if gen.dump_info(unit).exists() else {}
        rest = state.read_json(gen.restore_info(unit)) if gen.restore_info(unit).exists() else {}
        outcome = rest.get("outcome") or ("not-checkpointed" if not dump else "unknown")
        entry = {
            "unit": unit,
            "container": dump.get("container") or manifest.get("containers", {}).get(unit),
            "outcome": outcome,
            "reason": rest.get("reason") or dump.get("reason"),
            "main_pid_before": dump.get("main_pid", manifest.get("main_pids", {}).get(unit)),
            "main_pid_after": rest.get("main_pid"),
            "image_bytes": dump.get("image_bytes"),
            # Written by the final dump; the rest came from the pre-dump rounds (predump).
            "final_dump_bytes": _pages(dump.get("dump_stats", {}).get("pages_written")),
            "pre_dump": bool(dump.get("pre_dump_parent")),
            # Its private memory served as touched, then in the background (criu lazy-pages).
            "lazy": bool(rest.get("lazy_pages_server")),
            # Noted before the freeze, read back after the kexec (warm).
            "page_cache_bytes": (dump.get("page_cache") or {}).get("bytes"),
            # The host's run-time mounts its namespace showed, left out (sandbox.runtime_mounts).
            "skipped_mounts": dump.get("skipped_mounts") or [],
            # TCP: connections given their window scales back, peers asked to retransmit (netlock).
            "tcp": {
                "window_scales_repaired": rest.get("tcp_window_scales_repaired") or [],
                "peers_nudged": rest.get("tcp_peers_nudged"),
            },
            "seconds": {
                "checkpoint": _span(dump.get("started_at"), dump.get("dumped_at")),
                "restore": _span(rest.get("started_at"), rest.get("finished_at")),
                # The images' checksums: made after the dump, checked before the restore.
                "checksum": (dump.get("checksum") or {}).get("seconds"),
                "verify": (boot.get("verify_seconds") or {}).get(unit),
                # The memory pages' checksums, checked while CRIU restored them.
                "verify_pages": rest.get("pages_verify_seconds"),
                # The restore waiting for its unit's verdict (seamless-restore.service's check of it).
                "verdict_wait": rest.get("verdict_wait_seconds"),
                # The restore waiting for the addresses its TCP connections need (the network's start).
                "address_wait": rest.get("address_wait_seconds"),
                # criu restore itself (with the pages' check it waits for).
                "criu": _span(rest.get("criu_started_at"), rest.get("criu_finished_at")),
                # CRIU's own figure: the tree frozen to the end of its final dump.
                "frozen": _us(dump.get("dump_stats", {}).get("frozen_time_us")),
                "downtime": _span(dump.get("started_at"), rest.get("finished_at"))
                if outcome == "restored"
                else None,
            },
            # When (the clock of both kernels, seconds since the epoch): the timeline's bars.
            "at": {
                "checkpoint_started": dump.get("started_at"),
                "dumped": dump.get("dumped_at"),
                "checkpoint_finished": dump.get("finished_at"),
                # restore-unit's process started (Python and its imports before restore_started).
                "restore_exec": rest.get("exec_at"),
                "restore_started": rest.get("started_at"),
                "criu_started": rest.get("criu_started_at"),
                "restore_finished": rest.get("finished_at"),
            },
        }
        units.append(entry)
        if dump.get("started_at"):
            dump_starts.append(dump["started_at"])
            dump_ends.append(dump.get("finished_at", dump["started_at"]))
        if outcome == "restored":
            rest_starts.append(rest["started_at"])
            rest_ends.append(rest["finished_at"])
    kstart = boot.get("kernel_started_at")
    first_dump = min(dump_starts, default=None)
    last_dump = max(dump_ends, default=None)
    first_rest = min(rest_starts, default=None)
    last_rest = max(rest_ends, default=None)
    return {
        "generation": gen.id,
        "kernel": {"from": manifest["kernel"]["from"], "to": boot.get("kernel", manifest["kernel"]["to"])},
        "units": units,
        # Where the images were kept: reserved, on-demand (RAM) or disk (pmem.mode).
        "images": manifest.get("pmem_mode"),
        "warm": {"dentries": boot.get("dentries")},
        "at": {
            "arm_started": manifest.get("arm_started_at", manifest.get("armed_at")),
            "armed": manifest.get("armed_at"),
            "kexec_requested": manifest.get("kexec_requested_at"),
            "kernel_started": kstart,
            # seamless-restore.service: its process started, its work started, READY=1 (the
            # connections held: the network and the restores start), the images checked.
            "prepare_exec": boot.get("prepare_exec_at"),
            "prepare_started": boot.get("prepare_started_at"),
            "prepare_ready": boot.get("ready_at"),
            "images_checked": boot.get("prepare_finished_at"),
            "finished": boot.get("finished_at"),
        },
        "seconds": {
            # run's early writeback (sync while the services still run), before the kexec request.
            "writeback": manifest.get("writeback_seconds"),
            # Arming (plan, taking the RAM, trial checkpoints, kexec load) to the kexec request.
            "arm": _span(
                manifest.get("arm_started_at", manifest.get("armed_at")), manifest.get("kexec_requested_at")
            ),
            # First dump start to last dump end (services stop one by one meanwhile).
            "checkpoint": _span(first_dump, last_dump),
            # Last dump end to the new kernel's start: rest of the shutdown, kexec.
            "kexec": _span(last_dump, kstart),
            # New kernel start to the first restore.
            "boot": _span(kstart, first_rest),
            "restore": _span(first_rest, last_rest),
            # First service frozen to last service back.
            "downtime": _span(first_dump, last_rest),
        },
    }


def render(rep: dict[str, Any]) -> str:
    lines = [f"Upgrade {rep['generation']}: kernel {rep['kernel']['from']} -> {rep['kernel']['to']}"]
    if rep.get("reason"):
        # It did not come back (inflight): what is known, and what this boot did.
        lines.append(f"  {rep.get('outcome', 'failed')}: {rep['reason']}")
    for u in rep["units"]:
        pids = f"PID {u['main_pid_before']} -> {u['main_pid_after']}" if u["main_pid_after"] else ""
        if u["main_pid_after"] and u.get("main_pid_before") is None:
            pids = f"PID {u['main_pid_after']}"
        why = f" ({u['reason']})" if u.get("reason") and u["outcome"] != "restored" else ""
        ctr = f" (container {u['container']})" if u.get("container") else ""
        lines.append(f"  {u['unit']}{ctr}: {u['outcome']} {pids}{why}".rstrip())
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in rep["seconds"].items() if v is not None)
    if secs:
        lines.append(f"  phases: {secs}")
    warmed = rep.get("warm") or {}
    looked = warmed.get("dentries")
    if looked:
        lines.append(f"  paths looked up before the restore: {looked['paths']} in {looked['seconds']:.2f} s")
    cache = warmed.get("page_cache")
    if cache:
        line = f"  page cache read back: {cache['read_bytes'] >> 20} of {cache['asked_bytes'] >> 20} MiB"
        line += f" in {cache['seconds']:.1f} s"
        if cache.get("skipped_files"):
            line += f", {cache['skipped_files']} file(s) skipped (e.g. {cache['skipped'][0]})"
        lines.append(line)
    ram = rep.get("ram")
    if ram:
        back = ram.get("given_back") or {}
        took = (ram.get("seconds") or {}).get("take")
        line = f"  RAM on demand: {ram.get('bytes', 0) >> 20} MiB in {len(ram.get('ranges', []))} range(s)"
        line += f", taken in {took:.1f} s" if took is not None else ""
        if back:
            line += f"; {back.get('returned_bytes', 0) >> 20} MiB given back"
            line += f" in {back['seconds']:.1f} s" if back.get("seconds") is not None else ""
            if back.get("reason"):
                line += f" ({back['reason']})"
            elif back.get("kept"):
                line += f", {len(back['kept'])} range(s) left as /dev/pmemN until the next boot"
        lines.append(line)
    return "\n".join(lines)


# How loud each unit outcome is in the journal.
_QUIET = {"restored", "restarted", "rerun"}


def announce(rep: dict[str, Any]) -> None:
    """The journal's entries for a finished upgrade REP: one per unit, one for the whole upgrade."""
    gen = rep.get("generation")
    outcome = rep.get("outcome") or "finished"
    kept = sum(u["outcome"] == "restored" for u in rep["units"])
    text = f"Upgrade {gen} ({rep['kernel']['from']} -> {rep['kernel']['to']}) "
    if rep.get("reason"):
        text += f"did not come back ({outcome}): {rep['reason']}"
    else:
        text += f"{outcome}: {kept} of {len(rep['units'])} unit(s) restored"
    journal.event(
        journal.UPGRADE,
        text,
        journal.INFO if outcome == "finished" else journal.WARNING,
        generation=gen,
        kernel_from=rep["kernel"]["from"],
        kernel_to=rep["kernel"]["to"],
        outcome=outcome,
        reason=rep.get("reason"),
        units_restored=kept,
        units=len(rep["units"]),
        extra=journal.seconds(rep.get("seconds") or {}),
    )
    for u in rep["units"]:
        outcome = u["outcome"]
        if outcome == "restored":
            text = f"{u['unit']} restored by upgrade {gen} (MainPID {u.get('main_pid_after')})"
        else:
            text = f"{u['unit']} {outcome} after upgrade {gen}: {u.get('reason') or 'no reason recorded'}"
        journal.event(
            journal.UNIT_OUTCOME,
            text,
            journal.INFO
            if outcome in _QUIET
            else journal.ERR
            if outcome == "start-failed"
            else journal.WARNING,
            unit=u["unit"],
            generation=gen,
            outcome=outcome,
            reason=u.get("reason"),
            main_pid_before=u.get("main_pid_before"),
            main_pid_after=u.get("main_pid_after"),
            extra=journal.seconds(u.get("seconds") or {}),
        )
