"""What brings the machine back if the new kernel never reaches its restore (guard.py)."""

from pathlib import Path

from seamless_systemd import guard
from seamless_systemd.config import Config
from seamless_systemd.guard import Watchdog
from seamless_systemd.upgrade import decide
from tests.unit.test_plan import facts


def test_panic_is_added_only_where_the_line_names_none() -> None:
    assert guard.with_panic("root=/dev/vda quiet", 30) == "root=/dev/vda quiet panic=30"
    # The administrator's own choice stands, even 0 or a negative (reboot at once).
    assert guard.with_panic("root=/dev/vda panic=0", 30) == "root=/dev/vda panic=0"
    assert guard.with_panic("panic=-1 root=/dev/vda", 30) == "panic=-1 root=/dev/vda"
    # panic_reboot: 0 leaves the line as it is.
    assert guard.with_panic("root=/dev/vda", 0) == "root=/dev/vda"
    # A quoted value with a space stays one word.
    assert guard.with_panic('root=/dev/vda x="a b"', 5) == 'root=/dev/vda x="a b" panic=5'


def test_watchdog_facts_read_sysfs(tmp_path: Path) -> None:
    assert guard.watchdog_facts(tmp_path / "none").identity is None
    (tmp_path / "watchdog0").mkdir()
    (tmp_path / "watchdog0/identity").write_text("iTCO_wdt\n")
    (tmp_path / "watchdog1").mkdir()
    assert guard.watchdog_facts(tmp_path).identity == "iTCO_wdt"


def test_notes_say_what_happens_on_a_panic_and_a_hang() -> None:
    none = guard.notes("root=/dev/vda panic=30", Watchdog(None, 0))
    assert "reboots (panic=30)" in none[0]
    assert "it has no hardware watchdog" in none[1]
    off = guard.notes("root=/dev/vda", Watchdog("iTCO_wdt", 0))
    assert "stays at the panic message" in off[0] and "panic_reboot" in off[0]
    assert "(iTCO_wdt) is not armed for a kexec; set KExecWatchdogSec=" in off[1]
    on = guard.notes("root=/dev/vda panic=0", Watchdog("iTCO_wdt", 600_000_000))
    assert "stays at the panic message" in on[0]
    assert "resets the machine after 600 s" in on[1] and "watchdog.stop_on_reboot=0" in on[1]


def test_plan_carries_the_notes() -> None:
    plan = decide(Config(units=("app.service",)), facts(watchdog=Watchdog(None, 0)))
    assert plan.problems == ()
    assert any("reboots (panic=30)" in n for n in plan.notes), plan.notes
    assert any("no hardware watchdog" in n for n in plan.notes), plan.notes
    # With panic_reboot: 0 and no panic= of its own, the new kernel would wait at a panic: said.
    plan = decide(Config(units=("app.service",), panic_reboot=0), facts(watchdog=Watchdog(None, 0)))
    assert "panic=" not in plan.cmdline
    assert any("stays at the panic message" in n for n in plan.notes), plan.notes
