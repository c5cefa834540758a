"""pmem.mode: disk — where the images go, what plan refuses, and that they leave the disk."""

import dataclasses
import os
from pathlib import Path

import pytest

from seamless_systemd import diskimages, kernels
from seamless_systemd.config import DISK_IMAGES, Config, PmemMode
from seamless_systemd.upgrade import decide
from tests.unit.test_plan import MiB, facts

DISK = Config(units=("app.service",), pmem_mode=PmemMode.DISK)
ROOMY = diskimages.DiskFacts(DISK_IMAGES, same_fs_as_root=True, free=10_000 * MiB)
NO_PMEM = {"pmem_is_block_device": False, "pmem_size": None, "pmem_capacity": None, "pmem_legacy_ranges": ()}


def test_disk_mode_needs_no_pmem_and_no_memmap() -> None:
    plan = decide(DISK, facts(disk=ROOMY, cmdline_words=("root=/dev/vda", "quiet"), **NO_PMEM))
    assert plan.problems == ()
    assert plan.mode == "disk"
    assert plan.pmem_device == DISK_IMAGES and plan.pmem_capacity == 10_000 * MiB
    assert "memmap=" not in plan.cmdline


def test_disk_mode_does_not_ask_the_new_kernel_for_pmem_drivers() -> None:
    only_criu = {"CONFIG_CHECKPOINT_RESTORE": "y"}
    assert decide(DISK, facts(disk=ROOMY, target_config=only_criu, **NO_PMEM)).problems == ()
    # The same kernel cannot carry images in RAM.
    reserved = decide(
        Config(units=("app.service",), pmem_mode=PmemMode.RESERVED), facts(target_config=only_criu)
    )
    assert any("CONFIG_BLK_DEV_PMEM" in p for p in reserved.problems)


def test_disk_mode_refusals_say_what_to_do() -> None:
    full = dataclasses.replace(ROOMY, free=30 * MiB)
    (p,) = decide(DISK, facts(disk=full, **NO_PMEM)).problems
    assert "root file system has 30 MiB free" in p and "free some space" in p
    apart = dataclasses.replace(ROOMY, same_fs_as_root=False)
    (p,) = decide(DISK, facts(disk=apart, **NO_PMEM)).problems
    assert "another file system than /" in p and "initramfs" in p


def test_facts_of_a_real_directory(tmp_path: Path) -> None:
    # A directory that does not exist yet is judged by the nearest one that does.
    f = diskimages.facts(tmp_path / "a" / "b", root=tmp_path)
    assert f.same_fs_as_root
    st = os.statvfs(tmp_path)
    assert abs(f.free - st.f_bavail * st.f_frsize) < 16 * MiB
    # Generations already there are removed at arm time: their room counts as free.
    (tmp_path / "a" / "b" / "gen1").mkdir(parents=True)
    (tmp_path / "a" / "b" / "gen1" / "pages.img").write_bytes(os.urandom(4 * MiB))
    grown = diskimages.facts(tmp_path / "a" / "b", root=tmp_path)
    assert grown.free >= f.free - MiB  # the 4 MiB written is counted back


def test_remove_deletes_one_generation_only(tmp_path: Path) -> None:
    for g in ("20261206T1-a", "20261206T2-b"):
        (tmp_path / g / "units").mkdir(parents=True)
    assert diskimages.remove("20261206T1-a", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20261206T2-b"]
    assert not diskimages.remove("20261206T1-a", tmp_path)
    assert not diskimages.remove("..", tmp_path / "20261206T2-b")
    assert (tmp_path / "20261206T2-b").is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_prepare_binds_the_directory_root_only(tmp_path: Path) -> None:
    images, mnt = tmp_path / "images", tmp_path / "mnt"
    try:
        diskimages.prepare(mnt, images)
        assert diskimages.is_mounted(mnt)
        assert oct(images.stat().st_mode & 0o777) == oct(0o700)
        (mnt / "x").write_text("seen through the bind")
        assert (images / "x").read_text() == "seen through the bind"
        diskimages.prepare(mnt, images)  # again: already there
    finally:
        os.system(f"umount {mnt} 2>/dev/null")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_prepare_refuses_a_mount_point_holding_something_else(tmp_path: Path) -> None:
    other, mnt = tmp_path / "other", tmp_path / "mnt"
    other.mkdir()
    mnt.mkdir()
    assert os.system(f"mount --bind {other} {mnt}") == 0
    try:
        with pytest.raises(diskimages.SeamlessError, match="a mount of something else"):
            diskimages.prepare(mnt, tmp_path / "images")
    finally:
        os.system(f"umount {mnt}")


def test_restore_params_name_the_directory() -> None:
    from seamless_systemd.upgrade import _restore_params

    p = _restore_params(DISK, PmemMode.DISK, "G", 20000)
    assert p[kernels.DEVICE_PARAM] == str(DISK_IMAGES)
    assert p[kernels.MOUNT_PARAM] == "/run/seamless/pmem"


def test_plan_says_where_the_images_go(capsys: pytest.CaptureFixture[str]) -> None:
    from seamless_systemd import cli

    plan = decide(DISK, facts(disk=ROOMY, **NO_PMEM))
    cli._print_plan(plan)
    out = capsys.readouterr().out
    assert "Images:  on disk (pmem.mode: disk): /var/lib/seamless/images, 10000 MiB free" in out
    assert "PMEM:" not in out and "memmap=" not in out
