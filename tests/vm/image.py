"""Build the Debian bookworm guest image the VM tests boot.

Layers, so that a code change does not rebuild the world:

* the *base* root tree (debootstrap + both kernels + criu + kexec-tools + the
  Python libraries) is cached under ``~/.cache/seamless-systemd/base-KEY``,
  KEY being a hash of everything that goes into it;
* CRIU 4.1.1 (Debian 13's), built once from its release tarball in a copy of
  the base tree and cached under ``criu-4.1.1-KEY`` (Debian 12's 3.17 cannot
  keep ``NoNewPrivileges=``);
* the *prepared* tree, one per release and state of this checkout: a copy
  of the base tree with this project's Debian package (built from
  ``packaging/``) and the guest test files installed and the initramfs
  images regenerated (some 25 s), shared by every test image built from the
  same checkout (``build/vm/prepared-SUITE``, KEY: a hash of the checkout's
  files);
* the *test* image is made for every run: a copy of the prepared tree, the
  scenario's units and configuration (tests/vm/guest/install.sh), then
  packed into a raw ext4 image with ``mkfs.ext4 -d`` (no loop device needed).

Run as root (debootstrap and chroot need it). ``python3 -m tests.vm.image``
builds the image and prints its paths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SEAMLESS_CACHE", Path.home() / ".cache" / "seamless-systemd"))
# What this process built into the cache, and in how many seconds (the VM tests' time table says so).
CACHE_BUILDS: list[tuple[str, float]] = []
BUILD = Path(os.environ.get("SEAMLESS_BUILD", REPO / "build"))

MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
SUITE = "bookworm"
KERNEL_A = "6.1.0-47-cloud-amd64"
KERNEL_B = "6.1.0-53-cloud-amd64"
KERNEL_PACKAGES = ["linux-image-6.1.0-47-cloud-amd64", "linux-image-6.1.0-53-cloud-amd64-unsigned"]
BOOTSTRAP_INCLUDE = [
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "procps",
    "e2fsprogs",
    "initramfs-tools",
    "zstd",
    "ca-certificates",
    "less",
]
# Runtime dependencies of the package (also listed in packaging/debian/control)
# plus what the test scenarios use inside the guest, on every release.
GUEST_COMMON = [
    "criu",
    "kexec-tools",
    "python3",
    "python3-pystemd",
    "python3-yaml",
    "python3-dbus-fast",
    # Not polkitd, though the D-Bus API asks polkit when it runs: polkitd pulls in
    # libpam-systemd, and then each ssh session holds logind's session FIFO
    # (/run/systemd/sessions/N.ref, opened in logind's mount namespace), which
    # CRIU cannot dump ("Can't lookup mount=... for fd=8"): the services
    # scenario's ssh.service with an open session is refused (2026-12-06).
    # Without polkit the API lets root alone change anything.
    "ndctl",
    # RAM on demand: the new boot gives the images' memory back (devdax -> system-ram)
    # and lays the pmem ranges end to end with device-mapper.
    "daxctl",
    "dmsetup",
    "util-linux",
    "netcat-openbsd",
    "iptables",
]
GUEST_PACKAGES = [
    *GUEST_COMMON,
    # podman containers (runc: Debian 12's crun is built without CRIU)
    "podman",
    "runc",
    "conmon",
    "catatonit",
    "containernetworking-plugins",
    # The dracut scenario builds its initramfs images with dracut instead
    # (dracut-core does not replace initramfs-tools).
    "dracut-core",
]
# Debian 12's CRIU is 3.17, which drops NoNewPrivileges= on restore (kept from
# 3.19 on). The guest gets Debian 13's CRIU instead, built here on bookworm from
# the same release tarball (the one trixie's source package names, checked by
# its SHA-256) and installed as /usr/local/sbin/criu, ahead of /usr/sbin in
# every PATH: what a sysadmin on Debian 12 would do. The patches of
# packaging/criu/ are applied to it first (docs/criu-patches.md).
CRIU_VERSION = "4.1.1"
CRIU_PATCHES = REPO / "packaging/criu"
CRIU_TARBALL = f"{MIRROR}/pool/main/c/criu/criu_{CRIU_VERSION}.orig.tar.xz"
CRIU_SHA256 = "f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe"
CRIU_BUILD_DEPS = [
    "patch",
    "gcc",
    "make",
    "pkgconf",
    "libc6-dev",
    "libprotobuf-c-dev",
    "libprotobuf-dev",
    "protobuf-c-compiler",
    "protobuf-compiler",
    "python3-protobuf",
    "libnl-3-dev",
    "libnet1-dev",
    "libcap-dev",
    "libbsd-dev",
    "libgnutls28-dev",
    "libnftables-dev",
    "uuid-dev",
    "xz-utils",
]


@dataclasses.dataclass(frozen=True)
class Release:
    """A Debian release the guest image is made of, with its two kernels (A boots first, B is the upgrade)."""

    suite: str
    kernel_a: str
    kernel_b: str
    kernel_packages: tuple[str, ...]
    guest_packages: tuple[str, ...]
    # Build CRIU 4.1.1 with packaging/criu's patches into /usr/local/sbin
    # (bookworm's own is 3.17); otherwise the release's criu package is used.
    build_criu: bool


BOOKWORM = Release(SUITE, KERNEL_A, KERNEL_B, tuple(KERNEL_PACKAGES), tuple(GUEST_PACKAGES), True)
# Debian 13, the current stable: systemd 257, Python 3.13, its own CRIU 4.1.1
# (without packaging/criu's System V patch: the scenarios run on it don't need it).
TRIXIE = Release(
    "trixie",
    "6.12.107+deb13-cloud-amd64",
    "6.12.117+deb13-cloud-amd64",
    ("linux-image-6.12.107+deb13-cloud-amd64", "linux-image-6.12.117+deb13-cloud-amd64"),
    tuple(GUEST_COMMON),
    False,
)
RELEASES = {r.suite: r for r in (BOOKWORM, TRIXIE)}
IMAGE_SIZE = "4G"
# Bump when the base build steps below change in a way the lists don't show.
BASE_RECIPE_VERSION = "3"


def log(msg: str) -> None:
    print(f"[image] {msg}", file=sys.stderr, flush=True)


# Output of the build commands goes here unless SEAMLESS_VERBOSE is set; a
# failing command's output is shown. build_image points it at its image's own
# directory (build/vm/image-NAME/build.log).
BUILD_LOG = BUILD / "vm" / "build.log"


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """One image build at a time on this machine (say make demo beside make test):
    the base tree, CRIU and the shared apt archives in the cache are built and
    filled by one of them at a time."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "build.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sh(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    cmd = [str(a) for a in args]
    log("$ " + " ".join(cmd))
    if os.environ.get("SEAMLESS_VERBOSE"):
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        return
    BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with BUILD_LOG.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
    if proc.returncode != 0:
        tail = BUILD_LOG.read_text(errors="replace").splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        raise subprocess.CalledProcessError(proc.returncode, cmd)


def base_key(release: Release = BOOKWORM) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                BASE_RECIPE_VERSION,
                release.suite,
                MIRROR,
                SECURITY,
                BOOTSTRAP_INCLUDE,
                list(release.guest_packages),
                list(release.kernel_packages),
            ]
        ).encode()
    )
    return h.hexdigest()[:16]


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """Bind the API file systems into ROOT for the duration of the block."""
    mounted: list[Path] = []
    try:
        for src, kind in (("/proc", "proc"), ("/sys", "sysfs"), ("/dev", None), ("/dev/pts", None)):
            dst = root / src.lstrip("/")
            dst.mkdir(parents=True, exist_ok=True)
            if kind:
                sh("mount", "-t", kind, kind, dst)
            else:
                sh("mount", "--bind", src, dst)
            mounted.append(dst)
        yield
    finally:
        for dst in reversed(mounted):
            subprocess.run(["umount", "-l", str(dst)], check=False)


