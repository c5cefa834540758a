"""restore-unit's checks that need no VM: the dynamic user a restored tree runs as."""

from __future__ import annotations

import types

import pytest

from seamless_systemd import restore, systemd
from seamless_systemd.errors import RestoreError
from seamless_systemd.systemd import UnitInfo


def with_uid(uid: int | None) -> UnitInfo:
    return UnitInfo(
        "dyn.service", "loaded", "activating", "start", 0, "/x", "forking", None, "", "", "", dynamic_uid=uid
    )


def test_same_dynamic_uid_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd, "unit_info", lambda name: with_uid(63288))
    restore._same_dynamic_user("dyn.service", 63288)


def test_other_dynamic_uid_refuses_the_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd, "unit_info", lambda name: with_uid(61200))
    with pytest.raises(RestoreError, match=r"UID 61200 in this boot.*run as UID 63288"):
        restore._same_dynamic_user("dyn.service", 63288)


def test_unit_without_dynamic_user_is_not_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(name: str) -> UnitInfo:
        raise AssertionError("systemd asked although the unit had no dynamic user")

    monkeypatch.setattr(systemd, "unit_info", fail)
    restore._same_dynamic_user("plain.service", None)


@pytest.mark.parametrize(
    ("dynamic", "uid", "expected"),
    [(True, 63288, 63288), (True, systemd.UID_UNSET, None), (False, 0, None)],
)
def test_dynamic_uid_read_from_the_service(dynamic: bool, uid: int, expected: int | None) -> None:
    unit = types.SimpleNamespace(Service=types.SimpleNamespace(DynamicUser=dynamic, UID=uid))
    assert systemd._dynamic_uid(unit) == expected
