#!/bin/sh
# Install what building and booting the test image needs on a Debian host.
# Idempotent and quick when everything is there already.
set -e
need=""
command -v qemu-system-x86_64 >/dev/null || need="$need qemu-system-x86"
command -v debootstrap >/dev/null || need="$need debootstrap"
command -v dpkg-buildpackage >/dev/null || need="$need dpkg-dev"
command -v dh >/dev/null || need="$need debhelper"
command -v dh_python3 >/dev/null || need="$need dh-python python3-all"
dpkg-query -W -f='${Status}' python3-setuptools 2>/dev/null | grep -q "ok installed" || need="$need python3-setuptools"
command -v mkfs.ext4 >/dev/null || need="$need e2fsprogs"
command -v shellcheck >/dev/null || need="$need shellcheck"
command -v systemd-analyze >/dev/null || need="$need systemd"
command -v rpmbuild >/dev/null || need="$need rpm"
command -v lintian >/dev/null || need="$need lintian"
command -v ssh >/dev/null || need="$need openssh-client"
# The upgrade timeline (seamless-upgrade report --svg) is checked as a browser draws it.
command -v chromium >/dev/null || need="$need chromium fonts-dejavu-core"
[ -e /usr/share/bash-completion/bash_completion ] || need="$need bash-completion"
if [ -n "$need" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "missing host packages:$need (run as root, or: sudo apt-get install$need)" >&2
		exit 1
	fi
	echo "Installing host packages:$need" >&2
	apt-get update -q >&2
	# $need is a list of words on purpose.
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need >&2
fi
PY=${PYTHON:-python3}
# Pinned: a new linter release must not turn CI red on its own; dbus-fast as
# Debian 12 ships it (the D-Bus service's library, in its unit tests here).
if ! $PY -c 'import pytest, yaml, mypy, ruff, hypothesis, dbus_fast' 2>/dev/null; then
	echo "Installing the Python test tools for $PY" >&2
	$PY -m pip install -q pytest pyyaml ruff==0.17.6 mypy==2.4.1 types-PyYAML hypothesis dbus-fast==1.84.2 >&2
fi
