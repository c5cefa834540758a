"""What a real browser draws of an upgrade's timeline (seamless-upgrade report --svg).

Headless Chromium (Debian's package, installed by tests/vm/host-deps.sh) lays
the SVG out in a page whose script writes down, as JSON in the page, the box
of every bar, row name, outcome and tick label, and whether the bar is what
the browser finds at its own centre (drawn, not covered). check() then asserts
what a reader of the picture relies on.
"""

from __future__ import annotations

import html
import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

_SCRIPT = """
const box = e => { const b = e.getBoundingClientRect(); return [b.x, b.y, b.width, b.height]; };
const hit = e => {
  const [x, y, w, h] = box(e);
  return document.elementFromPoint(x + w / 2, y + h / 2) === e;
};
const all = q => [...document.querySelectorAll(q)];
document.getElementById('drawn').textContent = JSON.stringify({
  svg: box(document.querySelector('svg')),
  bars: all('rect.bar').map(e => ({row: e.dataset.row, phase: e.dataset.phase, box: box(e), hit: hit(e),
                                   fill: getComputedStyle(e).fill})),
  rows: all('text.row').map(e => ({row: e.dataset.row, box: box(e), text: e.textContent})),
  outcomes: all('text.outcome').map(e => ({row: e.dataset.row, outcome: e.dataset.outcome, box: box(e),
                                           text: e.firstChild.textContent})),
  ticks: all('text.tick').map(e => ({box: box(e), text: e.textContent})),
});
"""


def draw(svg: str, workdir: Path) -> dict[str, Any]:
    """Chromium's layout of SVG (and a screenshot beside it, timeline.png, for a human)."""
    assert CHROMIUM is not None, "chromium is not installed (tests/vm/host-deps.sh installs it)"
    workdir.mkdir(parents=True, exist_ok=True)
    page = workdir / "timeline.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'></head><body style='margin:0'>"
        f"{svg}<pre id='drawn'></pre><script>{_SCRIPT}</script></body></html>"
    )
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={workdir / 'chromium-profile'}",
        "--window-size=1200,900",
    ]
    dom = subprocess.run(
        [*argv, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180, check=True
    ).stdout
    subprocess.run(
        [*argv, f"--screenshot={workdir / 'timeline.png'}", page.as_uri()],
        capture_output=True,
        timeout=180,
        check=False,
    )
    found = re.search(r"<pre id=\"drawn\">(.*?)</pre>", dom, re.S)
    assert found and found.group(1), f"the page's script wrote nothing: {dom[-2000:]}"
    drawn: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return drawn


def _overlap(a: list[float], b: list[float]) -> bool:
    return (
        a[0] < b[0] + b[2] - 0.5
        and b[0] < a[0] + a[2] - 0.5
        and a[1] < b[1] + b[3] - 0.5
        and b[1] < a[1] + a[3] - 0.5
    )


def check(drawn: dict[str, Any], rep: dict[str, Any]) -> None:
    """What a reader relies on: every unit has its row and outcome; bars in order, in the picture, visible."""
    sx, sy, sw, sh = drawn["svg"]
    assert sw > 500 and sh > 100, drawn["svg"]
    rows = {r["row"]: r for r in drawn["rows"]}
    outcomes = {o["row"]: o for o in drawn["outcomes"]}
    for u in rep["units"]:
        assert u["unit"] in rows, (u["unit"], list(rows))
        assert outcomes[u["unit"]]["outcome"] == u["outcome"]
        assert outcomes[u["unit"]]["text"].startswith(u["outcome"])
    for bar in drawn["bars"]:
        x, y, w, h = bar["box"]
        assert sx <= x and x + w <= sx + sw + 0.5 and sy <= y and y + h <= sy + sh, bar
        assert w >= 1 and h > 0, bar
        assert bar["hit"] or w < 3, f"{bar} is covered by something else"
        label = rows[bar["row"]]["box"]
        # On its row's line, right of its name, left of its outcome.
        assert abs((y + h / 2) - (label[1] + label[3] / 2)) < 6, (bar, label)
        assert x >= label[0] + label[2], (bar, label)
        if bar["row"] in outcomes:
            assert x + w <= outcomes[bar["row"]]["box"][0] + 0.5, (bar, outcomes[bar["row"]])
    for u in rep["units"]:
        mine = {b["phase"]: b["box"] for b in drawn["bars"] if b["row"] == u["unit"]}
        if u["outcome"] == "restored":
            # Checkpoint, then not running, then restore, left to right.
            assert {"checkpoint", "down", "restore"} <= set(mine), (u["unit"], mine)
            assert mine["checkpoint"][0] <= mine["down"][0] <= mine["restore"][0], mine
    texts = [r["box"] for r in drawn["rows"]] + [o["box"] for o in drawn["outcomes"]]
    for i, a in enumerate(texts):
        assert a[2] > 0, f"a text drawn with no width: {a}"
        assert sx <= a[0] and a[0] + a[2] <= sx + sw, f"a text runs out of the picture: {a}, {drawn['svg']}"
        for b in texts[i + 1 :]:
            assert not _overlap(a, b), (a, b)
    ticks = [t["box"] for t in drawn["ticks"]]
    assert len(ticks) >= 3
    for a, b in itertools.pairwise(ticks):
        assert a[0] + a[2] <= b[0], (a, b)
