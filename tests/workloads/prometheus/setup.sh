#!/bin/sh
# Runs inside the image at build time: Debian's prometheus (a Go program), its
# unit and configuration as shipped (it scrapes itself every 15 s), but for
# the drop-in below.
set -e
apt-get install -y -q --no-install-recommends prometheus
# Like redis', Debian's unit has PrivateUsers=true, which CRIU cannot dump (plan
# says so). The one change: a drop-in that turns it off.
mkdir -p /etc/systemd/system/prometheus.service.d
printf '[Service]\nPrivateUsers=no\n' > /etc/systemd/system/prometheus.service.d/50-seamless.conf
