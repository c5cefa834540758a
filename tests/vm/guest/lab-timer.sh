#!/bin/sh
# Sourced by the labs (tests/vm/lab/*.sh): t CMD... runs CMD, its output to
# /tmp/lab-step.log, and prints the command, its exit status and its seconds.
t() {
	s=$(date +%s.%N)
	"$@" >/tmp/lab-step.log 2>&1
	rc=$?
	e=$(date +%s.%N)
	printf '%-60s rc=%s %6.1f s\n' "$*" "$rc" "$(awk "BEGIN{print $e - $s}")"
}
