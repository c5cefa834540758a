from pathlib import Path

import pytest

from seamless_systemd import config
from seamless_systemd.errors import ConfigError


def write(d: Path, name: str, text: str) -> None:
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_defaults_without_any_file(tmp_path: Path) -> None:
    cfg = config.load(tmp_path)
    assert cfg.units == ()
    assert cfg.pmem_device == Path("/dev/pmem0")
    assert cfg.pmem_mountpoint == Path("/run/seamless/pmem")


def test_fragments_merge_in_order(tmp_path: Path) -> None:
    write(tmp_path, "config.yaml", "units: [a.service]\npmem: {device: /dev/pmem1}\nkernel: 6.1.0-1\n")
    write(tmp_path, "conf.d/20-b.yaml", "units: [b.service, a.service]\n")
    write(tmp_path, "conf.d/10-c.yaml", "units: [c.service]\nkernel: 6.1.0-2\n")
    write(tmp_path, "conf.d/ignored.txt", "units: [x.service]\n")
    cfg = config.load(tmp_path)
    assert cfg.units == ("a.service", "c.service", "b.service")
    assert cfg.pmem_device == Path("/dev/pmem1")
    assert cfg.kernel == "6.1.0-2"


def test_early_writeback_is_on_unless_turned_off(tmp_path: Path) -> None:
    assert config.load(tmp_path).early_writeback is True
    write(tmp_path, "conf.d/50-off.yaml", "early_writeback: false\n")
    assert config.load(tmp_path).early_writeback is False
    write(tmp_path, "conf.d/60-bad.yaml", "early_writeback: sometimes\n")
    with pytest.raises(ConfigError, match="early_writeback"):
        config.load(tmp_path)


def test_empty_file_is_fine(tmp_path: Path) -> None:
    write(tmp_path, "config.yaml", "# nothing yet\n")
    assert config.load(tmp_path).units == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "unit: [a.service]\n",
            "unknown key 'unit' (allowed: checkpoint_timeout, containers, early_writeback, images, kernel, "
            "lazy_restore, on_unsupported, panic_reboot, pmem, restore_timeout, units, warm)",
        ),
        ("images: {checksum: md5}\n", "'images.checksum' must be one of crc32, sha256, not 'md5'"),
        ("images: {hash: crc32}\n", "unknown key 'images.hash' (allowed: images.checksum, images.pre_dump)"),
        ("images: {pre_dump: 1}\n", "'images.pre_dump' must be true or false, not 1"),
        ("warm: {page_cache: yes please}\n", "'warm.page_cache' must be true or false, not 'yes please'"),
        (
            "units: [{name: a.service, warm_paths: [var/lib/a]}]\n",
            "units[0].warm_paths[0] must be an absolute path (a file or a directory), not 'var/lib/a'",
        ),
        ("units: [{name: a.service, policy: x}]\n", "unknown key 'units[0].policy'"),
        ("units: [{on_unsupported: restart}]\n", "units[0] needs a 'name'"),
        ("units: [{name: a.service, on_unsupported: ignore}]\n", "must be one of refuse, restart"),
        ("on_unsupported: skip\n", "'on_unsupported' must be one of refuse, restart, not 'skip'"),
        ("pmem: {dev: /dev/pmem0}\n", "unknown key 'pmem.dev' (allowed: pmem.device, pmem.mode, pmem.size)"),
        (
            "pmem: {mode: ondemand}\n",
            "'pmem.mode' must be one of auto, reserved, on-demand, disk, not 'ondemand'",
        ),
        ("pmem: {size: 512}\n", "'pmem.size' must be a size in MiB or GiB such as 512M or 2G, not 512"),
        ("pmem: {size: 1.5G}\n", "'pmem.size' must be"),
        ("units: a.service\n", "'units' must be a list"),
        ("units: [nginx]\n", "did you mean 'nginx.service'"),
        ("units: [foo.socket]\n", "only .service units can be preserved"),
        ("units: [getty@.service]\n", "is a template"),
        ("units: ['a b.service']\n", "characters systemd does not allow"),
        ("units: [3]\n", "units[0] must be a unit name or a mapping with 'name'"),
        ("checkpoint_timeout: yes\n", "'checkpoint_timeout' must be an integer"),
        ("checkpoint_timeout: 0\n", "positive number of seconds"),
        ("restore_timeout: -5\n", "'restore_timeout' must be a positive number of seconds"),
        ("panic_reboot: -1\n", "'panic_reboot' must be a number of seconds (0: leave"),
        ("panic_reboot: yes\n", "'panic_reboot' must be an integer, not True"),
        ("restore_timeout: 10 min\n", "'restore_timeout' must be an integer"),
        ("pmem: {device: pmem0}\n", "device path under /dev"),
        ("- a.service\n", "top level must be a mapping"),
        ("units: [a.service\n", "not valid YAML"),
        ("containers: [looper.service]\n", "is a unit name; list units under 'units:'"),
        ("containers: ['my container']\n", "containers[0]: container name 'my container' is not a podman"),
        ("containers: [{name: web, on_unsupported: maybe}]\n", "containers[0].on_unsupported' must be one"),
        ("containers: [{on_unsupported: restart}]\n", "containers[0] needs a 'name' (the container name)"),
    ],
)
def test_bad_input_names_file_and_problem(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, "conf.d/50-x.yaml", text)
    with pytest.raises(ConfigError) as e:
        config.load(tmp_path)
    assert message in str(e.value)
    assert str(tmp_path / "conf.d/50-x.yaml") in str(e.value)


