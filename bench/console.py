"""Bench 4: console throughput.  bench/guests/uart_flood.S (built at bench time) writes N bytes to COM1
the way Linux's 8250 driver transmits: wait for LSR.THRE, then up to 16 bytes (the FIFO) to THR, one
``outb`` each; then it leaves through the debug-exit port 0xf4.  Run by

* ``pvhboot boot uart_flood.elf`` (whole process, console to a file), pvhboot's default: COM1's THR
  (port 0x3f8) is a coalesced PIO zone (KVM_CAP_COALESCED_PIO): THR writes queue in the ring page,
  the LSR read that follows each burst is a full exit and the run loop delivers the ring before
  answering it, so the UART sees every byte in order (pvhboot.vmm.runloop);
* ``pvhboot boot --no-coalesced-uart uart_flood.elf``: every THR write is a full exit;
* ``qemu-system-x86_64 -M microvm -accel kvm`` (same memory, ``-serial file:``, isa-debug-exit).

Throughput = N / (T(N bytes) - T(0 bytes)), each with its own 0-byte run, so process start-up and
teardown cancel out.  Each run's console output is checked to be exactly N bytes.
"""
from __future__ import annotations

import argparse
import os
import shutil

from . import common
from .common import median, row

GOAL = 5.0
MEMORY = "64M"


def _variants(tmp, cpu):
    def pv(*flags):
        return lambda elf, out: common.run_process(common.pvhboot_argv() + ["boot", *flags, elf, "--memory", MEMORY],
                                                   stdout_path=out)
    v = {"pvhboot": (pv(), 0), "pvhboot --no-coalesced-uart": (pv("--no-coalesced-uart"), 0)}
    if cpu is not None:
        v["qemu"] = (lambda elf, out: common.run_process(common.qemu_microvm_argv(elf, MEMORY, out, cpu)), 1)
    return v


def measure(repeats: int = 3, nbytes: int = 1 << 20) -> dict:
    tmp = common.build_dir()
    elf_n = str(common.build_uart_flood(tmp, nbytes))
    elf_0 = str(common.build_uart_flood(tmp, 0))
    cpu, refused = common.find_qemu_cpu(common.probe_path(), tmp)
    variants = _variants(tmp, cpu)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, (fn, ok_status) in variants.items():
            pair = []
            for elf, want in ((elf_n, nbytes), (elf_0, 0)):
                out = str(tmp / "console.out")
                if os.path.exists(out):
                    os.unlink(out)
                r = fn(elf, out)
                got = os.path.getsize(out) if os.path.exists(out) else -1
                if got != want or (r.returncode != ok_status and not (name == "qemu" and r.returncode % 2 == 1)):
                    raise RuntimeError(f"{name}: status {r.returncode}, {got} console bytes (want {want}): "
                                       f"{r.stderr.decode(errors='replace')[-400:]}")
                pair.append(r.wall_s)
            times[name].append(tuple(pair))
    shutil.rmtree(tmp, ignore_errors=True)
    bps = {k: median(nbytes / (n - z) for n, z in v) for k, v in times.items()}
    q = bps.get("qemu")
    rows = [row("4", "console throughput, 8250-style polled TX (THR coalesced, the default)", "bytes/s",
                bps["pvhboot"], q, "QEMU microvm", GOAL, ">="),
            row("4n", "  same, --no-coalesced-uart (every THR write exits)", "bytes/s",
                bps["pvhboot --no-coalesced-uart"], q, "QEMU microvm", GOAL, ">=")]
    notes = [f"{nbytes} bytes, {repeats} interleaved runs; throughput = N / (T(N) - T(0)); QEMU -cpu {cpu}",
             f"per byte: pvhboot (THR coalesced PIO) {1e6 / bps['pvhboot']:.2f} us, --no-coalesced-uart "
             f"{1e6 / bps['pvhboot --no-coalesced-uart']:.2f} us" + (f", QEMU {1e6 / q:.2f} us" if q else "")]
    return {"rows": rows, "notes": notes,
            "details": {"nbytes": nbytes, "repeats": repeats, "wall_s_n_and_0": times, "bytes_per_s": bps,
                        "qemu_cpu": cpu, "qemu_cpu_refused": refused}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bytes", type=int, default=1 << 20)
    a = ap.parse_args(argv)
    common.emit("console", **measure(a.repeats, a.bytes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
