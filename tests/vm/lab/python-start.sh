#!/bin/sh
# Lab: what starting Python and our command costs under TCG (each unit's
# checkpoint hook and restore-unit is a seamless-upgrade process of its own).
# python3 -m tests.vm.vm lab tests/vm/lab/python-start.sh
# shellcheck source=/dev/null
. /usr/local/lib/seamless-test/lab-timer.sh
for _ in 1 2 3; do t python3 -c pass; done
for _ in 1 2 3; do t python3 -S -c pass; done
for _ in 1 2 3; do t seamless-upgrade --help; done
for _ in 1 2; do t seamless-upgrade status; done
python3 -X importtime -c 'import seamless_systemd.cli' 2>&1 | sort -t'|' -k2 -n | tail -25
