"""Bench 1: the exit round trip.  The same tiny real-mode guest

    mov ecx, N ; 1: out 0x10, al ; dec ecx ; jnz 1b ; (exit)

run by pvhboot's real run loop (:class:`pvhboot.vmm.Machine`, full device set, in-kernel irqchip, one
vCPU thread) and by bench/c/kvm_exit_loop.c compiled at bench time with ``cc -O2`` (the limit).  The
pvhboot guest leaves through the debug-exit port (with the irqchip HLT does not exit); the C one halts.

Also measured, for the analysis (no goal): a bare Python loop over the same vCPU (KVM_RUN through
``fcntl.ioctl`` + one unpack, no pvhboot dispatch: the interpreter's floor), and the same guest with
port 0x10 registered as a coalesced PIO zone (KVM_CAP_COALESCED_PIO: writes queue in the ring page
instead of exiting).  Runs are interleaved (C, pvhboot, floor, coalesced) and medians taken; wall
time and CPU time (user + system of the process, guest time included) are both reported, the ratio
on wall time is the goal, the CPU ratio is the one a shared machine disturbs less.
"""
from __future__ import annotations

import argparse
import struct
import subprocess
import time

from . import common
from .common import median, row

GUEST_LOAD = 0x1000
GOAL = 1.10


def guest_code(n: int) -> bytes:
    """16-bit: mov ecx, n ; L: out 0x10, al ; dec ecx ; jnz L ; mov al, 0 ; out 0xf4, al ; hlt"""
    return (bytes([0x66, 0xB9]) + n.to_bytes(4, "little") + bytes([0xE6, 0x10, 0x66, 0x49, 0x75, 0xFA])
            + bytes([0xB0, 0x00, 0xE6, 0xF4, 0xF4]))


def real_mode_state():
    """Real mode at GUEST_LOAD, segments at 0 (what the C loop sets with KVM_SET_SREGS)."""
    from pvhboot.boot.cpu_state import CpuState, DescriptorTable, Segment

    code = Segment(selector=0, base=0, limit=0xFFFF, type=0xB, present=1, s=1)
    data = Segment(selector=0, base=0, limit=0xFFFF, type=0x3, present=1, s=1)
    return CpuState(protocol="real", rip=GUEST_LOAD, rsp=0x8000, cs=code, ds=data, es=data, fs=data,
                    gs=data, ss=data, tr=Segment(type=0xB, present=1, limit=0xFFFF),
                    ldt=Segment(type=0x2, present=1, limit=0xFFFF), idt=DescriptorTable(0, 0x3FF))


def parse_c_output(text: str) -> dict:
    """``exits=N seconds=T us_per_exit=X cpu_seconds=C`` -> dict of numbers."""
    kv = dict(item.split("=", 1) for item in text.split() if "=" in item)
    return {"exits": int(kv["exits"]), "seconds": float(kv["seconds"]),
            "cpu_seconds": float(kv.get("cpu_seconds", "nan"))}


def run_c(exe, n: int) -> tuple[float, float]:
    p = subprocess.run([str(exe), str(n)], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"C loop failed ({p.returncode}): {p.stderr.strip()}")
    r = parse_c_output(p.stdout)
    if r["exits"] != n:
        raise RuntimeError(f"C loop counted {r['exits']} exits, expected {n}")
    return r["seconds"], r["cpu_seconds"]


def _machine(n: int, coalesced=()):
    from pvhboot.memory import GuestMemory
    from pvhboot.vmm import Machine

    mem = GuestMemory([(0, 1 << 20)])
    mem.write(GUEST_LOAD, guest_code(n))
    try:
        return mem, Machine(mem, real_mode_state(), console=None, timeout=120, coalesced=coalesced)
    except BaseException:
        mem.close()
        raise


def run_pvhboot(n: int, coalesced=()) -> tuple[float, float]:
    """pvhboot's real path: Machine.run() (vCPU thread, run_vcpu, bus dispatch, exit record)."""
    mem, m = _machine(n, coalesced)
    try:
        c0 = time.process_time()
        r = m.run()
        cpu = time.process_time() - c0
        if r.reason != "debug_exit" or r.exit_code != 0:
            raise RuntimeError(f"pvhboot run ended with {r.reason} {r.exit_code}: {r.crash_report}")
        return r.wall_time_s, cpu
    finally:
        m.close()
        mem.close()


_IO = struct.Struct("<8xI20xBBHIQ")


def run_floor(n: int) -> tuple[float, float]:
    """The interpreter's floor: KVM_RUN via the vCPU's fcntl.ioctl partial + one unpack per exit,
    on this thread, nothing else (what any Python VMM pays at least)."""
    mem, m = _machine(n)
    try:
        vcpu = m.vm.vcpus[0]
        run, view, unpack = vcpu.run, vcpu.run_view, _IO.unpack_from
        w0, c0 = time.perf_counter(), time.thread_time()
        while True:
            run()
            if unpack(view, 0)[3] == 0xF4:
                break
        return time.perf_counter() - w0, time.thread_time() - c0
    finally:
        m.close()
        mem.close()


def measure(repeats: int = 5, exits: int = 100_000) -> dict:
    from pvhboot.abi import kvm as abi
    from pvhboot.kvm import Kvm

    tmp = common.build_dir()
    exe = common.compile_c_loop(tmp)
    with Kvm() as kvm:
        has_cpio = bool(kvm.check_extension(abi.KvmCap.COALESCED_PIO))
    runs: dict[str, list[tuple[float, float]]] = {"c": [], "pvhboot": [], "floor": [], "coalesced": []}
    for _ in range(repeats):
        runs["c"].append(run_c(exe, exits))
        runs["pvhboot"].append(run_pvhboot(exits))
        runs["floor"].append(run_floor(exits))
        if has_cpio:
            runs["coalesced"].append(run_pvhboot(exits, coalesced=((0x10, 1, True),)))
    us = {k: (median(w for w, _ in v) * 1e6 / exits, median(c for _, c in v) * 1e6 / exits)
          for k, v in runs.items() if v}
    rows = [
        row("1", "exit round trip (wall)", "us/exit", us["pvhboot"][0], us["c"][0], "C KVM_RUN loop", GOAL),
        row("1c", "exit round trip (CPU time)", "us/exit", us["pvhboot"][1], us["c"][1], "C KVM_RUN loop", GOAL),
        row("1f", "bare Python ioctl loop, no pvhboot (CPU)", "us/exit", us["floor"][1], us["c"][1],
            "C KVM_RUN loop"),
    ]
    if "coalesced" in us:
        rows.append(row("1z", "same writes, port 0x10 coalesced PIO (wall)", "us/write", us["coalesced"][0],
                        us["c"][0], "C KVM_RUN loop (full exits)"))
    notes = [f"{exits} port writes per run, {repeats} interleaved runs, medians; Machine defaults "
             "(COM1 THR coalesced: each exit first peeks at the coalesced ring)",
             "pvhboot: Machine.run() with the in-kernel irqchip and the PC device set; C: no irqchip",
             f"pvhboot adds {us['pvhboot'][1] - us['c'][1]:.2f} us CPU per exit over C, of which the bare "
             f"Python ioctl loop already costs {us['floor'][1] - us['c'][1]:.2f} us"]
    details = {"exits": exits, "repeats": repeats, "runs_s": runs, "median_us_wall_cpu": us,
               "coalesced_pio": has_cpio}
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    return {"rows": rows, "notes": notes, "details": details}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--exits", type=int, default=100_000)
    a = ap.parse_args(argv)
    r = measure(a.repeats, a.exits)
    common.emit("exit_roundtrip", **r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
