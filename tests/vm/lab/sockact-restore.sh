#!/bin/sh
# Lab: dump a socket-activated service (unix socket) and restore it with the
# .socket unit's socket passed in (--inherit-fd), in one boot.
set -x
systemctl daemon-reload
systemctl start seamless-sockact.socket
get() { python3 -c "
import socket,sys
s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect('/run/seamless-sockact.sock'); s.sendall(sys.argv[1].encode()+b'\n'); print(s.makefile().readline().strip())" "$1"; }
get INC; get INC
PID=$(systemctl show -p MainPID --value seamless-sockact.service)
ls -la /proc/$PID/fd /proc/1/fd | grep socket | head -80
ss -xlpn | grep sockact
python3 -c "
from seamless_systemd import systemd, criu
f = criu.inspect(systemd.unit_info('seamless-sockact.service'))
print('FACTS', f)"
JINO=$(python3 -c "
from seamless_systemd import systemd, criu
f = criu.inspect(systemd.unit_info('seamless-sockact.service'))
print(f.journal_inodes[0])")
LINO=$(python3 -c "
from seamless_systemd import systemd, criu
f = criu.inspect(systemd.unit_info('seamless-sockact.service'))
print(f.listen_sockets[0][0])")
mkdir -p /tmp/img
criu dump -t "$PID" -D /tmp/img -o dump.log -v4 --file-locks --ext-unix-sk --external "unix[$JINO]"; echo "dump rc $?"
grep -i "unix\|sk" /tmp/img/dump.log | tail -30
crit show /tmp/img/unixsk.img 2>/dev/null | head -60
sleep 2
systemctl status seamless-sockact.service seamless-sockact.socket --no-pager | head -20
ss -xlpn | grep sockact
# Restore with PID 1's copy of the listening socket passed in as fd 3.
python3 - "$LINO" "$JINO" <<'PY'
import ctypes, os, subprocess, sys
ino = sys.argv[1]
fd1 = next(int(n) for n in os.listdir("/proc/1/fd") if os.readlink(f"/proc/1/fd/{n}") == f"socket:[{ino}]")
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(1)
fd = libc.syscall(438, pidfd, fd1, 0)
print("got fd", fd, "from PID 1 fd", fd1, flush=True)
os.dup2(fd, 3, inheritable=True)
p = subprocess.run(["criu", "restore", "-D", "/tmp/img", "-o", "restore.log", "-v4", "--file-locks", "--ext-unix-sk",
  "--restore-detached", "--inherit-fd", f"fd[3]:socket:[{ino}]", "--inherit-fd", f"fd[1]:socket:[{sys.argv[2]}]"], pass_fds=(3,),
  stdout=open("/tmp/svc.out", "w"), stderr=subprocess.STDOUT)
print("restore rc", p.returncode, flush=True)
PY
grep -i "Error\|unix\|inherit" /tmp/img/restore.log | tail -40
ss -xlpn | grep sockact
ls -la /proc/$PID/fd
get GET
