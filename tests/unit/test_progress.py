"""Progress of plan, arm and run: the steps, the bytes a dump has written so far, on a terminal."""

from __future__ import annotations

import io
import time
from pathlib import Path

from seamless_systemd import progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_growing_says_the_bytes_written_so_far(tmp_path: Path) -> None:
    seen: list[progress.Step] = []
    what = "Trial checkpoint of a.service"
    with (
        progress.watched(seen.append),
        progress.growing("trial-dump", what, "a.service", tmp_path, every=0.05),
    ):
        for i in range(4):
            (tmp_path / f"pages-{i}.img").write_bytes(b"x" * (1 << 20))
            time.sleep(0.12)
    assert seen[0] == progress.Step("trial-dump", "Trial checkpoint of a.service", "a.service")
    live = [s.nbytes for s in seen if s.live]
    assert live and live == sorted(live) and live[-1] is not None and live[-1] >= 3 << 20, live
    assert seen[-1].text.endswith(": done") and seen[-1].nbytes is not None and seen[-1].nbytes >= 4 << 20
    # Nobody watching: no step reaches the list any more.
    progress.step("plan", "unseen")
    assert seen[-1].text != "unseen"


def test_a_plain_stream_gets_a_line_per_step_and_no_live_updates() -> None:
    out = io.StringIO()
    show = progress.Terminal(out)
    show(progress.Step("plan", "Checking what the upgrade would do"))
    show(progress.Step("trial-dump", "Trial checkpoint of a.service", "a.service", 5 << 20, live=True))
    show(progress.Step("trial-dump", "Trial checkpoint of a.service: done", "a.service", 64 << 20))
    show.close()
    assert out.getvalue() == (
        "[plan] Checking what the upgrade would do\n"
        "[trial-dump] Trial checkpoint of a.service: done (64 MiB)\n"
    )


def test_a_terminal_line_is_rewritten_in_place() -> None:
    out = Tty()
    show = progress.Terminal(out)
    show(progress.Step("trial-dump", "Trial checkpoint of a.service", "a.service", 5 << 20, live=True))
    show(progress.Step("trial-dump", "Trial checkpoint of a.service", "a.service", 9 << 20, live=True))
    show(progress.Step("trial-dump", "Trial checkpoint of a.service: done", "a.service", 12 << 20))
    show(progress.Step("kexec-load", "Loading kernel B with kexec"))
    show.close()
    show(progress.Step("trial-dump", "Trial checkpoint of c.service", "c.service", 1 << 20, live=True))
    show.close()
    # Each step a line of its own; only the bytes of the step at work are rewritten in place.
    assert out.getvalue() == (
        "\r\x1b[KTrial checkpoint of a.service (5 MiB)"
        "\r\x1b[KTrial checkpoint of a.service (9 MiB)"
        "\r\x1b[KTrial checkpoint of a.service: done (12 MiB)\n"
        "\r\x1b[KLoading kernel B with kexec\n"
        "\r\x1b[KTrial checkpoint of c.service (1 MiB)"
        "\r\x1b[K"
    )