@contextlib.contextmanager
def bind_mount(src: Path, dst: Path) -> Iterator[None]:
    dst.mkdir(parents=True, exist_ok=True)
    sh("mount", "--bind", src, dst)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(dst)], check=False)


def in_chroot(root: Path, *args: str) -> None:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LC_ALL": "C.UTF-8",
        "HOME": "/root",
    }
    sh("chroot", root, *args, env=env)


def build_base(release: Release = BOOKWORM) -> Path:
    """Return the cached base root tree of RELEASE, building it first if needed."""
    key = base_key(release)
    dest = CACHE / f"base-{key}"
    if (dest / ".complete").exists():
        log(f"base tree cached: {dest}")
        return dest
    started = time.monotonic()
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    sh(
        "debootstrap",
        "--variant=minbase",
        "--include=" + ",".join(BOOTSTRAP_INCLUDE),
        release.suite,
        tmp,
        MIRROR,
    )
    root = tmp / "rootfs"
    # debootstrap wrote into tmp itself; keep the tree one level down so the
    # completion marker lives outside it.
    root.mkdir()
    for entry in list(tmp.iterdir()):
        if entry.name != "rootfs":
            entry.rename(root / entry.name)
    (root / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {release.suite} main\n"
        f"deb {MIRROR} {release.suite}-updates main\n"
        f"deb {SECURITY} {release.suite}-security main\n"
    )
    # Debian ships LOAD_KEXEC=true; keep it, the product must cope with it.
    with chroot_mounts(root):
        in_chroot(root, "apt-get", "update", "-q")
        in_chroot(
            root,
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            *release.kernel_packages,
            *release.guest_packages,
        )
        in_chroot(root, "apt-get", "clean")
    configure_base(root)
    (tmp / ".complete").write_text(key + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    log(f"base tree built: {dest}")
    CACHE_BUILDS.append((f"the Debian {release.suite} base tree", time.monotonic() - started))
    return dest


def configure_base(root: Path) -> None:
    (root / "etc/hostname").write_text("seamless-guest\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 seamless-guest\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    # Root without a password on the serial console, for debugging by hand.
    shadow = root / "etc/shadow"
    shadow.write_text(shadow.read_text().replace("root:*:", "root::", 1))
    # A quiet, fast boot: nothing in the guest should wait for a network.
    for unit in (
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
        "man-db.timer",
    ):
        link = root / "etc/systemd/system" / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to("/dev/null")


def fetch(url: str, sha256: str) -> Path:
    """URL's file, downloaded once into the cache and checked against SHA256."""
    dest = CACHE / "downloads" / f"{sha256[:16]}-{url.rsplit('/', 1)[-1]}"
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"download {url}")
    with urllib.request.urlopen(url, timeout=120) as resp:
        data = resp.read()
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise SystemExit(f"{url}: SHA-256 is {got}, expected {sha256}; refusing to build with it")
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    tmp.rename(dest)
    return dest


def build_criu(base: Path) -> Path:
    """The CRIU binary for the guest, built in a throw-away copy of the base tree; cached."""
    patches = sorted(CRIU_PATCHES.glob("*.patch"))
    ident = [base.parent.name, CRIU_SHA256, CRIU_BUILD_DEPS, [(p.name, p.read_text()) for p in patches]]
    key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()
    dest = CACHE / f"criu-{CRIU_VERSION}-{key[:16]}"
    if (dest / "criu").exists():
        log(f"CRIU {CRIU_VERSION} cached: {dest}")
        return dest / "criu"
    started = time.monotonic()
    tarball = fetch(CRIU_TARBALL, CRIU_SHA256)
    work = CACHE / f"criu-build-{key[:16]}"
    if work.exists():
        shutil.rmtree(work)
    sh("cp", "-a", "--reflink=auto", base, work)
    try:
        shutil.copy2(tarball, work / "tmp/criu.tar.xz")
        with chroot_mounts(work):
            in_chroot(work, "apt-get", "update", "-q")
            in_chroot(work, "apt-get", "install", "-y", "-q", "--no-install-recommends", *CRIU_BUILD_DEPS)
            in_chroot(work, "tar", "-C", "/tmp", "-xJf", "/tmp/criu.tar.xz")
            for patch in patches:
                shutil.copy2(patch, work / "tmp" / patch.name)
                in_chroot(work, "patch", "-d", f"/tmp/criu-{CRIU_VERSION}", "-p1", "-i", f"/tmp/{patch.name}")
            in_chroot(work, "make", "-C", f"/tmp/criu-{CRIU_VERSION}", f"-j{os.cpu_count() or 1}", "criu")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / f"tmp/criu-{CRIU_VERSION}/criu/criu", dest / "criu.tmp")
        (dest / "criu.tmp").rename(dest / "criu")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"CRIU {CRIU_VERSION} built: {dest}")
    CACHE_BUILDS.append((f"CRIU {CRIU_VERSION}", time.monotonic() - started))
    return dest / "criu"


