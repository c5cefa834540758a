"""The record of an upgrade in flight, and the report of one that did not come back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from seamless_systemd import inflight, report, state, systemd

GEN = "20261204T101010-abcdef"
MANIFEST = {
    "kernel": {"from": "6.1.0-47-cloud-amd64", "to": "6.1.0-53-cloud-amd64"},
    "units": ["web.service", "db.service", "setup.service"],
    "stateless": ["setup.service"],
}


def gen() -> state.Generation:
    return state.Generation(Path("/run/seamless/pmem"), GEN)


def test_begin_writes_once_per_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "in-flight.json"
    inflight.begin(gen(), MANIFEST, path)
    first = json.loads(path.read_text())
    assert first["generation"] == GEN and first["units"] == MANIFEST["units"]
    assert first["kernel"]["to"] == "6.1.0-53-cloud-amd64"
    # The other hooks of the same shutdown leave it as the first wrote it.
    inflight.begin(gen(), {**MANIFEST, "units": ["other.service"]}, path)
    assert json.loads(path.read_text()) == first
    # A later upgrade replaces it.
    inflight.begin(state.Generation(Path("/run/seamless/pmem"), "20261205T000000-000000"), MANIFEST, path)
    assert json.loads(path.read_text())["generation"] == "20261205T000000-000000"


def test_begin_never_fails_the_checkpoint(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    inflight.begin(gen(), MANIFEST, blocked / "in-flight.json")  # its directory is a file: logged only


def test_arrived_and_end_touch_only_their_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "in-flight.json"
    inflight.begin(gen(), MANIFEST, path)
    other = state.Generation(Path("/run/seamless/pmem"), "20261205T000000-000000")
    inflight.arrived(other, path)
    assert "arrived_at" not in json.loads(path.read_text())
    inflight.end(other, path)
    assert path.exists()
    inflight.arrived(gen(), path)
    assert json.loads(path.read_text())["arrived_at"] > 0
    inflight.end(gen(), path)
    assert not path.exists()


def test_what_happened() -> None:
    data = {"generation": GEN, "kernel": MANIFEST["kernel"], "kexec_started_at": 0}
    outcome, why = inflight.what_happened(data, "6.1.0-47-cloud-amd64", None)
    assert outcome == "not-arrived"
    assert "6.1.0-53-cloud-amd64 never reached its restore" in why and "1970-01-01 00:00:00 UTC" in why
    outcome, why = inflight.what_happened({**data, "arrived_at": 60}, "6.1.0-47-cloud-amd64", None)
    assert outcome == "interrupted" and "began the restore at 1970-01-01 00:01:00 UTC" in why
    outcome, why = inflight.what_happened(data, "6.1.0-53-cloud-amd64", "no manifest")
    assert outcome == "not-restored" and "(no manifest)" in why


class FakeUnits:
    """systemd's side of the boot check, for its bookkeeping (the VM test runs the real one)."""

    def __init__(self, states: dict[str, str]) -> None:
        self.states = states
        self.started: list[str] = []

    def info(self, name: str) -> Any:
        if name not in self.states:
            raise systemd.SeamlessError(f"Unit {name} not found.")
        pid = 100 + len(self.started) if self.states[name] == "active" else 0
        return type("Info", (), {"active_state": self.states[name], "main_pid": pid})()

    def restart(self, name: str) -> None:
        self.started.append(name)
        self.states[name] = "active"


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(state, "REPORT_DIR", tmp_path / "reports")
    monkeypatch.setattr(state, "RUN_DIR", tmp_path / "run")
    return tmp_path


def test_check_reports_and_starts_what_is_not_running(dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = dirs / "in-flight.json"
    inflight.begin(gen(), {**MANIFEST, "units": [*MANIFEST["units"], "gone.service"]}, path)
    units = FakeUnits({"web.service": "active", "db.service": "inactive", "setup.service": "inactive"})
    monkeypatch.setattr(systemd, "unit_info", units.info)
    monkeypatch.setattr(systemd, "restart_unit", units.restart)
    assert inflight.check(path) == 0
    assert not path.exists()
    assert units.started == ["db.service", "setup.service"]
    rep = json.loads((dirs / "reports" / f"{GEN}.json").read_text())
    assert rep == json.loads((dirs / "reports" / "last.json").read_text())
    assert rep["outcome"] == "not-arrived" and rep["kernel"] == MANIFEST["kernel"]
    got = {u["unit"]: u["outcome"] for u in rep["units"]}
    assert got == {
        "web.service": "cold-started",
        "db.service": "cold-started",
        "setup.service": "rerun",
        "gone.service": "start-failed",
    }
    text = report.render(rep)
    assert "not-arrived: kernel 6.1.0-53-cloud-amd64 never reached its restore" in text
    assert "db.service: cold-started PID" in text and "phases" not in text


def test_check_ignores_a_garbled_record(dirs: Path) -> None:
    path = dirs / "in-flight.json"
    for text in ("{not json", '{"generation": "../../etc", "mount": "/run/seamless/pmem"}', "[]"):
        path.write_text(text)
        assert inflight.check(path) == 0
        assert not path.exists() and not (dirs / "reports").exists()


def test_check_names_a_skipped_restore(dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = dirs / "in-flight.json"
    inflight.begin(gen(), {**MANIFEST, "units": []}, path)
    (dirs / "run").mkdir()
    (dirs / "run/generator.json").write_text(json.dumps({"generation": GEN, "skipped": "no manifest"}))
    assert inflight.check(path) == 0
    rep = json.loads((dirs / "reports" / "last.json").read_text())
    assert rep["outcome"] == "not-restored" and "(no manifest)" in rep["reason"]
