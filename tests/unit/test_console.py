"""The VM harness reads the guest's events from the serial console, where kernel messages interleave."""

from __future__ import annotations

from tests.vm.vm import ConsoleEvents


def feed_all(lines: list[str]) -> list[tuple[str, dict[str, object]]]:
    reader = ConsoleEvents()
    return [got for line in lines if (got := reader.feed(line)) is not None]


def test_plain_event_lines() -> None:
    lines = ["[  1.0] booting", 'SEAMLESS-TEST boot {"phase": ""}\r', "noise", "SEAMLESS-TEST done {}"]
    assert feed_all(lines) == [("boot", {"phase": ""}), ("done", {})]


def test_kernel_message_in_the_middle_of_an_event_is_taken_out() -> None:
    lines = [
        'SEAMLESS-TEST rebooted {"blob": "29809a09f[   32.150763] powernow_k8: no transitions',
        'c0ffee", "n": 3}',
        "SEAMLESS-TEST done {}",
    ]
    assert feed_all(lines) == [("rebooted", {"blob": "29809a09fc0ffee", "n": 3}), ("done", {})]


def test_an_event_broken_for_good_does_not_swallow_the_next() -> None:
    lines = ['SEAMLESS-TEST after {"a": "x[   40.000001] virtio: something', "SEAMLESS-TEST done {}"]
    assert feed_all(lines) == [("done", {})]


def test_unparsable_event_kept_raw() -> None:
    assert feed_all(["SEAMLESS-TEST odd not-json"]) == [("odd", {"raw": "not-json"})]
