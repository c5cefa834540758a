#!/bin/sh
# Install what building and booting the test image needs on a Debian host.
# Idempotent and quick when everything is there already.
set -e
need=""
command -v qemu-system-x86_64 >/dev/null || need="$need qemu-system-x86"
command -v debootstrap >/dev/null || need="$need debootstrap"
command -v dpkg-buildpackage >/dev/null || need="$need dpkg-dev"
command -v dh >/dev/null || need="$need debhelper"
command -v dh_python3 >/dev/null || need="$need dh-python python3-all python3-setuptools"
command -v mkfs.ext4 >/dev/null || need="$need e2fsprogs"
if [ -n "$need" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "missing host packages:$need (run as root, or: sudo apt-get install$need)" >&2
		exit 1
	fi
	echo "Installing host packages:$need" >&2
	apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need >&2
fi
PY=${PYTHON:-python3}
if ! $PY -c 'import pytest, yaml' 2>/dev/null; then
	echo "Installing pytest and PyYAML for $PY" >&2
	$PY -m pip install -q pytest pyyaml >&2
fi
