"""Bench 6 (optional, minutes): real Linux in the nested rig.  Inside the rig (pvhboot.rig.run_in_rig:
QEMU TCG -cpu max with kvm_amd, the rig owner's helper), the Debian cloud kernel (the vmlinux
extracted in the rig from the same bzImage) boots with the rig's hello.cpio (its init prints
GUEST-HELLO and powers off) and the same command line, 128 MiB, 1 vCPU, under

* ``pvhboot boot /tmp/vmlinux --initrd hello.cpio``   (PVH entry), and
* ``qemu-system-x86_64 -M microvm -accel kvm -cpu host -kernel /tmp/vmlinux -initrd hello.cpio``
  (QEMU's binary, its libraries and firmware copied into the rig for this run),

alternately; time from process start to the first user-space line, and to process exit.
Ratio pvhboot/QEMU on the time to user space.  Goal <= 1.0.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from . import common
from .common import median, row

GOAL = 1.0
CMDLINE = "console=ttyS0 panic=-1 reboot=t quiet"
QEMU_DATA = ("bios-microvm.bin", "pvh.bin", "linuxboot_dma.bin", "linuxboot.bin", "qboot.rom")


def qemu_files() -> dict[str, bytes]:
    """QEMU's binary, the shared libraries ldd lists and the firmware microvm may load, for /rig/qemu."""
    exe = shutil.which(common.QEMU)
    files = {"rig/qemu/qemu-system-x86_64": Path(exe).read_bytes()}
    out = subprocess.run(["ldd", exe], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            files[f"rig/qemu/lib/{parts[0]}"] = Path(parts[2]).read_bytes()
    for name in QEMU_DATA:
        p = Path("/usr/share/qemu") / name
        if p.exists():
            files[f"rig/qemu/share/{name}"] = p.read_bytes()
    return files


def measure(repeats: int = 3, timeout: float = 400) -> dict:
    from pvhboot.rig import RigError, run_in_rig

    cfg = {"repeats": repeats, "timeout": timeout,
           "pvhboot": ["pvhboot", "boot", "/tmp/vmlinux", "--initrd", "/rig/guest/hello.cpio", "--cmdline", CMDLINE,
                       "--memory", "128M", "--timeout", str(timeout)],
           "qemu": ["/rig/qemu/qemu-system-x86_64", "-L", "/rig/qemu/share", "-M", "microvm", "-accel", "kvm",
                    "-cpu", "host", "-m", "128M", "-smp", "1", "-kernel", "/tmp/vmlinux",
                    "-initrd", "/rig/guest/hello.cpio", "-append", CMDLINE, "-nodefaults", "-nographic",
                    "-no-reboot", "-serial", "stdio"]}
    files = qemu_files()
    files["rig/work/bench_inner.py"] = (common.BENCH_DIR / "_rig_inner.py").read_bytes()
    files["rig/work/bench.json"] = json.dumps(cfg).encode()
    script = ("chmod +x /rig/qemu/qemu-system-x86_64\n"
              "pvhboot extract /rig/guest/vmlinuz -o /tmp/vmlinux || exit 90\n"
              "python3 /rig/work/bench_inner.py /rig/work/bench.json\n")
    try:
        res = run_in_rig(script, timeout=300 + repeats * 2 * (timeout + 60), files=files)
    except RigError as e:
        return {"rows": [row("6", "rig: Debian kernel to user space", "s", None, None, "QEMU microvm (rig)",
                             GOAL, status="not run")],
                "notes": [f"rig did not run: {str(e).splitlines()[0]}"], "details": {"error": str(e)}}
    runs = [json.loads(ln.split(" ", 1)[1]) for ln in res.output.splitlines() if ln.startswith("BENCH-RIG ")]
    by = {n: [r for r in runs if r["name"] == n and r["marker_s"] is not None] for n in ("pvhboot", "qemu")}
    med = {n: (median(r["marker_s"] for r in v) if v else None) for n, v in by.items()}
    tot = {n: (median(r["total_s"] for r in v) if v else None) for n, v in by.items()}
    rows = [row("6", "rig: Debian kernel start -> first user-space line", "s", med["pvhboot"], med["qemu"],
                "QEMU microvm -accel kvm (rig)", GOAL),
            row("6t", "  rig: whole process", "s", tot["pvhboot"], tot["qemu"], "QEMU microvm -accel kvm (rig)")]
    failed = [r for r in runs if r["marker_s"] is None]
    notes = [f"{repeats} run(s) each inside one rig (QEMU TCG -cpu max, kvm_amd); rig wall {res.wall_time:.0f} s"]
    if failed:
        notes.append("runs without a user-space line: " + "; ".join(f"{r['name']} rc={r['rc']}: {r['tail'][-2:]}"
                                                                   for r in failed))
    return {"rows": rows, "notes": notes, "details": {"runs": runs, "rig_wall_s": res.wall_time}}


def not_run(reason: str) -> dict:
    return {"rows": [row("6", "rig: Debian kernel start -> first user-space line", "s", None, None,
                         "QEMU microvm -accel kvm (rig)", GOAL, status="not run")],
            "notes": [f"not run: {reason}"], "details": {}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=400)
    a = ap.parse_args(argv)
    common.emit("rig_boot", **measure(a.repeats, a.timeout))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
