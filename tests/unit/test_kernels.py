from pathlib import Path

import pytest

from seamless_systemd import kernels
from seamless_systemd.errors import SeamlessError


def make_kernel(boot: Path, mods: Path, version: str, initrd: bool = True) -> None:
    (boot / f"vmlinuz-{version}").write_text("k")
    if initrd:
        (boot / f"initrd.img-{version}").write_text("i")
    (mods / version).mkdir(parents=True)


def test_newest_is_chosen_numerically(tmp_path: Path) -> None:
    boot, mods = tmp_path / "boot", tmp_path / "mods"
    boot.mkdir()
    for v in ("6.1.0-9-cloud-amd64", "6.1.0-53-cloud-amd64", "6.1.0-47-cloud-amd64"):
        make_kernel(boot, mods, v)
    (boot / "vmlinuz-6.9.0-orphan").write_text("no modules")
    found = kernels.installed(boot, mods)
    assert [k.version for k in found] == [
        "6.1.0-9-cloud-amd64",
        "6.1.0-47-cloud-amd64",
        "6.1.0-53-cloud-amd64",
    ]
    assert kernels.choose(found, None).version == "6.1.0-53-cloud-amd64"
    assert kernels.choose(found, "6.1.0-47-cloud-amd64").initrd == boot / "initrd.img-6.1.0-47-cloud-amd64"
    with pytest.raises(SeamlessError, match="not installed"):
        kernels.choose(found, "5.10.0-1-amd64")
    with pytest.raises(SeamlessError, match="no installed kernel"):
        kernels.choose([], None)


def test_new_cmdline_keeps_memmap_and_replaces_our_params() -> None:
    cur = 'BOOT_IMAGE=/vmlinuz root=/dev/vda ro memmap=512M!1536M quiet seamless.restore=old x="a b"'
    new = kernels.new_cmdline(cur, {"seamless.restore": "G1", "seamless.pidfloor": "5000"})
    assert (
        new == 'root=/dev/vda ro memmap=512M!1536M quiet x="a b" seamless.restore=G1 seamless.pidfloor=5000'
    )


def test_memmap_reservations() -> None:
    words = kernels.split_cmdline("memmap=512M!1536M memmap=4G!0x100000000,64K$0x1000 memmap=bad!x mem=4G")
    assert kernels.memmap_reservations(words) == [
        (1536 << 20, 2048 << 20),
        (1 << 32, (1 << 32) + (4 << 30)),
    ]


def test_the_ram_memmap_word_is_ours_and_goes_last() -> None:
    cur = "root=/dev/vda memmap=64M$0x1000000 quiet"
    memmap = "memmap=6M!0x7a000000,128M!0x80000000"
    new = kernels.new_cmdline(cur, {"seamless.restore": "G1"}, memmap)
    assert (
        new == f"root=/dev/vda memmap=64M$0x1000000 quiet seamless.restore=G1 seamless.ram=on-demand {memmap}"
    )
    words = kernels.split_cmdline(new)
    assert kernels.ram_ranges(words) == [(0x7A000000, 0x7A600000), (0x80000000, 0x88000000)]
    # The next upgrade from that boot names neither our ranges nor our words again.
    assert kernels.new_cmdline(new, {}) == cur
    assert kernels.without_ours(words) == ["root=/dev/vda", "memmap=64M$0x1000000", "quiet"]
    # A memmap= the admin wrote elsewhere on the line stays theirs.
    assert kernels.ram_ranges(kernels.split_cmdline("memmap=4G!4G seamless.restore=G")) == []


DEBIAN_CLOUD = {
    "CONFIG_CHECKPOINT_RESTORE": "y",
    "CONFIG_LIBNVDIMM": "m",
    "CONFIG_X86_PMEM_LEGACY": "m",
    "CONFIG_BLK_DEV_PMEM": "m",
    "CONFIG_EXT4_FS": "y",
    "CONFIG_BLK_DEV_DM": "m",
    "CONFIG_MEM_SOFT_DIRTY": "y",
}
MODULES = frozenset({"libnvdimm", "nd_e820", "nd_pmem", "dm_mod"})
V = "6.1.0-53-cloud-amd64"