@dataclasses.dataclass(frozen=True)
class Image:
    disk: Path
    kernel_a: Path
    initrd_a: Path
    kernel_b: Path
    initrd_b: Path
    release: Release = BOOKWORM
    # The root tree the disk was made of (the host side reads files from it, e.g. an ssh key).
    root: Path | None = None


def checkout_files() -> list[str]:
    """The checkout's files, sorted (tracked, and new ones git does not ignore): the package's sources."""
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout
    return sorted(n for n in files.decode().split("\0") if n and (REPO / n).is_file())


def build_deb(out: Path) -> Path:
    """Build this project's Debian package from packaging/ and return its path."""
    src = out / "src"
    if src.exists():
        shutil.rmtree(src)
    for name in checkout_files():
        p = REPO / name
        d = src / name
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, d)
    shutil.copytree(REPO / "packaging/debian", src / "debian")
    for old in out.glob("seamless-systemd_*"):
        old.unlink()
    sh("dpkg-buildpackage", "-us", "-uc", "-b", cwd=src)
    debs = sorted(out.glob("seamless-systemd_*_all.deb"))
    if not debs:
        raise SystemExit("dpkg-buildpackage produced no seamless-systemd_*_all.deb")
    return debs[-1]


# The setup scenario's guest boots the way a server does: firmware (SeaBIOS),
# GRUB from the disk's first MiB, GRUB's grub.cfg on the root partition.
GRUB_PACKAGES = ["grub-pc"]
PART_START = 1 << 20  # the root partition starts at 1 MiB; GRUB's core.img sits before it
GRUB_DEFAULTS = f"""\
GRUB_DEFAULT="Debian GNU/Linux, with Linux {KERNEL_A}"
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0 panic=-1"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_SUBMENU=y
GRUB_DISABLE_RECOVERY=true
GRUB_DISABLE_OS_PROBER=true
"""


