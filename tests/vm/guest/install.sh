#!/bin/sh
# Runs inside the image (chroot) at build time.
set -e
cd /usr/local/lib/seamless-test
cp seamless-*.service /etc/systemd/system/
systemctl enable seamless-demo@7777.service seamless-demo@7778.service seamless-demo@7779.service \
	seamless-test.service seamless-spoiler.service
TYPES="seamless-exec seamless-notify seamless-forking seamless-forking-nopid seamless-oneshot seamless-prefork seamless-backend seamless-frontend"
if [ "$(cat /etc/seamless-test/scenario)" = full ]; then
	for u in $TYPES; do systemctl enable "$u.service"; done
fi
mkdir -p /etc/seamless/conf.d /var/lib/seamless-test
cp config.yaml /etc/seamless/conf.d/50-demo.yaml
if [ "$(cat /etc/seamless-test/scenario)" = full ]; then
	cp types.yaml /etc/seamless/conf.d/60-types.yaml
fi
# A persistent journal: the old boot's messages are read after the kexec.
mkdir -p /var/log/journal
# Not used by the tests, and it fails without real NVDIMMs to monitor.
systemctl mask ndctl-monitor.service
