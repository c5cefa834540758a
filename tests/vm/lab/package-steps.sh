#!/bin/sh
# Lab: what the setup scenario's package life costs under TCG (docs/testing.md,
# make test's time): the initramfs of one kernel made again by update-initramfs
# (what initramfs-tools' trigger runs after our package is installed or
# removed), the same without compression (is it the compressor?), arm and
# disarm, and a whole dpkg -r with its trigger.
# python3 -m tests.vm.vm lab tests/vm/lab/package-steps.sh
# shellcheck source=/dev/null
. /usr/local/lib/seamless-test/lab-timer.sh
B=6.1.0-53-cloud-amd64
t update-initramfs -u -k "$B"
t mkinitramfs -c none -o /tmp/initrd-none "$B"
t seamless-upgrade arm
t seamless-upgrade disarm
t dpkg -r seamless-systemd
tail -5 /tmp/lab-step.log
