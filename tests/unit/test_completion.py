"""bash completion of seamless-upgrade, run by bash with the bash-completion library, as on a terminal."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "packaging/files/bash-completion/seamless-upgrade"
LIBRARY = Path("/usr/share/bash-completion/bash_completion")
needs_library = pytest.mark.skipif(not LIBRARY.exists(), reason="needs the bash-completion package")


def complete(line: str) -> list[str]:
    """What <TAB> offers at the end of LINE."""
    words = line.split(" ")
    program = f"""
source {LIBRARY}
source {SCRIPT}
COMP_WORDS=({" ".join(shlex.quote(w) for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={shlex.quote(line)}
COMP_POINT={len(line)}
_seamless_upgrade
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True).stdout
    return sorted(w for w in out.split("\n") if w)


@needs_library
def test_commands_and_their_options_are_offered() -> None:
    assert complete("seamless-upgrade r") == ["report", "run"]
    assert complete("seamless-upgrade run --") == ["--help", "--kernel", "--or-reboot"]
    assert complete("seamless-upgrade --config-dir /etc/seamless report --s") == ["--svg"]
    assert "disarm" in complete("seamless-upgrade ")


@needs_library
def test_kernel_versions_come_from_boot() -> None:
    installed = sorted(p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*"))
    assert complete("seamless-upgrade plan --kernel ") == installed
