#!/usr/bin/python3
"""A test service with state only in memory, in the shapes real services have.

    svc.py PORT [--notify] [--daemonize PIDFILE|-] [--workers N] [--child]
                [--backend PATH | --serve-unix PATH | --listen-fd]

It answers one line per TCP connection on 127.0.0.1:PORT (or on the unix
socket PATH with --serve-unix) with its state as JSON; 'INC' first adds one to
its counter. SIGHUP (ExecReload=) adds one to 'reloads'.
  --notify      tell systemd READY=1 (Type=notify)
  --daemonize   fork twice and detach, writing the daemon's PID to PIDFILE
                ('-': no PID file) (Type=forking)
  --workers N   N pre-forked workers accept on the same listening socket
  --child       keep a child process ('sleep') running
  --backend     also ask the service on unix socket PATH and include its answer
  --listen-fd   serve on the socket systemd passed (fd 3, socket activation);
                a UDP socket answers each datagram with one
  --sandbox     also report what its sandbox lets it see and write
"""

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("--notify", action="store_true")
p.add_argument("--daemonize")
p.add_argument("--workers", type=int, default=0)
p.add_argument("--child", action="store_true")
p.add_argument("--backend")
p.add_argument("--serve-unix")
p.add_argument("--listen-fd", action="store_true")
p.add_argument("--sandbox", action="store_true")
args = p.parse_args()

if args.daemonize:
    # Like a classic daemon: the first process returns only once the daemon
    # exists and its PID file is written.
    first = os.fork()
    if first:
        os.waitpid(first, 0)
        os._exit(0)
    os.setsid()
    daemon = os.fork()
    if daemon:
        if args.daemonize != "-":
            with open(args.daemonize, "w") as f:
                f.write(f"{daemon}\n")
        os._exit(0)

blob = os.urandom(1 << 20)
state = {
    "counter": 0,
    "reloads": 0,
    "blob_sha256": hashlib.sha256(blob).hexdigest(),
    "started_at": time.time(),
    "main_pid": os.getpid(),
}


def on_hup(signum, frame):
    state["reloads"] += 1
    print(f"reloaded ({state['reloads']})", flush=True)


signal.signal(signal.SIGHUP, on_hup)
print(f"starting fresh: blob {state['blob_sha256'][:16]}", flush=True)

if args.listen_fd:
    assert os.environ.get("LISTEN_FDS") == "1", "expected one socket from systemd"
    srv = socket.socket(fileno=3)
elif args.serve_unix:
    if os.path.exists(args.serve_unix):
        os.unlink(args.serve_unix)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(args.serve_unix)
else:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
if not args.listen_fd:
    srv.listen(16)

child = subprocess.Popen(["sleep", "infinity"]) if args.child else None


def ask_backend(cmd):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(args.backend)
        s.sendall(cmd.encode() + b"\n")
        return json.loads(s.makefile().readline())


if args.sandbox:
    # A file in its private /tmp, kept open: it must be there after the restore.
    note_fd = os.open("/tmp/seamless-note", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(note_fd, f"written before the upgrade, blob {state['blob_sha256'][:16]}\n".encode())


def own_mnt_ns():
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")
    except PermissionError:  # not root: cannot tell
        return None


def sandbox():
    """What the mount namespace allows, as this process sees it."""
    with open("/proc/self/mountinfo") as f:
        points = sorted({line.split()[4] for line in f})
    with open("/proc/self/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return {
        "writable": {
            d: os.access(d, os.W_OK)
            for d in (
                "/usr",
                "/etc",
                "/var/lib/seamless-sbx",
                "/var/lib/seamless-dyn",
                "/tmp",
                "/home",
                "/run/credentials",
            )
        },
        "devices": sorted(os.listdir("/dev")),
        "mount_points": points,
        "own_mnt_ns": own_mnt_ns(),
        "no_new_privs": status["NoNewPrivs"],
        "seccomp": status["Seccomp"],
        "uid_gid": [status["Uid"], status["Gid"]],
        "groups": status["Groups"],
        "tmp_note": os.pread(note_fd, 4096, 0).decode() if os.path.exists("/tmp/seamless-note") else None,
    }


def serve_datagrams():
    while True:
        try:
            data, peer = srv.recvfrom(64)
        except InterruptedError:
            continue
        cmd = data.decode(errors="replace").strip()
        if cmd == "INC":
            state["counter"] += 1
        srv.sendto(json.dumps(dict(state, pid=os.getpid(), kernel=os.uname().release)).encode(), peer)
        print(f"{cmd or 'EMPTY'}: counter={state['counter']}", flush=True)


def serve():
    if srv.type == socket.SOCK_DGRAM:
        serve_datagrams()
    while True:
        try:
            conn, _ = srv.accept()
        except InterruptedError:
            continue
        with conn:
            cmd = conn.recv(64).decode(errors="replace").strip()
            if cmd == "INC":
                state["counter"] += 1
            reply = dict(state, pid=os.getpid(), kernel=os.uname().release)
            if child:
                reply["child_pid"] = child.pid
            if args.backend:
                reply["backend"] = ask_backend(cmd)
            if args.sandbox:
                reply["sandbox"] = sandbox()
            conn.sendall(json.dumps(reply).encode() + b"\n")
            print(f"{cmd or 'EMPTY'}: counter={state['counter']}", flush=True)


workers = []
for _ in range(args.workers):
    pid = os.fork()
    if pid == 0:
        serve()
        sys.exit(0)
    workers.append(pid)
state["workers"] = workers

if args.notify:
    addr = os.environ["NOTIFY_SOCKET"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
        n.sendto(b"READY=1", "\0" + addr[1:] if addr.startswith("@") else addr)

if workers:
    while True:  # the workers serve; the main process only supervises
        signal.pause()
serve()
