"""restore-unit's checks that need no VM: the dynamic user a restored tree runs as."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from seamless_systemd import procs, restore, state, systemd
from seamless_systemd.errors import RestoreError
from seamless_systemd.systemd import UnitInfo


def with_uid(uid: int | None) -> UnitInfo:
    return UnitInfo(
        "dyn.service", "loaded", "activating", "start", 0, "/x", "forking", None, "", "", "", dynamic_uid=uid
    )


def test_same_dynamic_uid_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd, "unit_info", lambda name: with_uid(63288))
    restore._same_dynamic_user("dyn.service", 63288)


def test_other_dynamic_uid_refuses_the_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd, "unit_info", lambda name: with_uid(61200))
    with pytest.raises(RestoreError, match=r"UID 61200 in this boot.*run as UID 63288"):
        restore._same_dynamic_user("dyn.service", 63288)


def test_unit_without_dynamic_user_is_not_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(name: str) -> UnitInfo:
        raise AssertionError("systemd asked although the unit had no dynamic user")

    monkeypatch.setattr(systemd, "unit_info", fail)
    restore._same_dynamic_user("plain.service", None)


@pytest.mark.parametrize(
    ("dynamic", "uid", "expected"),
    [(True, 63288, 63288), (True, systemd.UID_UNSET, None), (False, 0, None)],
)
def test_dynamic_uid_read_from_the_service(dynamic: bool, uid: int, expected: int | None) -> None:
    unit = types.SimpleNamespace(Service=types.SimpleNamespace(DynamicUser=dynamic, UID=uid))
    assert systemd._dynamic_uid(unit) == expected


def test_restore_root_follows_the_dumped_root_flags() -> None:
    from seamless_systemd import sandbox

    # ProtectSystem=strict (or ReadOnlyPaths=/): read-only root; PrivateTmp= alone: writable.
    assert not sandbox.root_writable([["/", ["ro", "relatime"]], ["/var/lib/x", ["rw"]]])
    assert sandbox.root_writable([["/", ["rw", "relatime"]], ["/usr", ["ro"]]])
    assert not sandbox.root_writable([])  # nothing known: the safe one


def test_remount_puts_flags_back_in_the_tree_namespace(tmp_path: Path) -> None:
    """What criu-action does at pre-resume, on a real second mount namespace of this host."""
    import shutil
    import subprocess
    import sys
    import time

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1)")
    point = tmp_path / "inaccessible"
    point.mkdir()
    ns = subprocess.Popen(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount -t tmpfs seamless-test {point} && echo ready && exec sleep 60",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert ns.stdout is not None and ns.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        env = {
            **os.environ,
            "CRTOOLS_INIT_PID": str(ns.pid),
            "SEAMLESS_REMOUNT": f"{point}\tro,nosuid,nodev,noexec",
        }
        p = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from seamless_systemd import sandbox; sys.exit(sandbox.remount_main())",
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        assert p.returncode == 0 and p.stderr == "", p.stderr
        (mine,) = [m for m in procs.mounts(ns.pid) if m.point == str(point)]
        assert {"ro", "nosuid", "nodev", "noexec"} <= mine.options
        assert not any(m.point == str(point) for m in procs.mounts("self"))  # only in its namespace
    finally:
        ns.kill()
        ns.wait()


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        ("ro seamless.restore=20261126T010203-abcdef", ("/run/seamless/pmem", "20261126T010203-abcdef")),
        ("seamless.restore=G1 seamless.mount=/run/x", ("/run/x", "G1")),
        ("seamless.restore=../../etc", None),
        ("seamless.restore=G1/..", None),
        ("seamless.restore=G1 seamless.mount=/etc", None),
        ("seamless.restore=G1 seamless.mount=/run/../etc", None),
        ("seamless.restore=", None),
        ("quiet", None),
    ],
)
def test_restore_takes_only_a_well_formed_generation(
    tmp_path: Path, cmdline: str, expected: tuple[str, str] | None
) -> None:
    """restore-prepare and restore-unit read the same words the generator checks, and check them too."""
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    gen = restore.current_generation(tmp_path / "cmdline")
    assert (None if gen is None else (str(gen.mount), gen.id)) == expected


def test_the_host_cgroup2_options_are_those_before_any_restore(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A restore that starts while another's CRIU cleared them must not take those for the host's."""
    monkeypatch.setattr(restore, "CGROUP2_OPTIONS", tmp_path / "cgroup2-options")
    monkeypatch.setattr(restore.sandbox, "cgroup2_options", lambda: "rw")  # as another restore left them
    assert restore.host_cgroup2_options() == "rw"  # no record: what there is now
    (tmp_path / "cgroup2-options").write_text("rw,nsdelegate,memory_recursiveprot\n")
    assert restore.host_cgroup2_options() == "rw,nsdelegate,memory_recursiveprot"


def test_a_full_var_never_fails_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "var-is-a-file"
    blocked.write_text("")
    monkeypatch.setattr(state, "REPORT_DIR", blocked / "reports")
    assert restore.keep_report("g.json", {"generation": "g"}, last=True) is False
    monkeypatch.setattr(state, "REPORT_DIR", tmp_path / "reports")
    assert restore.keep_report("g.json", {"generation": "g"}, last=True) is True
    assert json.loads((tmp_path / "reports/last.json").read_text()) == {"generation": "g"}


def test_a_failed_restore_kills_what_it_left_in_the_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    left = subprocess.Popen(["sleep", "60"])
    me = os.getpid()
    monkeypatch.setattr(restore, "own_cgroup", lambda: "/system.slice/x.slice/demo@1.service")
    monkeypatch.setattr(procs, "cgroup_pids", lambda g: [me] + ([left.pid] if left.poll() is None else []))
    try:
        assert restore.stop_half_restored("demo@1.service", wait=5) == [left.pid]
        assert left.wait(timeout=5) == -signal.SIGKILL
    finally:
        left.kill()
        left.wait()


def test_killing_leftovers_only_inside_the_unit_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # Run anywhere else (a shell, a test runner), its cgroup holds other things: never touched.
    monkeypatch.setattr(restore, "own_cgroup", lambda: "/user.slice/user-0.slice/session-3.scope")
    monkeypatch.setattr(procs, "cgroup_pids", lambda g: pytest.fail("looked at the cgroup"))
    assert restore.stop_half_restored("demo@1.service") == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_mounts_a_killed_criu_left_do_not_block_removal(tmp_path: Path) -> None:
    """A cgroup yard (or any mount) left in a generation's images: detached, then the generation goes."""
    child = f"""
import os, subprocess, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from seamless_systemd import procs, upgrade
mount = Path({str(tmp_path)!r})
gen = mount / "20261206T000000-abcdef"
yard = gen / "units/a.service/images/.criu.cgyard.x1Y2z3"
yard.mkdir(parents=True)
(gen / "manifest.json").write_text("{{}}")
subprocess.run(["mount", "-t", "tmpfs", "yard", str(yard)], check=True)
(yard / "unified").mkdir()
subprocess.run(["mount", "-t", "cgroup2", "none", str(yard / "unified")], check=True)
assert (yard / "unified/cgroup.procs").exists()
upgrade._clean_old_generations(mount)
assert not gen.exists(), list(gen.rglob("*"))
assert not [m for m in procs.mounts("self") if m.point.startswith(str(mount) + "/")]
print("ok")
"""
    p = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", child],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr
