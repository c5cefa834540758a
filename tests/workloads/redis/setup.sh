#!/bin/sh
# Runs inside the image at build time: Debian's redis-server, its unit as shipped.
set -e
apt-get install -y -q --no-install-recommends redis-server redis-tools
# Debian's unit has PrivateUsers=true: CRIU cannot dump a service in its own
# user namespace (plan says so, docs/configuration.md). The one change: a
# drop-in that turns it off.
mkdir -p /etc/systemd/system/redis-server.service.d
printf '[Service]\nPrivateUsers=no\n' > /etc/systemd/system/redis-server.service.d/50-seamless.conf
