"""Bad input never breaks a boot nor restores the wrong thing (issue 10): the parsers, fuzzed.

The generator runs before anything else in a boot and reads what the kernel
command line and the PMEM say; whatever those hold, it must return, write only
drop-ins for units the manifest names and whose images are complete, and
nothing outside its output directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seamless_systemd import config, generator

GEN = "20261126T010203-abcdef"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Unit names as a manifest might (wrongly) carry them.
unit_names = st.one_of(
    st.sampled_from(["db.service", "web.service", "../evil.service", "a b.service", "x.socket", "@.service"]),
    st.text(max_size=30),
    json_values,
)
manifests = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"generation": st.just(GEN), "units": st.lists(unit_names, max_size=5)},
        optional={
            "stateless": json_values | st.lists(unit_names, max_size=3),
            "restart": json_values,
            "restore_timeout": json_values,
        },
    ),
)
words = st.one_of(
    st.builds(lambda v: f"seamless.restore={v}", st.sampled_from([GEN, "", "../x", GEN + "/..", '"' + GEN])),
    st.builds(
        lambda v: f"seamless.mount={v}", st.sampled_from(["/run/seamless/pmem", "/etc", "/run/../etc", ""])
    ),
    st.sampled_from(["seamless=off", "seamless.ram=on-demand", "memmap=512M!1536M", '"', "="]),
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=15),
)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# Each example gets its own directory under this one, removed when the run ends
# (hypothesis runs hundreds of examples: /tmp filled with them).
_SCRATCH = tempfile.TemporaryDirectory(prefix="seamless-fuzz-")


def _run(manifest_text: str, dumps: dict[str, str], cmdline: str) -> tuple[Path, Path, set[str], set[str]]:
    tmp = Path(tempfile.mkdtemp(dir=_SCRATCH.name))
    root, out = tmp / "root", tmp / "out"
    gdir = root / "run/seamless/pmem" / GEN
    gdir.mkdir(parents=True)
    out.mkdir()
    (gdir / "manifest.json").write_text(manifest_text)
    complete = set()
    for i, (unit, dump) in enumerate(dumps.items()):
        udir = gdir / "units" / unit
        udir.mkdir(parents=True)
        (udir / "dump.json").write_text(dump)
        if i % 2 == 0:
            (udir / "COMPLETE").write_text("{}")
            complete.add(unit)
    before = _tree(root)
    assert generator.generate(out, root, cmdline) == 0
    return root, out, before, complete


def _check(root: Path, out: Path, before: set[str], complete: set[str], manifest: Any) -> None:
    # Nothing outside the output directory, but the generator's own decision file.
    assert _tree(root) - before <= {"run/seamless", "run/seamless/generator.json"}
    listed = manifest.get("units") if isinstance(manifest, dict) else None
    named = {u for u in listed if isinstance(u, str)} if isinstance(listed, list) else set()
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        if path.is_dir() or path.is_symlink():
            continue
        top = rel.parts[0]
        if top.endswith(".service.d") and top[: -len(".d")] not in (
            "seamless-restore-finish.service",
            "seamless-warm.service",
            "seamless-restore.service",
        ):
            unit = top[: -len(".d")]
            assert unit in named and unit in complete, f"a drop-in for {unit!r}, which has no complete images"
            text = path.read_text()
            assert f"restore-unit {unit}\n" in text
            assert "\n\n\n" not in text and "TimeoutStartSec=" in text
        elif top.endswith(".socket.d"):
            assert generator._SOCKET_RE.match(top[: -len(".d")])
        else:
            assert top in (
                "seamless-restore-finish.service.d",
                "seamless-warm.service.d",
                "seamless-restore.service.d",
            ), rel
            for line in path.read_text().splitlines():
                if line.startswith("TimeoutStartSec="):
                    assert 0 < int(line.split("=", 1)[1].removesuffix("s")) <= 86400, line
                if line.startswith(("Wants=", "After=")):
                    assert generator._UNIT_RE.match(line.split("=", 1)[1]), line


@SETTINGS
@given(manifest=manifests, dumps=st.dictionaries(st.sampled_from(["db.service", "web.service"]), json_values))
def test_generator_on_any_manifest(manifest: Any, dumps: dict[str, Any]) -> None:
    root, out, before, complete = _run(json.dumps(manifest), {u: json.dumps(d) for u, d in dumps.items()}, "")
    root, out, before, complete = _run(
        json.dumps(manifest), {u: json.dumps(d) for u, d in dumps.items()}, f"ro seamless.restore={GEN}"
    )
    _check(root, out, before, complete, manifest)


@SETTINGS
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_generator_on_a_garbled_manifest(text: str) -> None:
    root, out, before, complete = _run(text, {"db.service": "{}"}, f"seamless.restore={GEN}")
    try:
        manifest = json.loads(text)
    except ValueError:
        manifest = None
    _check(root, out, before, complete, manifest)


@SETTINGS
@given(cmdline=st.lists(words, max_size=8).map(" ".join))
def test_generator_on_any_command_line(cmdline: str) -> None:
    manifest = {"generation": GEN, "units": ["db.service"]}
    root, out, before, complete = _run(json.dumps(manifest), {"db.service": "{}"}, cmdline)
    _check(root, out, before, complete, manifest)


@SETTINGS
@given(doc=json_values, junk=st.text(max_size=60))
def test_config_any_yaml_is_loaded_or_refused_clearly(doc: Any, junk: str) -> None:
    """Random YAML in the configuration: either a Config, or a ConfigError that names the file."""
    import yaml

    for text in (yaml.safe_dump(doc), junk):
        with tempfile.TemporaryDirectory() as d:
            Path(d, "config.yaml").write_text(text)
            try:
                config.load(Path(d))
            except config.ConfigError as e:
                assert os.path.join(d, "config.yaml") in str(e)


def _generation(tmp: Path) -> tuple[Any, str]:
    from seamless_systemd import criu, imagesums, state

    gen = state.Generation(tmp / "pmem", GEN)
    unit = "db.service"
    images = gen.images(unit)
    (images / "pre-0").mkdir(parents=True)
    (images / "pages-1.img").write_bytes(b"\x01" * 4096)
    (images / "pre-0/pages-1.img").write_bytes(b"\x02" * 4096)
    (images / "parent").symlink_to("pre-0")
    criu.seal_modes(images)
    state.write_json(gen.checksums(unit), imagesums.sums(images))
    state.write_json(gen.dump_info(unit), {"pids": [2**22 - 7], "outcome": "checkpointed"})
    state.write_json(gen.complete(unit), {"generation": GEN})
    return gen, unit


def test_images_with_what_criu_never_writes_are_refused(tmp_path: Path) -> None:
    from seamless_systemd import criu, imagesums, restore, state

    gen, unit = _generation(tmp_path)
    assert restore.verify_unit(gen, unit) is None
    images = gen.images(unit)
    (images / "core-1.img").symlink_to("/etc/shadow")
    assert "unexpected symbolic link core-1.img -> /etc/shadow" in str(restore.verify_unit(gen, unit))
    (images / "core-1.img").unlink()
    (images / "pre-0/parent").symlink_to("../../../../etc")
    assert "unexpected symbolic link pre-0/parent" in str(restore.verify_unit(gen, unit))
    (images / "pre-0/parent").unlink()
    os.mkfifo(images / "pipe.img")
    assert "pipe.img is not a regular file" in str(restore.verify_unit(gen, unit))
    (images / "pipe.img").unlink()
    # The copies of a private /tmp keep what it held, links and FIFOs too (not CRIU's to read).
    (images / "seamless-private-tmp/0").mkdir(parents=True)
    (images / "seamless-private-tmp/0/link").symlink_to("/etc/hostname")
    os.mkfifo(images / "seamless-private-tmp/0/fifo")
    (images / "seamless-private-tmp/0").chmod(0o1777)
    criu.seal_modes(images)
    state.write_json(gen.checksums(unit), imagesums.sums(images))
    assert restore.verify_unit(gen, unit) is None
    assert (images / "seamless-private-tmp/0").stat().st_mode & 0o7777 == 0o1777  # a copy keeps its mode
    assert (images / "pages-1.img").stat().st_mode & 0o777 == 0o600
    assert (images / "pre-0").stat().st_mode & 0o777 == 0o700
    # Root's only since the seal: a mode or an owner that changed means someone else had a hand in it.
    (images / "pre-0/pages-1.img").chmod(0o644)
    assert "pre-0/pages-1.img is owned by UID 0 with mode 0644" in str(restore.verify_unit(gen, unit))
    (images / "pre-0/pages-1.img").chmod(0o600)
    os.chown(images / "pages-1.img", 1000, 0)
    assert "pages-1.img is owned by UID 1000" in str(restore.verify_unit(gen, unit))
    os.chown(images / "pages-1.img", 0, 0)
    images.chmod(0o755)
    assert ". is owned by UID 0 with mode 0755" in str(restore.verify_unit(gen, unit))
    images.chmod(0o700)
    assert restore.verify_unit(gen, unit) is None
    (images / "seamless-tmpfs-files").symlink_to("/etc")
    assert "unexpected symbolic link seamless-tmpfs-files" in str(restore.verify_unit(gen, unit))
    (images / "seamless-tmpfs-files").unlink()
    (images / "extra.img").write_bytes(b"")
    (images / "extra.img").chmod(0o600)
    assert "checksum mismatch in extra.img" in str(restore.verify_unit(gen, unit))


@SETTINGS
@given(
    which=st.sampled_from(["COMPLETE", "checksums.json", "dump.json"]),
    doc=json_values | st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
def test_garbled_image_metadata_is_a_reason_not_a_crash(which: str, doc: Any) -> None:
    """Whatever the per-unit JSON on the PMEM holds, verify_unit gives a verdict (the unit starts afresh)."""
    from seamless_systemd import restore

    with tempfile.TemporaryDirectory() as d:
        gen, unit = _generation(Path(d))
        (gen.unit_dir(unit) / which).write_text(doc if isinstance(doc, str) else json.dumps(doc))
        why = restore.verify_unit(gen, unit)
        assert why is None or isinstance(why, str)
        if why is None:  # still a well-formed record: only a harmless change went through
            assert isinstance(json.loads((gen.unit_dir(unit) / which).read_text()), dict)


@SETTINGS
@given(text=st.text(max_size=120) | json_values.map(json.dumps))
def test_restore_prepare_and_finish_on_a_garbled_manifest(text: str) -> None:
    """A manifest that is not one (the generator skipped the boot): both say so, exit 0, restore nothing."""
    from seamless_systemd import ram, restore

    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("units"), list):
        return  # a manifest: the other tests' business
    with tempfile.TemporaryDirectory() as d:
        gen, _ = _generation(Path(d))
        gen.manifest.write_text(text)
        saved = restore.current_generation, ram.this_boot_ranges
        restore.current_generation = lambda *a: gen  # type: ignore[assignment]
        ram.this_boot_ranges = lambda *a: []  # type: ignore[assignment]
        try:
            assert restore.prepare() == 0
            assert restore.finish() == 0
        finally:
            restore.current_generation, ram.this_boot_ranges = saved
        assert not gen.report.exists()
