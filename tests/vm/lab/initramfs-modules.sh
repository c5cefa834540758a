#!/bin/sh
# Lab: update-initramfs under TCG with MODULES=dep (the drivers this VM needs)
# against Debian's default MODULES=most (docs/testing.md, make test's time):
# the setup scenario's package life rebuilds one initramfs with MODULES=dep.
# Measured 2026-12-07 (a first version of this lab: update-initramfs -u with
# dep, mkinitramfs with most): dep 68.6 s (200 files, 18 modules), most
# 194.6 s (457 files, 194 modules); update-initramfs -u with most took 240 s
# in package-steps.sh.
# python3 -m tests.vm.vm lab tests/vm/lab/initramfs-modules.sh
# shellcheck source=/dev/null
. /usr/local/lib/seamless-test/lab-timer.sh
B=6.1.0-53-cloud-amd64
for modules in dep most; do
	echo "MODULES=$modules" >/etc/initramfs-tools/conf.d/zz-lab.conf
	t mkinitramfs -o "/tmp/initrd-$modules" "$B"
	echo "MODULES=$modules: $(lsinitramfs "/tmp/initrd-$modules" | wc -l) files, $(lsinitramfs "/tmp/initrd-$modules" | grep -c '\.ko') modules"
done
