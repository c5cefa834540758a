#!/bin/sh
# Lab: what Python's start costs under TCG before restore-unit and
# restore-prepare do anything (docs/benchmarks.md): the interpreter alone, and
# the imports of seamless-upgrade's command line, each module's own time.
# python3 -m tests.vm.vm lab tests/vm/lab/python-start.sh
# The script setuptools makes for a console_scripts entry point (what
# /usr/bin/seamless-upgrade was before bin/seamless-upgrade), for comparison.
cat > /tmp/entry-point-script <<'PY'
import re
import sys
from importlib.metadata import distribution
def importlib_load_entry_point(spec, group, name):
    dist_name, _, _ = spec.partition('==')
    matches = (
        entry_point
        for entry_point in distribution(dist_name).entry_points
        if entry_point.group == group and entry_point.name == name
    )
    return next(matches).load()
sys.argv[0] = re.sub(r'(-script\.pyw?|\.exe)?$', '', sys.argv[0])
sys.exit(importlib_load_entry_point('seamless-systemd==0.1.0', 'console_scripts', 'seamless-upgrade')())
PY
ls /usr/lib/python3/dist-packages | grep -i seamless
for i in 1 2 3; do
	/usr/bin/time -f "console_scripts entry point --version: %e s" python3 /tmp/entry-point-script --version >/dev/null
	/usr/bin/time -f "python3 -c pass: %e s" python3 -c pass
	/usr/bin/time -f "python3 -S -c pass: %e s" python3 -S -c pass
	/usr/bin/time -f "python3 -I -c pass: %e s" python3 -I -c pass
	/usr/bin/time -f "import seamless_systemd.cli: %e s" python3 -c 'import seamless_systemd.cli'
	/usr/bin/time -f "import seamless_systemd.restore: %e s" python3 -c 'import seamless_systemd.restore'
	/usr/bin/time -f "seamless-upgrade --version: %e s" seamless-upgrade --version >/dev/null
done
python3 -X importtime -c 'import seamless_systemd.cli' 2>&1 | sort -t'|' -k2 -n | tail -45
echo "--- by own time"
python3 -X importtime -c 'import seamless_systemd.cli' 2>&1 | sort -t: -k2 -n | tail -40
