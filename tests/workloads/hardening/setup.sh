#!/bin/sh
# Runs inside the image at build time: the user and the paths the hardened units name.
set -e
useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin seamless-harden
mkdir -p /var/lib/seamless-harden-rw /var/lib/seamless-bind /srv/seamless-secret /opt/seamless-bind-rw /opt/seamless-bind-ro /var/cache/seamless-scratch
chown seamless-harden: /var/lib/seamless-harden-rw /var/lib/seamless-bind
echo "not for the hardened services" > /srv/seamless-secret/key