def install_grub(root: Path) -> None:
    """Debian's GRUB for BIOS in ROOT, configured as a server's: no menu, serial console, kernel A.

    grub-install and update-grub need the disk they boot from, which a chroot
    does not have: the boot sectors are written by grub_disk, and grub.cfg
    for the first boot by hand here. The guest's own update-grub (run by
    'seamless-upgrade setup') writes the real one.
    """
    for q in ("grub-pc/install_devices multiselect", "grub-pc/install_devices_empty boolean true"):
        sh("sh", "-c", f"echo 'grub-pc {q}' | chroot {root} debconf-set-selections")
    in_chroot(root, "apt-get", "update", "-q")
    in_chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *GRUB_PACKAGES)
    (root / "etc/default/grub").write_text(GRUB_DEFAULTS)
    (root / "etc/fstab").write_text("/dev/vda1 / ext4 rw,errors=remount-ro 0 1\n")
    mods = root / "boot/grub/i386-pc"
    mods.mkdir(parents=True, exist_ok=True)
    for f in (root / "usr/lib/grub/i386-pc").iterdir():
        if f.suffix in (".mod", ".lst"):
            shutil.copy2(f, mods / f.name)
    (root / "boot/grub/grub.cfg").write_text(
        "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n"
        "insmod part_msdos\ninsmod ext2\nset root=(hd0,msdos1)\n"
        f"linux /boot/vmlinuz-{KERNEL_A} root=/dev/vda1 ro console=ttyS0 panic=-1\n"
        f"initrd /boot/initrd.img-{KERNEL_A}\nboot\n"
    )
    in_chroot(
        root,
        "grub-mkimage",
        "-O",
        "i386-pc",
        "-o",
        "/tmp/core.img",
        "-p",
        "(hd0,msdos1)/boot/grub",
        "biosdisk",
        "part_msdos",
        "ext2",
    )


