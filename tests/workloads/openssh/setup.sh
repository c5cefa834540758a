#!/bin/sh
# Runs inside the image at build time: Debian's openssh-server, its unit as
# shipped, and a key the test bed on the host logs in with as root.
# Without libpam-systemd (the test image installs no Recommends) a session's
# processes stay in ssh.service's cgroup, below sshd: they are part of the
# unit's tree. With it, logind moves each session into a session-N.scope of
# its own, which is not a service and is not kept (docs/services.md).
set -e
apt-get install -y -q --no-install-recommends openssh-server
ssh-keygen -q -t ed25519 -N '' -C seamless-test -f ./client_key
mkdir -p -m 0700 /root/.ssh
cp ./client_key.pub /root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
