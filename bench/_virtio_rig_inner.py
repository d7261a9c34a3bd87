"""Runs INSIDE the nested rig: the same guest work under `pvhboot run` and under QEMU microvm with the
same devices (virtio-blk-device, vhost-user-fs-device on the same virtiofsd, virtconsole), printing
``BENCH-VIRTIO {json}`` per run.  Config: argv[1] (JSON from bench/virtio_rig.py)."""
import json
import os
import subprocess
import sys
import time

with open(sys.argv[1]) as f:
    cfg = json.load(f)
W = "/rig/work"
QENV = dict(os.environ, LD_LIBRARY_PATH="/rig/qemu/lib")
SOCK = "/tmp/bench-vfsd.sock"


def parse(out: bytes) -> dict | None:
    for line in out.decode(errors="replace").splitlines():
        if line.strip().startswith("GBENCH "):
            return json.loads(line.strip()[7:])
    return None


RUN_TIMEOUT = 150


def run(argv, env=None):
    """(wall seconds, CompletedProcess); a run past RUN_TIMEOUT is killed and reported as rc -9."""
    t = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, timeout=RUN_TIMEOUT, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        p = subprocess.CompletedProcess(argv, -9, e.stdout or b"", (e.stderr or b"") + b" [timed out]")
    return time.perf_counter() - t, p


def pvhboot(cmd, disk):
    argv = ["pvhboot", "run", "--memory", cfg["memory"], "--timeout", str(RUN_TIMEOUT - 10)]
    argv += ["--disk", disk] if disk else []
    return run(argv + ["--", *cmd])


def qemu(initrd, disk):
    if os.path.exists(SOCK):
        os.unlink(SOCK)
    t = time.perf_counter()
    fsd = subprocess.Popen([cfg["virtiofsd"], f"--socket-path={SOCK}", "-o", "source=/", "-o", "cache=auto",
                            "-o", "log_level=warn", "-o", "sandbox=chroot"], stderr=subprocess.DEVNULL)
    while not os.path.exists(SOCK):
        time.sleep(0.005)
    argv = cfg["qemu"] + ["-initrd", initrd]
    if disk:
        argv += ["-drive", f"id=d0,file={disk},format=raw,if=none", "-device", "virtio-blk-device,drive=d0"]
    try:
        _, p = run(argv, env=QENV)
    finally:
        if fsd.poll() is None:  # it exits when QEMU hangs up; make sure
            fsd.terminate()
        fsd.wait()
    if p.returncode != 0:
        try:
            with open("/tmp/qemu-serial.log", "rb") as f:
                p.stderr += b"\n[serial] " + f.read()[-600:]
        except OSError:
            pass
    return time.perf_counter() - t, p


def report(name, kind, wall, p):
    res = {"name": name, "kind": kind, "wall_s": round(wall, 3), "rc": p.returncode, "guest": parse(p.stdout),
           "tail": p.stdout.decode(errors="replace")[-300:] + p.stderr.decode(errors="replace")[-300:]}
    print("BENCH-VIRTIO " + json.dumps(res), flush=True)


for _ in range(cfg["repeats"]):
    for kind, cmd, disk, initrd in (("io", ["python3", f"{W}/gbench.py"], f"{W}/disk.img", "/tmp/io.cpio"),
                                    ("true", ["true"], None, "/tmp/true.cpio")):
        report("pvhboot", kind, *pvhboot(cmd, disk))
        report("qemu", kind, *qemu(initrd, disk))
