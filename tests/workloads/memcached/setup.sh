#!/bin/sh
# Runs inside the image at build time: Debian's memcached, its unit as shipped.
set -e
apt-get install -y -q --no-install-recommends memcached
