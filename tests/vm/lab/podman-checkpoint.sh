#!/bin/sh
# Lab: can podman (Debian bookworm) checkpoint a container to a file and restore
# it with this CRIU, in the guest? podman, runc and conmon are in the test image;
# the container image is a minimal Python root imported with 'podman import'
# (tests/vm/guest/install.sh builds it), so that no image registry is needed.
set -x
podman --version; runc --version
podman import /usr/local/lib/seamless-test/ctr-rootfs.tar localhost/seamless-py; echo "import rc $?"
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
