#!/bin/sh
# Runs inside the image at build time: Debian's MariaDB server, its unit as
# shipped. MariaDB 10.11 does its InnoDB I/O through io_uring on Linux 6.1,
# which CRIU cannot checkpoint, and reserves 8 TiB of address space for its
# buffer pool, whose page map CRIU cannot read in one buffer on this machine.
# `seamless-upgrade plan` says so of each and names these settings as the fix
# (InnoDB then uses its own I/O threads and reserves only the pool's size).
set -e
apt-get install -y -q --no-install-recommends mariadb-server
printf "[mariadbd]\ninnodb_use_native_aio = 0\ninnodb_buffer_pool_size_max = 128M\n" > /etc/mysql/mariadb.conf.d/60-seamless.cnf
