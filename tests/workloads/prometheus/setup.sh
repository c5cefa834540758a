#!/bin/sh
# Runs inside the image at build time: Debian's prometheus (a Go program), its
# unit and configuration as shipped (it scrapes itself every 15 s).
set -e
apt-get install -y -q --no-install-recommends prometheus
