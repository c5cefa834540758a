"""A picture of one upgrade: its phases and each unit's bars on one time axis, as SVG.

In the manner of `systemd-analyze plot`: time runs left to right from the
start of `arm`; the first rows are the machine's phases (arm, the shutdown
and the kexec, the new kernel's boot up to the restore, the page cache read
back), then one row per unit: its checkpoint (CRIU dump, then the images'
checksum), the time it was not running, its restore, and its outcome
written at the end of the row. The times are the report's own, taken by both
kernels on the wall clock (report.build, 'at').

Everything is drawn from the report alone, so that `seamless-upgrade report
--svg FILE` works on any machine the report is copied to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from seamless_systemd.errors import SeamlessError

# Colours by phase (ColorBrewer's, as systemd-analyze's plot has its own few).
COLOURS = {
    "arm": "#9ecae1",
    "checkpoint": "#3182bd",
    "checksum": "#6baed6",
    "down": "#d9d9d9",
    "kexec": "#fdae6b",
    "boot": "#fd8d3c",
    "restore": "#31a354",
    "warm": "#a1d99b",
}
LEGEND = {
    "arm": "arm: plan, trial dumps, kexec load",
    "checkpoint": "checkpoint (CRIU dump)",
    "checksum": "images' checksum",
    "down": "not running",
    "kexec": "shutdown and kexec",
    "boot": "new kernel's boot to the first restore",
    "restore": "restore",
    "warm": "page cache read back",
}
OUTCOME_COLOURS = {"restored": "#31a354", "restarted": "#636363", "rerun": "#636363"}
FAILED = "#de2d26"

WIDTH = 1100
LABEL = 280  # the left column, for the rows' names
RIGHT = 260  # the right column, for the outcomes
ROW = 24
TOP = 64
FONT = "font-family:DejaVu Sans,Verdana,sans-serif;font-size:12px"


def escape(text: str) -> str:
    """TEXT for SVG text and attributes (xml.sax.saxutils would do, but it imports urllib.request:
    a quarter of a second of every seamless-upgrade start under emulation)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


@dataclass(frozen=True)
class Bar:
    phase: str
    start: float
    end: float
    note: str


@dataclass(frozen=True)
class Row:
    name: str
    bars: tuple[Bar, ...]
    outcome: str = ""
    reason: str = ""
    unit: str = ""


def _bar(phase: str, start: Any, end: Any, note: str = "") -> list[Bar]:
    if not isinstance(start, (int, float)) or not isinstance(end, (int, float)) or end < start:
        return []
    return [Bar(phase, float(start), float(end), note or LEGEND[phase])]


def rows(rep: dict[str, Any]) -> list[Row]:
    """The report's rows: the machine's phases first, then one per unit."""
    at = rep.get("at") or {}
    if not at.get("kernel_started"):
        outcome = rep.get("outcome", "no timeline")
        raise SeamlessError(
            f"upgrade {rep.get('generation')} has no timeline to draw ({outcome}): "
            "its new kernel never got to the restore, or the report is from an older seamless-systemd"
        )
    units = rep.get("units") or []
    dumps = [u["at"]["checkpoint_started"] for u in units if (u.get("at") or {}).get("checkpoint_started")]
    first_dump = min(dumps, default=at.get("kexec_requested"))
    restores = [u["at"]["restore_started"] for u in units if (u.get("at") or {}).get("restore_started")]
    first_restore = min(restores, default=at.get("finished"))
    out = [
        Row("arm", tuple(_bar("arm", at.get("arm_started"), at.get("kexec_requested") or at.get("armed")))),
        # From the kexec request (run), else from the first checkpoint (a plain systemctl kexec).
        Row(
            "shutdown, kexec",
            tuple(_bar("kexec", at.get("kexec_requested") or first_dump, at.get("kernel_started"))),
        ),
        Row("new kernel's boot", tuple(_bar("boot", at.get("kernel_started"), first_restore))),
    ]
    cache = (rep.get("warm") or {}).get("page_cache") or {}
    if cache.get("started_at") is not None and cache.get("seconds") is not None:
        mib = cache.get("read_bytes", 0) >> 20
        note = f"page cache read back: {mib} MiB in {cache['seconds']:.1f} s"
        out.append(
            Row(
                "page cache",
                tuple(_bar("warm", cache["started_at"], cache["started_at"] + cache["seconds"], note)),
            )
        )
    for u in units:
        t = u.get("at") or {}
        secs = u.get("seconds") or {}
        frozen = f", frozen {secs['frozen']:.2f} s" if secs.get("frozen") is not None else ""
        bars = _bar("checkpoint", t.get("checkpoint_started"), t.get("dumped"), f"checkpoint{frozen}")
        bars += _bar("checksum", t.get("dumped"), t.get("checkpoint_finished"))
        gone = t.get("checkpoint_finished") or t.get("dumped")
        back = t.get("restore_started") if u["outcome"] == "restored" else at.get("finished")
        bars += _bar("down", gone, back)
        if u["outcome"] == "restored":
            bars += _bar("restore", t.get("restore_started"), t.get("restore_finished"))
        out.append(Row(u["unit"], tuple(bars), u["outcome"], u.get("reason") or "", u["unit"]))
    return out


