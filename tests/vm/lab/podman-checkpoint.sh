#!/bin/sh
# Lab: can podman (Debian bookworm) checkpoint a container to a file and restore
# it with this CRIU, in the guest? Installs podman from the network (QEMU's
# user-mode NAT). The container image: a minimal Python root imported with
# 'podman import' (python3, its standard library, the libraries ldd names), so
# that no image registry is needed.
set -x
echo "nameserver 10.0.2.3" > /etc/resolv.conf
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends podman runc conmon catatonit >/tmp/apt.log 2>&1
tail -3 /tmp/apt.log
podman --version; runc --version
R=/srv/ctr
mkdir -p $R/etc $R/proc $R/sys $R/dev $R/tmp $R/run $R/var/tmp $R/app
cp /etc/passwd /etc/group /etc/hosts $R/etc/
py=$(readlink -f /usr/bin/python3)
for f in "$py" $(ldd "$py" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
	mkdir -p "$R$(dirname "$f")" && cp -L "$f" "$R$f"
done
mkdir -p $R/usr/lib && cp -a /usr/lib/python3.11 $R/usr/lib/
ln -s "$py" $R/usr/bin/python3
for l in bin lib lib64 sbin; do [ -e $R/$l ] || ln -s usr/$l $R/$l; done
cp /usr/local/lib/seamless-test/demo.py /usr/local/lib/seamless-test/lines.py $R/app/
tar -C $R -cf /tmp/rootfs.tar .
ls -la /tmp/rootfs.tar
podman import /tmp/rootfs.tar localhost/seamless-py; echo "import rc $?"
get() { python3 -c "
import socket,sys
s=socket.create_connection(('127.0.0.1',7799)); s.sendall(sys.argv[1].encode()+b'\n'); print(s.makefile().readline().strip())" "$1"; }
podman --runtime runc run -d --name looper --network host localhost/seamless-py python3 /app/demo.py 7799
sleep 8
podman ps
get INC; get INC
podman inspect looper --format '{{.State.Pid}} {{.State.ConmonPid}} {{.State.Status}}'
podman --runtime runc container checkpoint --export /tmp/ck.tar looper; echo "checkpoint rc $?"
find /var/lib/containers -name dump.log | while read -r f; do echo "== $f"; grep -E "Error|Warn" "$f" | tail -15; done
ls -la /tmp/ck.tar
podman rm -f looper
podman --runtime runc container restore --import /tmp/ck.tar; echo "restore rc $?"
podman ps
get GET
podman inspect looper --format '{{.State.Pid}} {{.State.ConmonPid}} {{.State.Status}}'
find /var/lib/containers -name restore.log | while read -r f; do echo "== $f"; grep -E "Error" "$f" | tail -10; done
