"""The upgrade's timeline (seamless-upgrade report --svg): its rows, and what Chromium draws of it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from seamless_systemd import cli, report, timeline
from seamless_systemd.errors import SeamlessError
from tests import browser

T = 1_796_000_000.0


def unit(
    name: str, outcome: str, dump: float, restore: float | None, reason: str | None = None
) -> dict[str, Any]:
    return {
        "unit": name,
        "outcome": outcome,
        "reason": reason,
        "main_pid_before": 400,
        "main_pid_after": 400 if outcome == "restored" else 900,
        "seconds": {"frozen": 0.4, "restore": 1.5 if restore else None},
        "at": {
            "checkpoint_started": T + dump,
            "dumped": T + dump + 0.8,
            "checkpoint_finished": T + dump + 1.0,
            "restore_started": T + restore if restore else None,
            "restore_finished": T + restore + 1.5 if restore else None,
        },
    }


REPORT: dict[str, Any] = {
    "generation": "20261206T081516-7c9c70",
    "kernel": {"from": "6.1.0-47-cloud-amd64", "to": "6.1.0-53-cloud-amd64"},
    "units": [
        unit("seamless-demo@7777.service", "restored", 12.0, 41.0),
        unit("seamless-demo@7778.service", "restored", 13.5, 41.2),
        unit(
            "postgresql@15-main.service",
            "cold-started",
            14.0,
            None,
            "images damaged: checksum mismatch in pages-1.img (the images were changed after the checkpoint)",
        ),
    ],
    "seconds": {"downtime": 30.7},
    "warm": {"page_cache": {"started_at": T + 43.0, "seconds": 3.2, "read_bytes": 64 << 20}},
    "at": {
        "arm_started": T,
        "armed": T + 9.0,
        "kexec_requested": T + 11.0,
        "kernel_started": T + 18.0,
        "images_checked": T + 39.0,
        "finished": T + 44.0,
    },
}


def test_rows_follow_the_report() -> None:
    rows = {r.name: r for r in timeline.rows(REPORT)}
    assert [b.phase for b in rows["arm"].bars] == ["arm"]
    # From the kexec request, not from the first checkpoint: what the shutdown does first shows.
    assert (rows["shutdown, kexec"].bars[0].start, rows["shutdown, kexec"].bars[0].end) == (
        T + 11.0,
        T + 18.0,
    )
    assert (rows["new kernel's boot"].bars[0].start, rows["new kernel's boot"].bars[0].end) == (
        T + 18.0,
        T + 41.0,
    )
    kept = rows["seamless-demo@7777.service"]
    assert [b.phase for b in kept.bars] == ["checkpoint", "checksum", "down", "restore"]
    assert "frozen 0.40 s" in kept.bars[0].note
    # Not restored: down until the restore boot finished, no restore bar, the reason kept.
    cold = rows["postgresql@15-main.service"]
    assert [b.phase for b in cold.bars] == ["checkpoint", "checksum", "down"]
    assert cold.bars[-1].end == T + 44.0 and "checksum mismatch" in cold.reason
    assert rows["page cache"].bars[0].note == "page cache read back: 64 MiB in 3.2 s"


def test_an_upgrade_that_did_not_come_back_has_no_timeline_and_says_why() -> None:
    gone = {"generation": "G", "outcome": "not-arrived", "kernel": {}, "units": [], "seconds": {}}
    with pytest.raises(SeamlessError, match="upgrade G has no timeline to draw \\(not-arrived\\)"):
        timeline.render(gone)


def test_report_svg_writes_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.status, "last_report", lambda: REPORT)
    monkeypatch.setattr(cli.log, "setup", lambda debug: None)
    assert cli.main(["report", "--svg", str(tmp_path / "t.svg")]) == 0
    assert (tmp_path / "t.svg").read_text().startswith("<svg ")


@pytest.mark.skipif(browser.CHROMIUM is None, reason="needs chromium (tests/vm/host-deps.sh installs it)")
def test_chromium_draws_every_unit_in_order(tmp_path: Path) -> None:
    drawn = browser.draw(timeline.render(REPORT), tmp_path)
    browser.check(drawn, REPORT)
    fills = {b["phase"]: b["fill"] for b in drawn["bars"]}
    assert fills["restore"] == "rgb(49, 163, 84)" and fills["checkpoint"] == "rgb(49, 130, 189)"
    cold = next(o for o in drawn["outcomes"] if o["row"] == "postgresql@15-main.service")
    assert cold["text"].startswith("cold-started: images damaged") and cold["text"].endswith("…")


@pytest.mark.skipif(browser.CHROMIUM is None, reason="needs chromium (tests/vm/host-deps.sh installs it)")
def test_check_catches_a_bar_out_of_order(tmp_path: Path) -> None:
    """The browser check can fail: a restore drawn before its checkpoint is caught."""
    bad = copy.deepcopy(REPORT)
    at = bad["units"][0]["at"]
    at["restore_started"], at["restore_finished"] = T + 1.0, T + 2.0
    with pytest.raises(AssertionError):
        browser.check(browser.draw(timeline.render(bad), tmp_path), bad)


def test_a_report_built_from_a_generation_has_the_times(tmp_path: Path) -> None:
    """report.build puts the times the timeline needs in 'at' (from the dump and restore records)."""
    from seamless_systemd import state

    gen = state.Generation(tmp_path, "20261206T081516-7c9c70")
    gen.dir.mkdir(parents=True)
    state.write_json(
        gen.manifest,
        {
            "kernel": {"from": "A", "to": "B"},
            "units": ["a.service"],
            "arm_started_at": T,
            "kexec_requested_at": T + 5,
        },
    )
    state.write_json(gen.boot, {"kernel_started_at": T + 9, "finished_at": T + 20})
    state.write_json(
        gen.dump_info("a.service"), {"started_at": T + 6, "dumped_at": T + 7, "finished_at": T + 7.5}
    )
    state.write_json(
        gen.restore_info("a.service"), {"outcome": "restored", "started_at": T + 15, "finished_at": T + 16}
    )
    rep = json.loads(json.dumps(report.build(gen)))
    assert rep["at"]["kernel_started"] == T + 9 and rep["units"][0]["at"]["dumped"] == T + 7
    assert [b.phase for b in timeline.rows(rep)[-1].bars] == ["checkpoint", "checksum", "down", "restore"]
