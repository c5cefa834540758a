"""One run of the full VM scenario serves every VM test module; the fault table of the run.

A test marked @pytest.mark.fault(ROW, OUTCOME) is a row of the fault matrix:
after the run, build/faults.md lists each row, what its test asserts and how
it went. SEAMLESS_FAULT_TABLE=PATH writes it there too (docs/faults.md is a
run's table, committed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.vm import image as vmimage
from tests.vm import vm

# nodeid -> (row, outcome, result)
FAULT_ROWS: dict[str, tuple[str, str, str]] = {}


# The scenarios some test failed on: id -> (scenario, the failed tests' ids), for the run's last lines.
FAILED_RUNS: dict[int, tuple[vm.Scenario, list[str]]] = {}


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any) -> None:
    """A short account of each failed VM run, last: CI keeps the end of the output when it cuts the middle."""
    for sc, nodeids in FAILED_RUNS.values():
        terminalreporter.section("where the failed VM run got to", sep="-")
        terminalreporter.write_line("failed: " + ", ".join(n.split("::")[-1] for n in nodeids))
        terminalreporter.write_line(sc.timeline())
        terminalreporter.write_line(sc.console_tail(12))


# test module -> seconds of its tests, set-up (the image, the VM run) included
MODULE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::", 1)[0]
    MODULE_SECONDS[module] = MODULE_SECONDS.get(module, 0.0) + report.duration


def time_table(
    seconds: dict[str, float], commit: str, day: str, cache_builds: Sequence[tuple[str, float]] = ()
) -> str:
    if cache_builds:
        built = ", ".join(f"{what} ({secs / 60:.1f} min)" for what, secs in cache_builds)
        cache = f"their minutes including what this run built into the cache: {built}."
    else:
        cache = "with the base trees and CRIU cached."
    lines = [
        "# How long each VM test took",
        "",
        f"Written by the VM tests (tests/vm/conftest.py) in the run of {day} on commit {commit}:",
        "each module's tests with their set-up (building the image, the QEMU runs), under TCG on",
        f"the 2-core machine docs/platform.md describes, {cache}",
        "",
        "| test module | minutes |",
        "|---|---|",
    ]
    for module, secs in seconds.items():
        lines.append(f"| `{module}` | {secs / 60:.1f} |")
    lines.append(f"| all of them | {sum(seconds.values()) / 60:.1f} |")
    return "\n".join(lines) + "\n"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    got = yield
    rep = got.get_result()  # type: ignore[attr-defined]
    if rep.failed and rep.when == "call":
        # CI keeps only what pytest prints: what the guest said of the run that failed.
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, vm.Scenario):
                rep.sections.append(("what the guest said", guest_story(value)))
                FAILED_RUNS.setdefault(id(value), (value, []))[1].append(item.nodeid)
    mark = item.get_closest_marker("fault")
    if mark is None or (rep.when != "call" and rep.passed):
        return
    row, outcome = mark.args
    result = "passed" if rep.passed else ("skipped" if rep.skipped else "FAILED")
    if FAULT_ROWS.get(item.nodeid, ("", "", "passed"))[2] == "passed":
        FAULT_ROWS[item.nodeid] = (row, outcome, result)


def guest_story(sc: vm.Scenario, limit: int = 24000) -> str:
    """The guest's own account of a run: its debug dumps (journals, CRIU's logs) and each report."""
    parts = []
    for e in sc.events:
        if e.name == "debug":
            parts.append(f"$ {' '.join(map(str, e.data.get('cmd', [])))}\n{e.data.get('out', '')}")
        elif isinstance(e.data, dict) and isinstance(e.data.get("report"), dict):
            parts.append(f"report at '{e.name}': {json.dumps(e.data['report'], indent=1)[:4000]}")
    text = "\n".join(parts) or "(no debug events)"
    return text[-limit:]


def fault_table(rows: dict[str, tuple[str, str, str]], commit: str, day: str) -> str:
    lines = [
        "# Fault matrix: what was injected in the VM, and what came of it",
        "",
        f"Written by the VM tests (tests/vm/conftest.py) in the run of {day} on commit {commit}; each",
        "row is a test marked `fault`, with the outcome it asserts. The design's side of it is in",
        "docs/design.md (When something fails).",
        "",
        "| fault injected | outcome asserted | test | result |",
        "|---|---|---|---|",
    ]
    for nodeid, (row, outcome, result) in rows.items():
        test = nodeid.split("/")[-1]
        lines.append(f"| {row} | {outcome} | `{test}` | {result} |")
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session: pytest.Session) -> None:
    try:
        commit = subprocess.run(
            ["git", "-C", str(vmimage.REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "?"
    day = time.strftime("%Y-%m-%d", time.gmtime())
    vmimage.BUILD.mkdir(parents=True, exist_ok=True)
    vm_modules = {m: s for m, s in MODULE_SECONDS.items() if m.startswith("tests/vm/")}
    if vm_modules:
        text = time_table(vm_modules, commit or "?", day, vmimage.CACHE_BUILDS)
        (vmimage.BUILD / "vm-times.md").write_text(text)
        if os.environ.get("SEAMLESS_TIME_TABLE"):
            Path(os.environ["SEAMLESS_TIME_TABLE"]).write_text(text)
    if not FAULT_ROWS:
        return
    text = fault_table(FAULT_ROWS, commit or "?", day)
    (vmimage.BUILD / "faults.md").write_text(text)
    if os.environ.get("SEAMLESS_FAULT_TABLE"):
        Path(os.environ["SEAMLESS_FAULT_TABLE"]).write_text(text)


def scenario_image(name: str) -> vmimage.Image:
    """The image of scenario NAME, or a skip (not root) or a failure (a tool missing) that says why."""
    if os.geteuid() != 0:
        pytest.skip("the VM test builds its image with debootstrap and chroot: run it as root")
    for tool in ("qemu-system-x86_64", "debootstrap", "dpkg-buildpackage"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run tests/vm/host-deps.sh (make test does)")
    return vmimage.build_image(name)


@pytest.fixture(scope="session")
def scenario() -> vm.Scenario:
    return vm.run_scenario(scenario_image("full"), vmimage.BUILD / "vm" / "run", vm.FULL)


def need(sc: vm.Scenario, event: str) -> dict[str, Any]:
    """The data of EVENT, or a failure that shows what the guest did."""
    data = sc.get(event)
    if data is None:
        errors = [e.data for e in sc.events if e.name in ("error", "timeout")]
        pytest.fail(
            f"the guest never reported '{event}' (errors: {errors})\n"
            f"what the host saw, in order:\n{sc.timeline()}\n{sc.console_tail()}"
        )
    return data