def grub_disk(root: Path, disk: Path) -> None:
    """A disk as a BIOS boots it: an MBR with GRUB's boot.img and one partition, core.img after it.

    core.img at sector 1 and its blocklist's default (load from sector 2 on)
    is the layout grub-install embeds, so neither image needs patching.
    """
    sh("mkfs.ext4", "-q", "-F", "-L", "root", "-E", f"offset={PART_START}", "-d", root, disk, IMAGE_SIZE)
    core = (root / "tmp/core.img").read_bytes()
    if len(core) > PART_START - 512:
        raise SystemExit(f"GRUB's core.img is {len(core)} bytes: it does not fit before the partition")
    mbr = bytearray((root / "usr/lib/grub/i386-pc/boot.img").read_bytes()[:440]).ljust(512, b"\0")
    total = disk.stat().st_size // 512
    first = PART_START // 512
    # Partition 1: active, Linux, LBA FIRST..end (CHS fields unused: all ones).
    entry = bytes([0x80, 0xFE, 0xFF, 0xFF, 0x83, 0xFE, 0xFF, 0xFF]) + (first).to_bytes(4, "little")
    mbr[0x1BE:0x1CE] = entry + (total - first).to_bytes(4, "little")
    mbr[0x1FE:0x200] = b"\x55\xaa"
    with disk.open("r+b") as f:
        f.write(mbr)
        f.write(core)


def build_image(
    scenario: str = "full",
    workloads: Sequence[Path] = (),
    lab_script: Path | None = None,
    extra_files: dict[str, str] | None = None,
    release: Release = BOOKWORM,
) -> Image:
    """The test image for SCENARIO (full, demo, dracut, workload); WORKLOADS: users' directories.

    dracut is the demo scenario with initramfs images made by dracut.

    A workload directory may hold unit files (installed into /etc/systemd/system
    and enabled), config.yaml (a seamless config fragment), setup.sh (run in the
    image at build time, e.g. to install Debian packages), before.sh and
    after.sh (run in the guest before the upgrade and after the restore).
    Several workloads share one image and one upgrade; each lands in
    /usr/local/lib/seamless-workloads/NAME (NAME: the directory's name).
    """
    global BUILD_LOG
    out = BUILD / "vm" / image_name(scenario, workloads, lab_script, extra_files, release)
    out.mkdir(parents=True, exist_ok=True)
    BUILD_LOG = out / "build.log"
    BUILD_LOG.unlink(missing_ok=True)
    with build_lock():
        return _build_image(out, scenario, workloads, lab_script, extra_files, release)


def image_name(
    scenario: str,
    workloads: Sequence[Path],
    lab_script: Path | None,
    extra_files: dict[str, str] | None,
    release: Release,
) -> str:
    """The directory name of an image: each test module's own, so no run overwrites another's disk."""
    name = f"image-{scenario}"
    if release is not BOOKWORM:
        name += f"-{release.suite}"
    what = [[str(w) for w in workloads], str(lab_script or ""), sorted(extra_files or {})]
    if any(what):
        name += "-" + hashlib.sha256(json.dumps(what).encode()).hexdigest()[:8]
    return name


DEB_NAME = "seamless-systemd.deb"


