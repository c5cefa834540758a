"""The benchmark's client-side arithmetic (tests/vm/bench.py) on made-up probe logs."""

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.vm import bench, bench_docs

KEPT = bench.Run(0, "b", 64, token="old", seed=7).ok
ANY = bench.Run(0, "a", 64).ok


def probes(*spans: tuple[float, float, str | None]) -> list[tuple[float, str | None]]:
    """Probes every 10 ms over each (start, end, token) span."""
    out = []
    for start, end, token in spans:
        out += [(ms / 1000, token) for ms in range(round(start * 1000), round(end * 1000), 10)]
    return out


def test_downtime_is_the_outage_seen_by_the_client() -> None:
    log = probes((0, 10, "old"), (10, 40, None), (40, 50, "old"))
    d = bench.downtime(log, since=5, until=50, ok=KEPT)
    assert d["seconds"] == 30.01 and d["last_before"] == 9.99 and d["first_after"] == 40
    # A fresh instance is not the kept one: for a kept service it never came back...
    fresh = probes((0, 10, "old"), (10, 40, None), (40, 50, "new"))
    assert bench.downtime(fresh, since=5, until=50, ok=KEPT)["seconds"] is None
    # ... but it is what the floor expects.
    assert bench.downtime(fresh, since=5, until=50, ok=ANY)["seconds"] == 30.01


def test_a_short_hiccup_before_the_switch_is_not_the_outage() -> None:
    log = probes((0, 8, "old"), (8, 8.2, None), (8.2, 10, "old"), (10, 30, None), (30, 35, "old"))
    assert bench.downtime(log, since=5, until=35, ok=KEPT)["seconds"] == 20.01


