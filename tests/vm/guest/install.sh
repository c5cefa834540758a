#!/bin/sh
# Runs inside the image (chroot) at build time.
set -e
cd /usr/local/lib/seamless-test
cp seamless-*.service /etc/systemd/system/
SCENARIO=$(cat /etc/seamless-test/scenario)
systemctl enable seamless-test.service seamless-spoiler.service
if [ "$SCENARIO" != workload ]; then
	systemctl enable seamless-demo@7777.service seamless-demo@7778.service seamless-demo@7779.service
fi
TYPES="seamless-exec seamless-notify seamless-forking seamless-forking-nopid seamless-oneshot seamless-prefork seamless-backend seamless-frontend seamless-sandboxed"
if [ "$SCENARIO" = full ]; then
	for u in $TYPES; do systemctl enable "$u.service"; done
fi
mkdir -p /etc/seamless/conf.d /var/lib/seamless-test
if [ "$SCENARIO" != workload ]; then
	cp config.yaml /etc/seamless/conf.d/50-demo.yaml
fi
if [ "$SCENARIO" = full ]; then
	cp types.yaml /etc/seamless/conf.d/60-types.yaml
fi
# A persistent journal: the old boot's messages are read after the kexec.
mkdir -p /var/log/journal
# Not used by the tests, and it fails without real NVDIMMs to monitor.
systemctl mask ndctl-monitor.service
# A user's workload (make demo WORKLOAD=DIR).
WL=/usr/local/lib/seamless-workload
if [ -d "$WL" ]; then
	if [ -f "$WL/setup.sh" ]; then
		echo "Running the workload's setup.sh"
		(cd "$WL" && sh ./setup.sh)
	fi
	for f in "$WL"/*.service "$WL"/*.socket "$WL"/*.timer; do
		[ -f "$f" ] || continue
		cp "$f" /etc/systemd/system/
		if grep -q '^\[Install\]' "$f"; then
			systemctl enable "$(basename "$f")"
		fi
	done
	if [ -f "$WL/config.yaml" ]; then
		cp "$WL/config.yaml" /etc/seamless/conf.d/70-workload.yaml
	fi
fi
