#!/bin/sh
# Lab: where podman's checkpoint of the full scenario's container spends its
# time under TCG (55 s in the upgrade of stop 30's run, 35 s after every other
# unit's dump had ended): podman's own start, the checkpoint with its default
# compression (zstd), without compression and with gzip, CRIU's part
# (--print-stats), the size of each archive, and a restore from it.
# python3 -m tests.vm.vm lab tests/vm/lab/podman-checkpoint-time.sh
# shellcheck source=/dev/null
. /usr/local/lib/seamless-test/lab-timer.sh
t podman import /usr/local/lib/seamless-test/ctr-rootfs.tar localhost/seamless-py
t systemctl start seamless-podman.service
t podman --version
t podman ps
t podman version
ID=$(cat /run/seamless-podman.service.ctr-id)
t podman container checkpoint --leave-running --export /tmp/zstd.tar "$ID"
t podman container checkpoint --leave-running --export /tmp/zstd2.tar "$ID"
t podman container checkpoint --leave-running --compress none --export /tmp/none.tar "$ID"
t podman container checkpoint --leave-running --compress gzip --export /tmp/gzip.tar "$ID"
t podman container checkpoint --leave-running --print-stats --export /tmp/stats.tar "$ID"
cat /tmp/lab-step.log
ls -la /tmp/*.tar
t podman container checkpoint --export /tmp/final.tar "$ID"
t podman container restore --import /tmp/final.tar
t podman ps
t podman container checkpoint --compress none --export /tmp/final-none.tar "$ID"
t podman container restore --import /tmp/final-none.tar
t podman ps
cat /tmp/lab-step.log
