"""How make test shares the machine: two test modules at a time, the longest VM runs first.

make test runs pytest with two workers (pytest-xdist, ``--dist loadgroup``):
each QEMU run is mostly one emulated CPU busy, so a second run beside it uses
the core that would sit idle (docs/testing.md has the figures). Every test is
put in the group of its module, so a module's QEMU run (a module- or
session-scoped fixture) is made once, on one worker; test_unit_types and
test_upgrade read the same run (conftest's session fixture ``scenario``) and
share a group. The groups are handed out in the order below, longest first,
so that the short ones fill the end instead of one long run starting last.
A plain ``pytest`` (no ``-n``) runs in that order too.
"""

from __future__ import annotations

import pytest

# VM test modules -> their group, longest first (minutes in docs/vm-times.md).
VM_GROUPS = {
    "tests/vm/test_unit_types.py": "full scenario",
    "tests/vm/test_upgrade.py": "full scenario",
    "tests/vm/test_services.py": "services",
    "tests/vm/test_setup.py": "setup",
    "tests/vm/test_bench.py": "bench",
    "tests/vm/test_faults.py": "faults",
    "tests/vm/test_power_cuts.py": "power cuts",
    "tests/vm/test_ram_on_demand.py": "ram on demand",
    "tests/vm/test_dracut.py": "dracut",
    "tests/vm/test_workload.py": "workload",
    "tests/vm/test_trixie.py": "trixie",
}
ORDER = list(dict.fromkeys(VM_GROUPS.values()))


def group_of(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return VM_GROUPS.get(module, module)


def rank(group: str) -> tuple[int, int]:
    """Known VM groups in their order, then any other VM module, then the rest (quick ones)."""
    if group in ORDER:
        return (0, ORDER.index(group))
    return (1 if group.startswith("tests/vm/") else 2, 0)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Before xdist's own hook, which reads the mark into the node ids under --dist loadgroup.
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of(item.nodeid)))
    # sort() is stable: within a group, and among the quick ones, the order stays pytest's.
    items.sort(key=lambda item: rank(group_of(item.nodeid)))
