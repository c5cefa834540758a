#!/bin/sh
# Runs inside the image (chroot) at build time.
set -e
cd /usr/local/lib/seamless-test
cp seamless-demo.service seamless-test.service /etc/systemd/system/
systemctl enable seamless-demo.service seamless-test.service
cp config.yaml /etc/seamless/conf.d/50-demo.yaml 2>/dev/null || { mkdir -p /etc/seamless/conf.d; cp config.yaml /etc/seamless/conf.d/50-demo.yaml; }
mkdir -p /var/lib/seamless-test
# Messages of the kernel and of systemd on the serial console help when a boot hangs.
mkdir -p /etc/systemd/system.conf.d
printf '[Manager]\nShowStatus=yes\n' > /etc/systemd/system.conf.d/50-test.conf
# A persistent journal: the old boot's messages are read after the kexec.
mkdir -p /var/log/journal
# Not used by the tests, and it fails without real NVDIMMs to monitor.
systemctl mask ndctl-monitor.service
