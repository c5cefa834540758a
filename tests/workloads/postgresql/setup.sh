#!/bin/sh
# Runs inside the image at build time: Debian's PostgreSQL 15 cluster, its units as shipped.
set -e
apt-get install -y -q --no-install-recommends postgresql
