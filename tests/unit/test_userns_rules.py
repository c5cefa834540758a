"""The kernel rules behind plan's refusal of PrivateUsers= (docs/design.md), on this kernel.

If one of them ever stops holding, the refusal is to be revisited: a CRIU change could
then keep such services. The VM test checks the same on the guest's kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parents[1] / "vm/guest/userns_rules.py"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_no_chosen_pid_from_a_user_namespace_and_no_entering_it_with_threads() -> None:
    out = subprocess.run([sys.executable, str(PROBE)], capture_output=True, text=True, timeout=60, check=True)
    seen = json.loads(out.stdout)
    if "single_unshare" in seen:
        pytest.skip(f"this machine refuses user namespaces here ({seen['single_unshare']})")
    assert seen["threaded_unshare"] == "EINVAL", seen
    assert int(seen["caps_in_userns"], 16) & (1 << 40), seen  # CAP_CHECKPOINT_RESTORE, in the namespace
    assert seen["ns_last_pid"] == "EPERM", seen