def check(config: dict[str, str] | None = DEBIAN_CLOUD, **kw: object) -> tuple[list[str], list[str]]:
    args: dict[str, object] = {
        "modules": MODULES,
        "initrd_modules": MODULES,
        "on_demand": False,
        "machine": "x86_64",
    }
    args.update(kw)
    return kernels.config_problems(V, config, **args)  # type: ignore[arg-type]


def test_a_debian_cloud_kernel_has_what_the_restore_needs() -> None:
    assert check() == ([], [])
    assert check(on_demand=True) == ([], [])


def test_a_kernel_without_pmem_is_refused_with_the_option_named() -> None:
    problems, _ = check({**DEBIAN_CLOUD, "CONFIG_BLK_DEV_PMEM": "n"})
    assert len(problems) == 1
    assert "CONFIG_BLK_DEV_PMEM" in problems[0] and "/dev/pmemN" in problems[0] and "--kernel" in problems[0]


def test_a_missing_module_or_one_left_out_of_the_initramfs_is_refused() -> None:
    problems, _ = check(modules=MODULES - {"nd_pmem"})
    assert len(problems) == 1 and "nd_pmem" in problems[0] and "reinstall" in problems[0]
    problems, _ = check(initrd_modules=MODULES - {"nd_e820"})
    assert len(problems) == 1 and "update-initramfs -u -k " + V in problems[0]


def test_device_mapper_is_needed_for_ram_on_demand_only() -> None:
    no_dm = {k: v for k, v in DEBIAN_CLOUD.items() if k != "CONFIG_BLK_DEV_DM"}
    assert check(no_dm)[0] == []
    assert "CONFIG_BLK_DEV_DM" in check(no_dm, on_demand=True)[0][0]


def test_no_soft_dirty_is_a_note_and_no_config_cannot_be_judged() -> None:
    problems, notes = check({**DEBIAN_CLOUD, "CONFIG_MEM_SOFT_DIRTY": "n"})
    assert problems == [] and "pre-dump" in notes[0]
    problems, notes = check(None)
    assert problems == [] and "config-" + V in notes[0]


def test_config_and_modules_are_read_from_boot_and_lib_modules(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / f"config-{V}").write_text(
        "# comment\nCONFIG_BLK_DEV_PMEM=m\n# CONFIG_X is not set\n"
    )
    mods = tmp_path / "modules" / V
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text(
        "kernel/drivers/nvdimm/nd_pmem.ko.xz: kernel/drivers/nvdimm/libnvdimm.ko.xz\n"
        "kernel/drivers/md/dm-mod.ko:\n"
    )
    assert kernels.read_config(V, tmp_path / "boot", tmp_path / "modules") == {"CONFIG_BLK_DEV_PMEM": "m"}
    assert kernels.modules_of(V, tmp_path / "modules") == {"nd_pmem", "dm_mod"}
    assert kernels.read_config("9.9", tmp_path / "boot", tmp_path / "modules") is None


def bzimage(path: Path, payload: int, cut: int = 0) -> Path:
    head = bytearray(0x240)
    head[0x1F1] = 3  # setup sectors after the boot sector
    head[0x202:0x206] = b"HdrS"
    head[0x1F4:0x1F8] = (payload // 16).to_bytes(4, "little")
    path.write_bytes(bytes(head) + bytes(4 * 512 + payload - len(head) - cut))
    return path


def test_a_damaged_kernel_image_is_told_before_kexec_tries(tmp_path: Path) -> None:
    good = bzimage(tmp_path / "good", 4096)
    assert kernels.image_problem(good, "x86_64") is None
    short = kernels.image_problem(bzimage(tmp_path / "short", 4096, cut=100), "x86_64")
    assert short is not None and "cut short" in short and "reinstall" in short
    (tmp_path / "junk").write_bytes(b"\0" * 4096)
    junk = kernels.image_problem(tmp_path / "junk", "x86_64")
    assert junk is not None and "no x86 boot header" in junk
    assert kernels.image_problem(tmp_path / "junk", "aarch64") is None
    gone = kernels.image_problem(tmp_path / "gone", "x86_64")
    assert gone is not None and "cannot read" in gone