def _guest_state_module() -> Any:
    path = Path(__file__).resolve().parents[1] / "vm" / "guest" / "bench_state.py"
    spec = importlib.util.spec_from_file_location("bench_state", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_block_bytes_are_the_services() -> None:
    # The client checks what the guest's service (tests/vm/guest/bench_state.py) made.
    service = _guest_state_module()
    for seed, i, v in ((7, 3, 1), (2**32 - 1, 1023, 40), (0, 0, 0)):
        assert bench.block_bytes(seed, i, v) == service.block_bytes(seed, i, v)
    assert bench.block_bytes(7, 3, 1) != bench.block_bytes(7, 3, 2)
    assert bench.block_bytes(7, 3, 1) != bench.block_bytes(7, 4, 1)
    assert len(bench.block_bytes(1, 0, 0)) == bench.MIB


def test_every_page_of_a_block_is_different() -> None:
    # A page lost, stale or moved within its block changes the block's digest.
    block = bench.block_bytes(11, 5, 2)
    pages = {block[k : k + 4096] for k in range(0, bench.MIB, 4096)}
    assert len(pages) == bench.MIB // 4096


def test_the_state_is_checked_only_once_the_service_is_back_from_the_outage() -> None:
    hiccup = probes((0, 8, "old"), (8, 8.6, None), (8.6, 10, "old"))
    assert not bench.back_after_outage(hiccup, since=5, ok=KEPT)
    down = probes((0, 8, "old"), (8, 30, None))
    assert not bench.back_after_outage(down, since=5, ok=KEPT)
    back = probes((0, 8, "old"), (8, 30, None), (30, 31, "old"))
    assert bench.back_after_outage(back, since=5, ok=KEPT)
    assert not bench.back_after_outage(probes((0, 8, "old"), (8, 30, None), (30, 31, "new")), 5, KEPT)


def test_transitions_are_what_the_client_saw_in_a_row() -> None:
    log = probes((0, 0.03, "old"), (0.03, 0.05, None), (0.05, 0.06, "old"))
    assert bench.transitions(log, since=0, until=1) == [[0.0, "old", 3], [0.03, None, 2], [0.05, "old", 1]]
    assert bench.outage_begun(probes((0, 1, "old"), (1, 4, None)), since=0.5)
    assert not bench.outage_begun(probes((0, 1, "old"), (1, 2, None), (2, 3, "old")), since=0.5)


def test_slow_answers_at_the_end_do_not_hide_the_outage() -> None:
    # Under load the last probes time out now and then: the outage is still the long stretch.
    log = probes((0, 10, "old"), (10, 40, None), (40, 45, "old"), (45, 45.5, None), (45.5, 45.52, "old"))
    log += probes((45.52, 46, None))
    assert bench.downtime(log, since=5, until=46, ok=KEPT)["seconds"] == 30.01


def test_probes_again_from_the_recorded_transitions() -> None:
    log = probes((0, 10, "old"), (10, 40, None), (40, 50, "old"))
    again = bench.from_transitions(bench.transitions(log, since=0, until=50))
    assert bench.downtime(again, since=5, until=50, ok=KEPT)["seconds"] == 30.01


def test_the_cold_reboot_is_correct_once_a_new_instance_holds_the_old_state() -> None:
    # (d): the answer is "TOKEN SEED"; the reloaded service is a new instance with the same seed.
    reloaded = bench.Run(0, "d", 64, token="old", seed=7).ok
    log = probes((0, 10, "old 7"), (10, 40, None), (40, 45, "new 99"), (45, 50, "new 7"))
    assert bench.downtime(log, since=5, until=50, ok=reloaded)["seconds"] == 35.01
    # For a kept service only the old instance counts, whatever state a new one holds.
    assert bench.downtime(log, since=5, until=50, ok=bench.Run(0, "b", 64, token="old").ok)["seconds"] is None
    assert bench.correct("old 7", "b", "old", 7) and not bench.correct("new 7", "b", "old", 7)


def test_the_outage_splits_at_the_console_marks() -> None:
    marks = [(1.0, "kernel"), (12.0, "kexec"), (12.1, "kernel"), (15.0, "initramfs"), (18.0, "systemd")]
    assert bench.phases(marks, last_before=10, first_after=30) == {
        "stop": 2.0,
        "kernel": 3.0,
        "initramfs": 3.0,
        "user_space": 12.0,
    }
    # The cold reboot: QEMU ended and started again.
    cold = [(11.0, "qemu_exited"), (11.5, "qemu_started"), (14.0, "initramfs"), (16.0, "systemd")]
    assert bench.phases(cold, 10, 20) == {"stop": 1.0, "kernel": 3.0, "initramfs": 2.0, "user_space": 4.0}
    # Marks missing (a console line not seen): only the phases before the gap.
    assert bench.phases([(12.0, "kexec")], 10, 20) == {"stop": 2.0}


def test_the_switch_is_what_the_console_shows_not_a_long_freeze() -> None:
    marks = [(3.0, "kernel"), (12.0, "kexec"), (20.0, "kernel")]
    assert bench.switched_at(marks, since=5) == 12.0
    assert bench.switched_at(marks, since=13) is None
    assert bench.switched_at([(7.0, "qemu_exited")], since=5) == 7.0
    # A 6 s freeze of the arm (1 GiB) looks like an outage to the prober; it is not the switch.
    log = probes((0, 8, "old"), (8, 14, None), (14, 20, "old"), (20, 50, None), (50, 55, "old"))
    assert bench.back_after_outage(log, since=5, ok=KEPT)  # what the checker used to start on
    assert not bench.back_after_outage(log[: int(19 / 0.01)], since=20 - 1, ok=KEPT)
    assert bench.back_after_outage(log, since=20 - 1, ok=KEPT)


def test_the_new_boot_splits_at_the_guests_own_times() -> None:
    T = 1000.0
    at = {"kernel_started": T, "prepare_exec": T + 20, "prepare_started": T + 22.5, "images_checked": T + 24}
    unit = {
        "at": {"restore_exec": T + 25, "restore_started": T + 27},
        "seconds": {"restore": 9.0, "address_wait": 3.25, "criu": 5.0},
    }
    runs = [
        {"guest": {"at": at, "units": [unit]}},
        {"guest": {"at": {**at, "prepare_exec": None}, "units": []}},
    ]
    steps = bench.boot_steps(runs)
    assert steps == {
        "to_prepare": [20.0],
        "prepare_python": [2.5],
        "prepare_checks": [1.5, 1.5],  # the second run lacks only the process start
        "to_restore": [1.0],
        "restore_python": [2.0],
    }
    row = {"scenario": "b", "size_mib": 64, "guest_median": bench.guest_medians(runs)}
    assert bench_docs.boot_table([row]).splitlines()[-1] == (
        "| (b) seamless, images in the memmap= reservation | 64 MiB | 20.00 s | 2.50 s | 1.50 s | 1.00 s "
        "| 2.00 s | 9.00 s | — | 3.25 s | 5.00 s |"
    )
    # A run before the report had the restore's parts: their cells say so.
    del unit["seconds"]["address_wait"], unit["seconds"]["criu"]
    assert bench_docs.boot_table([{**row, "guest_median": bench.guest_medians(runs)}]).endswith(
        "| 9.00 s | — | — | — |"
    )
    # seamless-restore.service as Type=notify: the restore starts at its READY=1, the checks go on.
    at.update(prepare_ready=T + 22.75, images_checked=T + 26)
    unit["seconds"]["verdict_wait"] = 0.5
    steps = bench.boot_steps(runs[:1])
    assert steps["to_restore"] == [2.25] and steps["prepare_checks"] == [3.5]
    assert bench.guest_medians(runs[:1])["verdict_wait"] == 0.5


def test_a_scenario_at_one_size_runs_only_there_and_the_command_says_so() -> None:
    plan = bench.make_plan([64, 1024], "a,b,b-nopre@1024", reps=2)
    assert [(p["scenario"], p["size"]) for p in plan] == [
        ("a", 64), ("b", 64), ("b", 64), ("a", 64),
        ("a", 1024), ("b", 1024), ("b-nopre", 1024), ("b-nopre", 1024), ("b", 1024), ("a", 1024),
    ]  # fmt: skip
    command = bench.plan_command(plan)
    assert command == "python3 -m tests.vm.bench --sizes 64,1024 --scenarios a,b,b-nopre@1024 --reps 2"
    words = command.split()
    assert bench.make_plan([64, 1024], words[words.index("--scenarios") + 1], 2) == plan


def test_every_scenario_goes_both_ways_in_two_reps() -> None:
    # The guest switches to the other kernel in each run: run i goes A -> B when i is even.
    for scenarios in ("a,b", "a,b,c", "a,b,b-lazy,c,d,b-nopre@256,b-nowarm@256"):
        plan = bench.make_plan([64, 256], scenarios, reps=2)
        ways: dict[tuple[str, int], set[int]] = {}
        for i, p in enumerate(plan):
            ways.setdefault((p["scenario"], p["size"]), set()).add(i % 2)
        assert all(w == {0, 1} for w in ways.values()), (scenarios, ways)


def test_a_scenario_at_a_size_not_run_is_refused() -> None:
    with pytest.raises(SystemExit, match="256 MiB is not among --sizes 64"):
        bench.make_plan([64], "a,b@256", reps=1)
