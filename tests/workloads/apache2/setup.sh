#!/bin/sh
# Runs inside the image at build time: Debian's apache2 with its default
# mpm_event and mod_status (answers on localhost only), its unit as shipped.
set -e
apt-get install -y -q --no-install-recommends apache2
echo "hello from apache2, served across a kernel upgrade" > /var/www/html/index.html
