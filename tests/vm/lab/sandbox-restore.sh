#!/bin/sh
# Lab: dump a sandboxed unit and restore it inside the unit, in one boot.
set -x
cat > /etc/systemd/system/box.service <<EOF
[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/seamless-test/svc.py 7790
PrivateTmp=yes
ProtectSystem=strict
ProtectHome=yes
PrivateDevices=yes
EOF
systemctl daemon-reload
systemctl start box
sleep 4
get() { python3 -c "
import socket,sys
s=socket.create_connection(('127.0.0.1',7790)); s.sendall(sys.argv[1].encode()+b'\n'); print(s.makefile().readline().strip())" "$1"; }
get INC; get INC
PID=$(systemctl show -p MainPID --value box)
echo "PID=$PID"
cat /proc/$PID/mountinfo | cut -c1-160
ls -la /proc/$PID/fd
cat /proc/$PID/fdinfo/0
JINO=$(python3 -c "
from seamless_systemd import systemd, criu
f = criu.inspect(systemd.unit_info('box.service'))
print(f.journal_inodes[0], f.unsupported)" | cut -d' ' -f1)
echo "journal inode $JINO"
MNT=$(awk '/mnt_id/ {print $2}' /proc/$PID/fdinfo/0)
INO=$(stat -L -c %i /proc/$PID/fd/0)
EXT0=$(printf 'file[%x:%x]' "$MNT" "$INO")
echo "fd0 external: $EXT0"
PRIVTMP=$(awk '$5=="/tmp" {print $4}' /proc/$PID/mountinfo)
PRIVVARTMP=$(awk '$5=="/var/tmp" {print $4}' /proc/$PID/mountinfo)
echo "private tmp root in the source fs: $PRIVTMP"
mkdir -p /run/lab/img
criu dump -t "$PID" -D /run/lab/img -o /run/lab/dump.log -v4 --ext-unix-sk --file-locks \
  --external "unix[$JINO]" --external "$EXT0" \
  --ext-mount-map auto --enable-external-masters --enable-external-sharing
echo "dump rc=$?"
grep -E "Error|Warn" /run/lab/dump.log | head -20
sleep 2
systemctl status box --no-pager | head -5
ls -la /tmp/ /var/tmp/ | grep systemd-private
cat > /run/lab/restore.sh <<EOF
#!/bin/sh
set -x
mkdir -p /run/lab/root
mount --bind / /run/lab/root
mount -o remount,bind,ro /run/lab/root
for d in $PRIVTMP $PRIVVARTMP; do mkdir -p "\$d"; chmod 700 "\$(dirname \$d)"; chmod 1777 "\$d"; done
rm -f /run/lab/box.pid
criu restore -d -D /run/lab/img -o /run/lab/restore.log -v4 --pidfile /run/lab/box.pid \
  --root /run/lab/root --ext-unix-sk --file-locks \
  --ext-mount-map auto --enable-external-masters --enable-external-sharing \
  --inherit-fd "fd[1]:socket:[$JINO]" --inherit-fd "fd[0]:$EXT0"
rc=\$?
grep -E "Error" /run/lab/restore.log | head -20
exit \$rc
EOF
mkdir -p /etc/systemd/system/box.service.d
cat > /etc/systemd/system/box.service.d/restore.conf <<EOF
[Service]
Type=forking
PIDFile=/run/lab/box.pid
ExecStart=
ExecStart=+/bin/sh /run/lab/restore.sh
EOF
systemctl daemon-reload
systemctl start box
echo "start rc=$?"
journalctl -u box -b --no-pager -o cat | tail -30
systemctl status box --no-pager | head -8
NEW=$(systemctl show -p MainPID --value box)
get GET
cat /proc/$NEW/mountinfo | cut -c1-160
grep NoNewPrivs /proc/$NEW/status
true
nsenter -t "$NEW" -m sh -c 'touch /usr/x 2>&1; touch /tmp/x && echo tmp-writable; ls -la /dev | head'
