"""Bench 11 (optional, minutes): virtio devices under real Linux in the nested rig, pvhboot against QEMU
with the same devices.  Inside one rig (QEMU TCG + kvm_amd), the Debian cloud kernel runs the same
initramfs (what `pvhboot run --initramfs-out` writes: the host root through virtio-fs, output on
hvc0) under

* ``pvhboot run [--disk disk.img] -- CMD``, and
* ``qemu-system-x86_64 -M microvm -accel kvm -cpu host`` with virtio-blk-device, vhost-user-fs-device
  on the same virtiofsd (memfd RAM, share=on) and virtconsole (QEMU copied into the rig for the run);

CMD is bench/_virtio_guest.py (64 MiB sequential O_DIRECT read and write + fsync, 2000 random 4 KiB
O_DIRECT reads on /dev/vda; a 420-entry tree walk with stat and a 32 MiB read through virtio-fs), then
``true`` for the end-to-end time.  Ratios pvhboot/QEMU; goal: at or better than QEMU on every row.

QEMU's virtio-mmio transports are legacy (version 1) unless told otherwise, which virtiofsd's
libvhost-user refuses ("virtio legacy devices aren't supported"): ``virtio-mmio.force-legacy=false``.
``rtc=off``: with microvm's RTC the guest's rtc_cmos probe stalled ~7 s in the rig ("broken or not
accessible"), which would only measure that stall.
"""
from __future__ import annotations

import json

from . import common
from .common import median, row

GUEST_METRICS = (("11a", "disk sequential read", "seq_read_MBps", "MB/s", ">="),
                 ("11b", "disk sequential write (+fsync)", "seq_write_MBps", "MB/s", ">="),
                 ("11c", "disk random 4 KiB read", "rand4k_read_iops", "IOPS", ">="),
                 ("11d", "virtio-fs tree walk + stat", "tree_walk_s", "s", "<="),
                 ("11e", "virtio-fs large-file read", "large_read_MBps", "MB/s", ">="))


def measure(repeats: int = 2) -> dict:
    from pvhboot.commands.run import BASE_CMDLINE
    from pvhboot.rig import RigError, run_in_rig

    from .rig_boot import qemu_files

    cfg = {"repeats": repeats, "memory": "256M", "virtiofsd": "/usr/lib/qemu/virtiofsd",
           "qemu": ["/rig/qemu/qemu-system-x86_64", "-L", "/rig/qemu/share", "-M", "microvm,rtc=off,memory-backend=mem",
                    "-global", "virtio-mmio.force-legacy=false",
                    "-accel", "kvm", "-cpu", "host", "-m", "256M", "-smp", "1",
                    "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
                    "-kernel", "/tmp/vmlinux", "-append", BASE_CMDLINE, "-nodefaults", "-display", "none",
                    "-no-reboot", "-serial", "file:/tmp/qemu-serial.log",
                    "-chardev", "stdio,id=hvc", "-device", "virtio-serial-device",
                    "-device", "virtconsole,chardev=hvc",
                    "-chardev", "socket,id=vfs,path=/tmp/bench-vfsd.sock",
                    "-device", "vhost-user-fs-device,chardev=vfs,tag=pvhroot"]}
    files = qemu_files()
    files["rig/work/gbench.py"] = (common.BENCH_DIR / "_virtio_guest.py").read_bytes()
    files["rig/work/inner.py"] = (common.BENCH_DIR / "_virtio_rig_inner.py").read_bytes()
    files["rig/work/bench.json"] = json.dumps(cfg).encode()
    script = r"""chmod +x /rig/qemu/qemu-system-x86_64
W=/rig/work
pvhboot extract /rig/guest/vmlinuz -o /tmp/vmlinux || exit 90
dd if=/dev/zero of=$W/disk.img bs=1M count=64 2>/dev/null
dd if=/dev/zero of=$W/big.bin bs=1M count=32 2>/dev/null
for i in $(seq 1 20); do mkdir -p $W/tree/d$i; for j in $(seq 1 20); do echo $i$j > $W/tree/d$i/f$j; done; done
pvhboot run --memory 256M --disk $W/disk.img --initramfs-out /tmp/io.cpio -- python3 $W/gbench.py || exit 91
pvhboot run --memory 256M --initramfs-out /tmp/true.cpio -- true || exit 92
python3 $W/inner.py $W/bench.json
"""
    try:
        res = run_in_rig(script, timeout=300 + repeats * 300, files=files)
    except RigError as e:
        return not_run(f"rig did not run: {str(e).splitlines()[0]}")
    runs = [json.loads(ln.split(" ", 1)[1]) for ln in res.output.splitlines() if ln.startswith("BENCH-VIRTIO ")]
    rows = []
    for rid, metric, key, unit, op in GUEST_METRICS:
        vals = {n: [r["guest"][key] for r in runs if r["name"] == n and r["kind"] == "io" and r["guest"]]
                for n in ("pvhboot", "qemu")}
        p, q = (median(vals[n]) if vals[n] else None for n in ("pvhboot", "qemu"))
        ratio = (p / q) if p is not None and q else None
        rows.append(row(rid, metric, unit, p, q, "QEMU microvm (rig)", 1.0, op, ratio=ratio))
    walls = {n: [r["wall_s"] for r in runs if r["name"] == n and r["kind"] == "true" and r["rc"] == 0]
             for n in ("pvhboot", "qemu")}
    p, q = (median(walls[n]) if walls[n] else None for n in ("pvhboot", "qemu"))
    rows.append(row("11f", "`run -- true` end to end (virtio-fs root, hvc0)", "s", p, q,
                    "QEMU microvm + virtiofsd (rig)", 1.0))
    failed = [f"{r['name']}/{r['kind']} rc={r['rc']}: {r['tail'][-200:]}" for r in runs
              if r["rc"] != 0 or (r["kind"] == "io" and not r["guest"])]
    notes = [f"{repeats} repeat(s), pvhboot and QEMU alternating, inside one rig (wall {res.wall_time:.0f} s); "
             "nested KVM under TCG: absolute numbers are far below hardware, the ratios are the point"]
    if failed:
        notes.append("failed runs: " + " | ".join(failed))
    return {"rows": rows, "notes": notes, "details": {"runs": runs, "rig_wall_s": res.wall_time}}


def not_run(reason: str) -> dict:
    return {"rows": [row("11", "virtio disk / virtio-fs vs QEMU (rig)", "", None, None, "QEMU microvm (rig)",
                         status="not run")], "notes": [f"not run: {reason}"], "details": {}}


main = common.repeats_main("virtio_rig", measure, repeats=2)


if __name__ == "__main__":
    raise SystemExit(main())
