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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vm import image as vmimage
from tests.vm import vm

# nodeid -> (row, outcome, result)
FAULT_ROWS: dict[str, tuple[str, str, str]] = {}


# The VM runs some test failed on: their account (timeline, console tail) -> the failed tests' ids,
# for the run's last lines. Made from the reports, so that it works when the tests ran in
# pytest-xdist's workers (make test) and the reports came back to the controller.
FAILED_RUNS: dict[str, list[str]] = {}


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any) -> None:
    """A short account of each failed VM run, last: CI keeps the end of the output when it cuts the middle."""
    for story, nodeids in FAILED_RUNS.items():
        terminalreporter.section("where the failed VM run got to", sep="-")
        terminalreporter.write_line("failed: " + ", ".join(n.split("::")[-1] for n in nodeids))
        terminalreporter.write_line(story)


# test module -> seconds of its tests, set-up (the image, the VM run) included
MODULE_SECONDS: dict[str, float] = {}
STARTED = time.time()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # pytest-xdist: the node id carries the group ("...::test@group").
    nodeid = report.nodeid.split("@", 1)[0]
    module = nodeid.split("::", 1)[0]
    MODULE_SECONDS[module] = MODULE_SECONDS.get(module, 0.0) + report.duration
    props = dict(report.user_properties)
    if "vm_run" in props and report.failed:
        FAILED_RUNS.setdefault(props["vm_run"], []).append(nodeid)
    if "fault" in props and not (report.when != "call" and report.passed):
        row, outcome = props["fault"]
        result = "passed" if report.passed else ("skipped" if report.skipped else "FAILED")
        if FAULT_ROWS.get(nodeid, ("", "", "passed"))[2] == "passed":
            FAULT_ROWS[nodeid] = (row, outcome, result)


def time_table(seconds: dict[str, float], commit: str, day: str, wall: float, workers: int) -> str:
    lines = [
        "# How long each VM test took",
        "",
        f"Written by the VM tests (tests/vm/conftest.py) in the run of {day} on commit {commit}:",
        "each module's tests with their set-up (building the image, the QEMU runs), under TCG on",
        "the 2-core machine docs/platform.md describes, with the base images cached.",
        "",
        "| test module | minutes |",
        "|---|---|",
    ]
    for module, secs in seconds.items():
        lines.append(f"| `{module}` | {secs / 60:.1f} |")
    lines.append(f"| all of them | {sum(seconds.values()) / 60:.1f} |")
    at_once = "one module at a time" if workers == 1 else f"{workers} modules at a time (pytest-xdist)"
    lines += ["", f"The whole pytest run (unit tests too) took {wall / 60:.1f} minutes, {at_once}."]
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
                rep.user_properties.append(("vm_run", value.timeline() + "\n" + value.console_tail(12)))
    mark = item.get_closest_marker("fault")
    if mark is not None:
        # Read back by pytest_runtest_logreport, in this process or in xdist's controller.
        rep.user_properties.append(("fault", list(mark.args)))


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
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the controller has every report and writes the tables
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
        workers = getattr(session.config.option, "numprocesses", None) or 1
        text = time_table(vm_modules, commit or "?", day, time.time() - STARTED, workers)
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