def checkout_key(release: Release) -> str:
    """A hash of the checkout's files (what the package and the guest's test files are made from)."""
    h = hashlib.sha256(release.suite.encode())
    for name in checkout_files():
        h.update(name.encode() + b"\0" + (REPO / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_prepared(release: Release) -> Path:
    """The base tree with this checkout's package, the guest's test files and the initramfs images.

    Made once per checkout state and release, shared by the test images (each
    copies it and adds its scenario): a make test builds some ten images.
    """
    out = BUILD / "vm" / f"prepared-{release.suite}"
    key = checkout_key(release)
    stamp = out / "key"
    if stamp.exists() and stamp.read_text().strip() == key and (out / "rootfs").is_dir():
        log(f"prepared tree {out} is current ({key})")
        return out
    stamp.unlink(missing_ok=True)
    base = build_base(release) / "rootfs"
    criu = build_criu(base) if release.build_criu else None
    deb = build_deb(out)
    shutil.copy2(deb, out / DEB_NAME)
    root = out / "rootfs"
    if root.exists():
        shutil.rmtree(root)
    sh("cp", "-a", "--reflink=auto", base, root)
    shutil.copy2(deb, root / "tmp" / DEB_NAME)
    if criu is not None:
        shutil.copy2(criu, root / "usr/local/sbin/criu")
    guest = REPO / "tests/vm/guest"
    sh("cp", "-a", f"{guest}/.", root / "usr/local/lib/seamless-test")
    with chroot_mounts(root):
        in_chroot(root, "dpkg", "-i", f"/tmp/{DEB_NAME}")
        in_chroot(root, "update-initramfs", "-u", "-k", "all")
    (root / "tmp" / DEB_NAME).unlink()
    stamp.write_text(key + "\n")
    return out


def _build_image(
    out: Path,
    scenario: str,
    workloads: Sequence[Path],
    lab_script: Path | None,
    extra_files: dict[str, str] | None,
    release: Release,
) -> Image:
    prepared = build_prepared(release)
    root = out / "rootfs"
    if root.exists():
        shutil.rmtree(root)
    sh("cp", "-a", "--reflink=auto", prepared / "rootfs", root)
    if lab_script is not None:
        shutil.copy(lab_script, root / "usr/local/lib/seamless-test/lab.sh")
    names = [w.name for w in workloads]
    if len(set(names)) != len(names):
        raise SystemExit(f"WORKLOAD: two directories with the same name in {names}")
    for workload in workloads:
        if not workload.is_dir():
            raise SystemExit(f"WORKLOAD={workload}: not a directory")
        dest = root / "usr/local/lib/seamless-workloads" / workload.name
        dest.mkdir(parents=True)
        sh("cp", "-a", f"{workload}/.", dest)
    (root / "etc/seamless-test").mkdir(exist_ok=True)
    (root / "etc/seamless-test/scenario").write_text(scenario + "\n")
    # EXTRA_FILES: path in the image -> contents (e.g. the benchmark's plan).
    for rel, text in (extra_files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    # The workloads' setup.sh install Debian packages: keep what they download.
    archives = CACHE / "apt-archives"
    archives.mkdir(parents=True, exist_ok=True)
    with chroot_mounts(root), bind_mount(archives, root / "var/cache/apt/archives"):
        # SEAMLESS_QEMU_TBFLUSH=shutdown: the image waits for the harness's flush before a kexec.
        flush = os.environ.get("SEAMLESS_QEMU_TBFLUSH", "")
        in_chroot(
            root, "env", f"SEAMLESS_QEMU_TBFLUSH={flush}", "sh", "/usr/local/lib/seamless-test/install.sh"
        )
        if scenario == "dracut":
            for ver in (release.kernel_a, release.kernel_b):
                in_chroot(root, "dracut", "--force", "--no-hostonly", f"/boot/initrd.img-{ver}", ver)
        elif workloads:
            # The workloads' packages may bring initramfs hooks of their own.
            in_chroot(root, "update-initramfs", "-u", "-k", "all")
        if scenario == "setup":
            install_grub(root)
    if scenario == "setup":
        # The setup scenario installs it again, removes and purges it.
        (root / "var/cache/seamless-test").mkdir(parents=True, exist_ok=True)
        shutil.copy2(prepared / DEB_NAME, root / "var/cache/seamless-test/seamless-systemd.deb")
    disk = out / "disk.raw"
    if disk.exists():
        disk.unlink()
    if scenario == "setup":
        grub_disk(root, disk)
    else:
        sh("mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, disk, IMAGE_SIZE)
    boot = out / "boot"
    boot.mkdir(exist_ok=True)
    for ver, tag in ((release.kernel_a, "a"), (release.kernel_b, "b")):
        shutil.copy2(root / f"boot/vmlinuz-{ver}", boot / f"vmlinuz-{tag}")
        shutil.copy2(root / f"boot/initrd.img-{ver}", boot / f"initrd-{tag}")
    return Image(
        disk, boot / "vmlinuz-a", boot / "initrd-a", boot / "vmlinuz-b", boot / "initrd-b", release, root
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["base"]:
        print(build_base(RELEASES[sys.argv[2]] if len(sys.argv) > 2 else BOOKWORM))
    else:
        print(build_image())
