#!/usr/bin/python3
"""Test-only: damage two units' checkpoint images between checkpoint and kexec.

seamless-demo@7778: a flipped byte, checksums left alone  -> the restore service
                    must notice and start the unit afresh.
seamless-demo@7779: core image truncated, checksums redone -> CRIU itself fails
                    at restore; the unit must still come up afresh.
Runs as ExecStop= of seamless-spoiler.service, only if /var/lib/seamless-test/spoil exists.
If /var/lib/seamless-test/garble exists instead, the upgrade's manifest is cut in half:
the new boot must restore nothing, start every unit and say why. If
/var/lib/seamless-test/loosen exists, one image of seamless-demo@7798 gets another
owner and mode 0644: that unit must start afresh.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

GARBLE = "/var/lib/seamless-test/garble"
if os.path.exists(GARBLE):
    armed = json.loads(Path("/run/seamless/armed.json").read_text())
    manifest = Path(armed["mount"]) / armed["generation"] / "manifest.json"
    text = manifest.read_bytes()
    manifest.write_bytes(text[: len(text) // 2])
    os.unlink(GARBLE)
    os.sync()
    print(f"cut {manifest} to {len(text) // 2} of {len(text)} bytes", flush=True)
    sys.exit(0)
LOOSEN = "/var/lib/seamless-test/loosen"
if os.path.exists(LOOSEN):
    # seamless-demo@7798: one image file handed to nobody and opened to all (0644):
    # the restore must refuse the tree and start the unit afresh.
    armed = json.loads(Path("/run/seamless/armed.json").read_text())
    imgs = Path(armed["mount"]) / armed["generation"] / "units/seamless-demo@7798.service/images"
    pages = max(imgs.rglob("pages-*.img"), key=lambda p: p.stat().st_size)
    os.chown(pages, 65534, 65534)
    os.chmod(pages, 0o644)
    os.unlink(LOOSEN)
    os.sync()
    print(f"gave {pages} to nobody, mode 0644", flush=True)
    sys.exit(0)
if not os.path.exists("/var/lib/seamless-test/spoil"):
    sys.exit(0)
armed = json.loads(Path("/run/seamless/armed.json").read_text())
gen = Path(armed["mount"]) / armed["generation"] / "units"

imgs = gen / "seamless-demo@7778.service/images"
# The largest page image, of the final dump or of a pre-dump round (the restore reads them all).
pages = max(imgs.rglob("pages-*.img"), key=lambda p: p.stat().st_size)
data = bytearray(pages.read_bytes())
data[len(data) // 2] ^= 0xFF
pages.write_bytes(bytes(data))
print(f"flipped a byte in {pages}", flush=True)

udir = gen / "seamless-demo@7779.service"
for core in (udir / "images").glob("core-*.img"):
    core.write_bytes(core.read_bytes()[:16])
    print(f"truncated {core}", flush=True)
# Redone the way an older package wrote them (a plain path -> sha256 mapping, still read).
sums = {}
for p in sorted((udir / "images").rglob("*")):
    if p.is_file() and not p.is_symlink():
        sums[str(p.relative_to(udir / "images"))] = hashlib.sha256(p.read_bytes()).hexdigest()
(udir / "checksums.json").write_text(json.dumps(sums))
os.sync()