def test_containers_by_name_with_their_own_policy(tmp_path: Path) -> None:
    write(tmp_path, "config.yaml", "units: [a.service]\ncontainers: [web]\n")
    write(tmp_path, "conf.d/10-db.yaml", "containers: [{name: db-1, on_unsupported: restart}, web]\n")
    cfg = config.load(tmp_path)
    assert cfg.units == ("a.service",)
    assert cfg.containers == ("web", "db-1")
    assert cfg.policy("db-1") == config.OnUnsupported.RESTART
    assert cfg.policy("web") == config.OnUnsupported.REFUSE


def test_unit_name_checks() -> None:
    assert config.check_unit_name("seamless-demo.service") is None
    assert config.check_unit_name("foo@bar.service") is None
    assert config.check_unit_name("a\\x2db.service") is None
    assert config.check_unit_name("") == "empty unit name"
    assert "longer than 255" in (config.check_unit_name("a" * 250 + ".service") or "")


def test_unsupported_policy_per_unit(tmp_path: Path) -> None:
    write(
        tmp_path,
        "config.yaml",
        "on_unsupported: restart\nunits:\n  - a.service\n  - {name: b.service, on_unsupported: refuse}\n",
    )
    cfg = config.load(tmp_path)
    assert cfg.units == ("a.service", "b.service")
    assert cfg.policy("a.service") == config.OnUnsupported.RESTART
    assert cfg.policy("b.service") == config.OnUnsupported.REFUSE
    assert config.load(tmp_path / "nothing").policy("a.service") == config.OnUnsupported.REFUSE


def test_pmem_mode_and_size(tmp_path: Path) -> None:
    assert config.load(tmp_path).pmem_mode == config.PmemMode.AUTO
    write(tmp_path, "config.yaml", "units: [a.service]\npmem: {mode: on-demand, size: 1G}\n")
    write(tmp_path, "conf.d/50-x.yaml", "pmem: {size: 384M}\n")
    cfg = config.load(tmp_path)
    assert cfg.pmem_mode == config.PmemMode.ON_DEMAND
    assert cfg.pmem_size == 384 << 20


def test_warm_switches_and_paths_per_unit(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "warm: {dentries: false}\nunits: [{name: db.service, warm_paths: [/var/lib/db]}, web.service]\n"
    )
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "50.yaml").write_text("units: [{name: db.service, warm_paths: [/srv/db]}]\n")
    cfg = config.load(tmp_path)
    assert (cfg.warm_page_cache, cfg.warm_dentries) == (True, False)
    assert cfg.warm_paths("db.service") == ("/var/lib/db", "/srv/db")
    assert cfg.warm_paths("web.service") == ()
