#!/bin/sh
# Runs inside the image at build time: Debian's Node.js; the service is ours
# (node applications come without a unit), run the way a sysadmin would.
set -e
apt-get install -y -q --no-install-recommends nodejs
