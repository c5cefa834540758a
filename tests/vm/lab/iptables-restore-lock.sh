#!/bin/sh
# Lab: the connection lock as netlock.lock puts it up, one iptables-restore
# --noflush run per family, on an empty ruleset (a fresh network namespace,
# as in the new kernel's boot), against the three iptables runs it replaced;
# each timed, then the rules as iptables lists them.
# python3 -m tests.vm.vm lab tests/vm/lab/iptables-restore-lock.sh
# shellcheck source=/dev/null
. /usr/local/lib/seamless-test/lab-timer.sh
iptables --version
cat > /tmp/lock4 <<'R'
*filter
:SEAMLESS-0123456789ab - [0:0]
-I INPUT -j SEAMLESS-0123456789ab
-A SEAMLESS-0123456789ab -p tcp -s 10.0.2.2 --sport 40000 -d 10.0.2.15 --dport 7790 -j DROP
-A SEAMLESS-0123456789ab -p tcp -s 10.0.2.2 --sport 40001 --dport 8080 -j DROP
COMMIT
R
sed -e 's/10.0.2.2/fd77::2/' -e 's/10.0.2.15/fd77::1/' /tmp/lock4 > /tmp/lock6
cat > /tmp/in-netns.sh <<'S'
. /usr/local/lib/seamless-test/lab-timer.sh
t iptables-restore -w --noflush /tmp/lock4
cat /tmp/lab-step.log
t ip6tables-restore -w --noflush /tmp/lock6
cat /tmp/lab-step.log
iptables -S; ip6tables -S
echo "--- the same again (a second lock of the unit)"
iptables-restore -w --noflush /tmp/lock4; echo "rc $?"; iptables -S
echo "--- the three runs it replaced, in another empty namespace"
S
unshare -n sh /tmp/in-netns.sh
cat > /tmp/old.sh <<'S'
. /usr/local/lib/seamless-test/lab-timer.sh
t iptables -w -N SEAMLESS-0123456789ab
t iptables -w -I INPUT -j SEAMLESS-0123456789ab
t iptables -w -A SEAMLESS-0123456789ab -p tcp -s 10.0.2.2 --sport 40000 -d 10.0.2.15 --dport 7790 -j DROP
S
unshare -n sh /tmp/old.sh
