"""A Linux peer in retransmission backoff retransmits at once when restore-unit nudges it (netlock.nudge).

Two network namespaces joined by a veth pair: the "service" in one, its
client in the other, two connections. The service's link goes down (the
upgrade's outage), the client sends on both and backs off; the link comes
back, and the service nudges the peer of one connection only, as
restore-unit does after a restore. Then: how long each request takes to
arrive. Real kernel, real TCP; needs root (namespaces, TCP repair, raw sockets).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
    reason="needs root, unshare(1) and ip(8)",
)

# The service's side, in its own network namespace: run by the client side below.
SERVICE = r"""
import json, os, socket, subprocess, sys, time
from seamless_systemd import netlock
def ip(*a): subprocess.run(["ip", *a], check=True)
HERE, THERE, PREFIX = sys.argv[1:4]
cmd = sys.stdin.readline  # the client side says when
print("here", flush=True)  # in its own namespace: the client side moves v1 in
client_mac = cmd().split()[1]
ip("link", "set", "lo", "up")
ip("addr", "add", f"{HERE}/{PREFIX}", "dev", "v1", "nodad")
ip("link", "set", "v1", "up")
# No address resolution across the outage (it would hold the client's segments and send them on its return).
ip("neigh", "replace", THERE, "lladdr", client_mac, "dev", "v1", "nud", "permanent")
srv = socket.create_server((HERE, 7000), family=socket.AF_INET6 if ":" in HERE else socket.AF_INET)
mac = subprocess.run(["ip", "-br", "link", "show", "v1"], capture_output=True, text=True).stdout.split()[2]
print("ready", mac, flush=True)
conns = []
for _ in range(2):
    c = srv.accept()[0]
    c.sendall(c.recv(16))
    conns.append(c)
cmd()  # the outage
if ":" in HERE:  # an IPv6 address goes with its link unless told otherwise
    open("/proc/sys/net/ipv6/conf/v1/keep_addr_on_down", "w").write("1\n")
ip("link", "set", "v1", "down")
print("down", flush=True)
cmd()  # over
ip("link", "set", "v1", "up")
time.sleep(0.3)  # the link's carrier
nudged_at = time.monotonic()
asked = netlock.nudge([os.getpid()], [conns[0].getsockname()[:2] + conns[0].getpeername()[:2]])
took = []
for c in conns:
    c.settimeout(30)
    assert c.recv(16) == b"x"
    took.append(round(time.monotonic() - nudged_at, 3))
print(json.dumps({"asked": asked, "nudged": took[0], "not_nudged": took[1]}), flush=True)
"""

# The client's side, in a network namespace of its own (unshare -n): makes the veth pair.
CLIENT = r"""
import json, socket, subprocess, sys, time
def ip(*a): subprocess.run(["ip", *a], check=True)
ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
HERE, THERE, PREFIX = sys.argv[2:5]
svc = subprocess.Popen(["unshare", "-n", sys.executable, "-c", sys.argv[1], THERE, HERE, PREFIX],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
assert svc.stdout.readline().strip() == "here"
ip("link", "set", "v1", "netns", str(svc.pid))
ip("link", "set", "lo", "up")
ip("addr", "add", f"{HERE}/{PREFIX}", "dev", "v0", "nodad")
ip("link", "set", "v0", "up")
mine = subprocess.run(["ip", "-br", "link", "show", "v0"], capture_output=True, text=True).stdout.split()[2]
def say(): svc.stdin.write(f"go {mine}\n"); svc.stdin.flush()
say()
word, mac = svc.stdout.readline().split()
assert word == "ready"
ip("neigh", "replace", THERE, "lladdr", mac, "dev", "v0", "nud", "permanent")
conns = []
for _ in range(2):
    c = socket.create_connection((THERE, 7000), timeout=10)
    c.sendall(b"hi")
    assert c.recv(16) == b"hi"
    conns.append(c)
say()
assert svc.stdout.readline().strip() == "down"
for c in conns:
    c.sendall(b"x")  # retransmitted at 0.2, 0.6, 1.4, 3.0, 6.2, 12.6 s...
time.sleep(7.0)  # ...so the next try after the outage is some 5 s away
say()
print(svc.stdout.readline().strip(), flush=True)
svc.wait(30)
"""


@pytest.mark.parametrize(
    ("client", "service", "prefix"), [("10.77.0.1", "10.77.0.2", "24"), ("fd77::1", "fd77::2", "64")]
)
def test_a_nudged_linux_peer_retransmits_at_once(client: str, service: str, prefix: str) -> None:
    veth = ["unshare", "-n", "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"]
    if subprocess.run(veth, capture_output=True).returncode != 0:
        pytest.skip("no network namespaces or veth pairs on this machine")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", CLIENT, SERVICE, client, service, prefix],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["asked"] == 1, got
    # Without the nudge the request waits for the client's next timeout (~5 s here).
    assert got["not_nudged"] > 2.0, got
    assert got["nudged"] < 1.0, got
