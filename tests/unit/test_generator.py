"""Golden-directory tests of seamless-generator, run as a program the way systemd runs it.

Each case builds a root tree (images file system, /run, /etc), runs the
generator with SYSTEMD_PROC_CMDLINE, and compares the output directory file by
file with tests/golden/generator/CASE. SEAMLESS_UPDATE_GOLDEN=1 rewrites them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests/golden/generator"
GEN = "20261126T010203-abcdef"
BASE = (
    "root=/dev/vda memmap=512M!1536M seamless.pmem=/dev/pmem0 seamless.mount=/run/seamless/pmem "
    "seamless.pidfloor=12000"
)


def images(root: Path, units: dict[str, bool]) -> None:
    gdir = root / "run/seamless/pmem" / GEN
    gdir.mkdir(parents=True)
    stateless = [u for u in units if "oneshot" in u]
    manifest = {"generation": GEN, "units": list(units), "stateless": stateless}
    (gdir / "manifest.json").write_text(json.dumps(manifest))
    for unit, complete in units.items():
        udir = gdir / "units" / unit
        udir.mkdir(parents=True)
        dump: dict[str, object] = {"syslog_identifier": unit.split(".")[0]}
        if unit.startswith("web"):  # socket-activated on a TCP port
            dump["reuse_port_sockets"] = ["web.socket", "../evil.socket"]
        (udir / "dump.json").write_text(json.dumps(dump))
        if complete:
            (udir / "COMPLETE").write_text("{}")


def run_generator(root: Path, out: Path, cmdline: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_PROC_CMDLINE=cmdline, SEAMLESS_ROOT=str(root), PYTHONPATH=str(REPO))
    out.mkdir()
    return subprocess.run(
        [sys.executable, str(REPO / "generators/seamless-generator"), str(out), str(out), str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


def listing(d: Path) -> dict[str, str]:
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_text()
    return out


def check_golden(case: str, out: Path) -> None:
    expected_dir = GOLDEN / case
    got = listing(out)
    if os.environ.get("SEAMLESS_UPDATE_GOLDEN"):
        expected_dir.mkdir(parents=True, exist_ok=True)
        (expected_dir / "tree.json").write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = json.loads((expected_dir / "tree.json").read_text())
    assert sorted(got) == sorted(expected), "file list differs"
    for name in expected:
        assert got[name] == expected[name], f"{name} differs"


CASES = {
    # name: (units with complete images?, extra cmdline, files to create in the root)
    "restore": (
        {"seamless-demo.service": True, "db.service": True, "broken.service": False, "web.service": True},
        "",
        [],
    ),
    # A Type=oneshot unit has no images and needs no drop-in; it is not waited for either.
    "stateless": ({"seamless-demo.service": True, "setup-oneshot.service": False}, "", []),
    "done": (
        {"seamless-demo.service": True, "db.service": True},
        "",
        ["run/seamless/restore/db.service.done"],
    ),
    "marker-absent": ({"seamless-demo.service": True}, None, []),
    "marker-malformed": ({"seamless-demo.service": True}, "seamless.restore=../../etc", []),
    "switched-off": ({"seamless-demo.service": True}, "seamless=off", []),
    "disabled-file": ({"seamless-demo.service": True}, "", ["etc/seamless/disabled"]),
    "no-manifest": ({}, "", []),
    # RAM on demand, and the images did not come up: finish still runs, to give the RAM back.
    "no-manifest-on-demand": ({}, "seamless.ram=on-demand memmap=128M!0x18000000", []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_generator_golden(case: str, tmp_path: Path) -> None:
    units, extra, files = CASES[case]
    root = tmp_path / "root"
    root.mkdir()
    if units:
        images(root, units)
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x\n")
    if extra is None:
        cmdline = BASE
    elif extra.startswith("seamless.restore="):
        cmdline = f"{BASE} {extra}"
    else:
        cmdline = f"{BASE} seamless.restore={GEN} {extra}".strip()
    proc = run_generator(root, tmp_path / "out", cmdline)
    check_golden(case, tmp_path / "out")
    if case == "restore":
        assert "broken.service: no complete images" in proc.stderr
    if case in ("marker-malformed", "no-manifest", "no-manifest-on-demand", "switched-off", "disabled-file"):
        assert proc.stderr, "a skipped restore must say why"


def test_generator_never_fails(tmp_path: Path) -> None:
    root = tmp_path / "root"
    gdir = root / "run/seamless/pmem" / GEN
    gdir.mkdir(parents=True)
    (gdir / "manifest.json").write_text("{not json")
    proc = run_generator(root, tmp_path / "out", f"{BASE} seamless.restore={GEN}")
    assert proc.returncode == 0
    assert "no readable manifest" in proc.stderr
    # Nothing is restored; the boot check reports the upgrade that did not come back.
    check = "seamless-boot-check.service"
    assert listing(tmp_path / "out") == {
        f"multi-user.target.wants/{check}": f"-> /lib/systemd/system/{check}"
    }


@pytest.mark.parametrize(("value", "expected"), [(900, "900s"), (0, "600s"), ("900", "600s"), (True, "600s")])
def test_restore_drop_in_has_the_manifests_restore_timeout(
    tmp_path: Path, value: object, expected: str
) -> None:
    """The restore's limit is restore_timeout from arm time, not the unit's 90 s for a cold start."""
    root = tmp_path / "root"
    images(root, {"db.service": True})
    mpath = root / "run/seamless/pmem" / GEN / "manifest.json"
    mpath.write_text(json.dumps({**json.loads(mpath.read_text()), "restore_timeout": value}))
    run_generator(root, tmp_path / "out", f"{BASE} seamless.restore={GEN}")
    # The images' check before the restores has the same limit: a boot never waits on it for ever.
    for conf in ("db.service.d/50-seamless-restore.conf", "seamless-restore.service.d/50-timeout.conf"):
        text = (tmp_path / "out" / conf).read_text()
        assert [ln for ln in text.splitlines() if ln.startswith("TimeoutStartSec=")] == [
            f"TimeoutStartSec={expected}"
        ], conf


@pytest.mark.parametrize("early", [False, True])
def test_the_page_cache_is_read_back_after_the_restores_or_beside_them(tmp_path: Path, early: bool) -> None:
    """warm.page_cache_early drops the ordering of seamless-warm.service after the restored units."""
    root = tmp_path / "root"
    images(root, {"db.service": True, "web.service": True})
    mpath = root / "run/seamless/pmem" / GEN / "manifest.json"
    manifest = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**manifest, "warm": {"page_cache": True, "page_cache_early": early}}))
    run_generator(root, tmp_path / "out", f"{BASE} seamless.restore={GEN}")
    text = (tmp_path / "out/seamless-warm.service.d/50-units.conf").read_text()
    after = sorted(ln for ln in text.splitlines() if ln.startswith("After="))
    assert after == ([] if early else ["After=db.service", "After=web.service"])
    assert (tmp_path / "out/sysinit.target.wants/seamless-warm.service").is_symlink()
