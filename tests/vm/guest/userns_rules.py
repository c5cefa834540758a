#!/usr/bin/python3
"""The two kernel rules that make a PrivateUsers= service impossible to restore with its PIDs.

Prints one line of JSON:
  threaded_unshare  errno name of unshare(CLONE_NEWUSER) from a process with two threads
  ns_last_pid       errno name of writing /proc/sys/kernel/ns_last_pid (the host's PID
                    namespace) from a new user namespace, as its root with all capabilities
  caps_in_userns    CapEff there (all set: the refusal is not for lack of capabilities there)
Run as root. See docs/design.md (PrivateUsers=).
"""

import ctypes
import errno
import json
import os
import threading
import time

CLONE_NEWUSER = 0x10000000
libc = ctypes.CDLL(None, use_errno=True)


def err_name(ret: int) -> str:
    return "ok" if ret == 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def probe() -> dict:
    out = {}
    t = threading.Thread(target=time.sleep, args=(1,))
    t.start()
    out["threaded_unshare"] = err_name(libc.unshare(CLONE_NEWUSER))
    t.join()
    while len(os.listdir("/proc/self/task")) > 1:  # the thread is gone for the kernel too
        time.sleep(0.01)
    if libc.unshare(CLONE_NEWUSER) != 0:
        out["single_unshare"] = err_name(-1)
        return out
    with open("/proc/self/uid_map", "w") as f:
        f.write("0 0 1")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/gid_map", "w") as f:
        f.write("0 0 1")
    with open("/proc/self/status") as f:
        out["caps_in_userns"] = next(line.split()[1] for line in f if line.startswith("CapEff:"))
    try:
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(os.getpid() + 1000))
        out["ns_last_pid"] = "ok"
    except OSError as e:
        out["ns_last_pid"] = errno.errorcode.get(e.errno or 0, str(e.errno))
    return out


if __name__ == "__main__":
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the probe changes its own namespaces: in a child
        os.close(read)
        os.write(write, json.dumps(probe()).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        print(f.read())
    os.waitpid(pid, 0)
