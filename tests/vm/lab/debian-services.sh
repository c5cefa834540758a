#!/bin/sh
# Lab: Debian's own data services, their units as shipped (tests/workloads/*):
# what their units say, what plan says of each, and what the trial dump
# (seamless-upgrade arm) finds; disarmed again at the end.
# python3 -m tests.vm.vm lab tests/vm/lab/debian-services.sh --workload "tests/workloads/redis ..."
UNITS="redis-server.service memcached.service apache2.service php8.2-fpm.service haproxy.service postgresql@15-main.service mariadb.service"
sleep 5
for u in $UNITS; do
	echo "===== $u: $(systemctl show -p ActiveState,MainPID,Type --value "$u" | tr '\n' ' ')"
	systemctl cat "$u" 2>&1 | grep -v '^#' | grep -v '^$'
	pid=$(systemctl show -p MainPID --value "$u")
	[ "$pid" -gt 0 ] 2>/dev/null || continue
	for p in $(cat "/sys/fs/cgroup$(systemctl show -p ControlGroup --value "$u")/cgroup.procs"); do
		echo "-- pid $p $(cat /proc/$p/comm) ns: $(readlink /proc/$p/ns/user /proc/$p/ns/mnt /proc/$p/ns/ipc | tr '\n' ' ')"
		ls -l /proc/$p/fd 2>/dev/null | awk '{print $NF}' | grep -v '^/' | grep -v socket | sort | uniq -c | head
		grep -E 'SYSV|io_uring|\[' /proc/$p/maps | awk '{print $6}' | sort | uniq -c | head
	done
done
echo "===== ipcs"; ipcs 2>&1
echo "===== plan, each alone"
for u in $UNITS; do
	printf 'units: [%s]\n' "$u" > /etc/seamless/conf.d/99-lab.yaml
	echo "--- $u"
	seamless-upgrade plan 2>&1 | tail -n 12
	echo "--- $u: arm (trial dump)"
	timeout 300 seamless-upgrade arm 2>&1 | tail -n 12
	seamless-upgrade disarm 2>&1 | tail -n 2
done
rm -f /etc/seamless/conf.d/99-lab.yaml