def _step(span: float) -> float:
    """A round tick step giving some 8 to 20 ticks over SPAN seconds."""
    raw = max(span, 1e-3) / 10
    base = 10.0 ** math.floor(math.log10(raw))
    return next(float(m * base) for m in (1, 2, 5, 10) if m * base >= raw)


# What fits in the right column at 12 px (the whole reason is the text's tooltip).
OUTCOME_CHARS = 34


def _outcome_text(row: Row) -> str:
    text = f"{row.outcome}: {row.reason}" if row.reason and row.outcome != "restored" else row.outcome
    return text if len(text) <= OUTCOME_CHARS else text[: OUTCOME_CHARS - 1] + "…"


def render(rep: dict[str, Any]) -> str:
    """The SVG of report REP."""
    table = rows(rep)
    times = [t for r in table for b in r.bars for t in (b.start, b.end)]
    if not times:
        raise SeamlessError(f"upgrade {rep.get('generation')} has no phase with a start and an end to draw")
    t0, t1 = min(times), max(times)
    span = max(t1 - t0, 1e-3)
    plot = WIDTH - LABEL - RIGHT

    def x(t: float) -> float:
        return round(LABEL + (t - t0) / span * plot, 2)

    height = TOP + ROW * len(table) + 40 + 18 * math.ceil(len(LEGEND) / 2) + 10
    kernel = rep.get("kernel") or {}
    title = f"Upgrade {rep.get('generation')}: kernel {kernel.get('from')} → {kernel.get('to')}"
    down = (rep.get("seconds") or {}).get("downtime")
    sub = f"first service frozen to last service back: {down:.1f} s" if isinstance(down, (int, float)) else ""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" style="{FONT}">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="10" y="20" style="font-size:15px;font-weight:bold">{escape(title)}</text>',
        f'<text x="10" y="38" fill="#444444">{escape(sub)}</text>',
    ]
    # The time axis: a grid line and a label per tick.
    step = _step(span)
    bottom = TOP + ROW * len(table)
    tick = 0.0
    while tick <= span + 1e-9:
        tx = x(t0 + tick)
        out.append(f'<line x1="{tx}" y1="{TOP - 6}" x2="{tx}" y2="{bottom}" stroke="#e0e0e0"/>')
        label = f"{tick:g} s"
        out.append(
            f'<text class="tick" x="{tx}" y="{TOP - 10}" text-anchor="middle" fill="#666666">{label}</text>'
        )
        tick += step
    for i, row in enumerate(table):
        y = TOP + i * ROW
        if i % 2:
            out.append(f'<rect x="0" y="{y}" width="{WIDTH}" height="{ROW}" fill="#f7f7f7"/>')
        name = row.name if len(row.name) <= 38 else row.name[:37] + "…"
        out.append(
            f'<text class="row" data-row="{escape(row.name)}" x="{LABEL - 8}" y="{y + 16}" '
            f'text-anchor="end">{escape(name)}</text>'
        )
        for b in row.bars:
            w = max(x(b.end) - x(b.start), 1.0)
            tip = f"{b.note}: {b.end - b.start:.2f} s, from {b.start - t0:.2f} s"
            out.append(
                f'<rect class="bar" data-row="{escape(row.name)}" data-phase="{b.phase}" x="{x(b.start)}" '
                f'y="{y + 4}" width="{round(w, 2)}" height="{ROW - 8}" fill="{COLOURS[b.phase]}">'
                f"<title>{escape(tip)}</title></rect>"
            )
        if row.outcome:
            colour = OUTCOME_COLOURS.get(row.outcome, FAILED)
            out.append(
                f'<text class="outcome" data-row="{escape(row.name)}" data-outcome="{escape(row.outcome)}" '
                f'x="{WIDTH - RIGHT + 8}" y="{y + 16}" fill="{colour}">{escape(_outcome_text(row))}'
                f"<title>{escape(row.reason or row.outcome)}</title></text>"
            )
    # The legend, two columns under the plot.
    for i, (phase, text) in enumerate(LEGEND.items()):
        lx = 10 + (i % 2) * (WIDTH // 2)
        ly = bottom + 30 + (i // 2) * 18
        out.append(
            f'<rect class="legend" x="{lx}" y="{ly - 10}" width="14" height="10" fill="{COLOURS[phase]}"/>'
        )
        out.append(f'<text x="{lx + 20}" y="{ly}">{escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
