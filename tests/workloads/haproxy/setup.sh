#!/bin/sh
# Runs inside the image at build time: Debian's haproxy (master-worker, its
# unit as shipped) with one frontend added to its default configuration.
set -e
apt-get install -y -q --no-install-recommends haproxy
cat >> /etc/haproxy/haproxy.cfg <<'CFG'

# seamless-systemd test: answers by itself, counts what it served.
frontend seamless
	bind 127.0.0.1:8404
	http-request return status 200 content-type text/plain string "hello from haproxy\n"
CFG
haproxy -c -f /etc/haproxy/haproxy.cfg
