"""What 'seamless-upgrade status' and 'report' read: the armed upgrade, the last report, what is held."""

from __future__ import annotations

from typing import Any

from seamless_systemd import config, newkernel, ram, restore, state, upgrade


def last_report() -> dict[str, Any] | None:
    gen = restore.current_generation()
    data: dict[str, Any] | None = None
    if gen is not None and gen.report.exists():
        data = state.read_json(gen.report)
    elif (state.REPORT_DIR / "last.json").exists():
        data = state.read_json(state.REPORT_DIR / "last.json")
    if data is None:
        return None
    # seamless-warm.service may end after the report was written.
    warmed = state.REPORT_DIR / f"{data.get('generation')}.page-cache.json"
    if warmed.exists():
        data.setdefault("warm", {})["page_cache"] = state.read_json(warmed)
    return data


def ram_held() -> dict[str, Any] | None:
    """What seamless-ram.service holds now (RAM on demand), without the page list."""
    if not ram.TAKEN.exists():
        return None
    data: dict[str, Any] = state.read_json(ram.TAKEN)
    data.pop("addresses", None)
    return data


def data(cfg: config.Config) -> dict[str, Any]:
    """What 'status --json' says (and the D-Bus service's Status)."""
    armed = state.read_json(state.ARMED) if state.ARMED.exists() else None
    return {
        "armed": armed,
        "kexec_loaded": upgrade.kexec_loaded(),
        "units": list(cfg.units),
        "containers": list(cfg.containers),
        "last_report": last_report(),
        "ram": ram_held(),
        # Installed kernels newer than the running one, as their install hook judged them.
        "kernels": newkernel.pending(),
    }
