"""Runs inside the nested rig (bench 6): boot the cloud kernel with hello.cpio under pvhboot and
under QEMU microvm -accel kvm, alternately, and time each from process start to the first user-space
line (GUEST-HELLO, printed by hello.cpio's init) and to process exit.  One JSON line per run."""
import json
import os
import subprocess
import sys
import time

MARK = b"GUEST-HELLO"


def timed(argv, env, timeout):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    marker, tail = None, []
    for line in p.stdout:
        if marker is None and MARK in line and b"echo" not in line:
            marker = time.monotonic() - t0
        tail = (tail + [line.decode(errors="replace").rstrip()])[-8:]
        if time.monotonic() - t0 > timeout:
            p.kill()
            break
    rc = p.wait()
    return {"marker_s": marker, "total_s": time.monotonic() - t0, "rc": rc, "tail": tail}


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    env = dict(os.environ)
    qenv = dict(env, LD_LIBRARY_PATH="/rig/qemu/lib")
    for rep in range(cfg["repeats"]):
        for name, argv, e in (("pvhboot", cfg["pvhboot"], env), ("qemu", cfg["qemu"], qenv)):
            r = timed(argv, e, cfg["timeout"])
            r.update(name=name, rep=rep)
            print("BENCH-RIG " + json.dumps(r), flush=True)


main()
