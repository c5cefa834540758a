#!/bin/sh
# Runs inside the image at build time: Debian's unbound, its unit as shipped.
# The one configuration added: a zone it forwards to a small upstream of the
# test's own on 127.0.0.1:5353 (the guest has no other DNS server to ask).
set -e
# dns-root-data (a Recommends): the root trust anchor unbound's start copies into place.
apt-get install -y -q --no-install-recommends unbound dns-root-data
cat > /etc/unbound/unbound.conf.d/seamless.conf <<'CONF'
server:
    interface: 127.0.0.1
    do-not-query-localhost: no
    domain-insecure: "seamless.test"
    # unbound answers .test (RFC 6761) itself with NXDOMAIN unless told not to.
    local-zone: "test." nodefault
forward-zone:
    name: "seamless.test"
    forward-addr: 127.0.0.1@5353
CONF
