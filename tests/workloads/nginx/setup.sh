#!/bin/sh
# Runs inside the image at build time: install Debian's nginx, serve a page.
set -e
apt-get install -y -q --no-install-recommends nginx
echo "hello from nginx, served across a kernel upgrade" > /var/www/html/index.html
