#!/bin/sh
# Runs inside the image at build time: Debian's php8.2-fpm (master and the
# default www pool), its unit as shipped. Only the pool's status page is
# turned on: the check reads the pool's counters from it over FastCGI.
set -e
apt-get install -y -q --no-install-recommends php8.2-fpm
sed -i 's|^;pm.status_path = .*|pm.status_path = /status|' /etc/php/8.2/fpm/pool.d/www.conf
grep -q '^pm.status_path = /status' /etc/php/8.2/fpm/pool.d/www.conf
