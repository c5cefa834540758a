#!/bin/sh
# Lab: where `seamless-upgrade plan` spends its seconds under TCG (11 s for
# the demo's three units in test_dracut, 17 s in the full scenario): the
# initramfs listing it reads, the command itself twice, then cProfile's view.
# python3 -m tests.vm.vm lab tests/vm/lab/plan-profile.sh
# shellcheck source=/dev/null
. /usr/local/lib/seamless-test/lab-timer.sh
B=6.1.0-53-cloud-amd64
ls -la /boot/initrd.img-$B
t lsinitramfs /boot/initrd.img-$B
t lsinitramfs /boot/initrd.img-$B
t seamless-upgrade plan
t seamless-upgrade plan
t seamless-upgrade status
t criu check
echo "--- cProfile of plan, by cumulative time"
python3 -m cProfile -s cumtime /usr/bin/seamless-upgrade plan 2>&1 | grep -A45 "Ordered by"
echo "--- by own time"
python3 -m cProfile -s tottime /usr/bin/seamless-upgrade plan 2>&1 | grep -A25 "Ordered by"
