"""Bench 9: gdb single-step round trip -- ``stepi`` per second, from Debian's gdb, against pvhboot's
``--gdb`` stub and against QEMU's gdbstub (``-s -S`` style: ``-gdb tcp:...`` + ``-S``) on the same probe
guest, from the same instruction (the PVH entry, ``pvh_start32``) for the same number of steps.

QEMU starts in its firmware (qboot) at the reset vector, so its session first runs to the PVH entry
with ``hbreak *PHYS32_ENTRY`` / ``continue``; pvhboot's starts there (``--gdb-wait``).  Each session then
times ``N`` ``stepi`` commands inside gdb (its Python API, so gdb's start-up and connection are not
counted).  Reported as steps/s and as a ratio (pvhboot / QEMU: above 1 is faster).  QEMU runs with TCG
and, where it runs on this /dev/kvm, with ``-accel kvm``.  Interleaved repeats, medians.

Rows 13b/13p: breakpoint hits per second -- ``break *emit`` (the probe's console line writer, called
for every report line), then ``continue`` timed ``HITS`` times -- with pvhboot's default breakpoint
(a debug register on kvm_pvm, int3 on hardware KVM) and with its page traps (``monitor swbreak
pagetrap``, what the nested rig uses), against QEMU's gdbstub with TCG.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys

from . import common
from .common import median, row

STEPS = 300
HITS = 40
RATE = re.compile(r"STEPI_PER_S=([0-9.]+)")
HIT_RATE = re.compile(r"HITS_PER_S=([0-9.]+)")
ENTRY_PC = re.compile(r"PC_AT_START=(0x[0-9a-f]+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gdb_script(port: int, entry: int, steps: int, run_to_entry: bool) -> str:
    lines = ["set pagination off", "set confirm off", "set tcp connect-timeout 60",
             f"target remote 127.0.0.1:{port}"]
    if run_to_entry:
        lines += [f"hbreak *{entry:#x}", "continue", "delete"]
    lines += ["python",
              "import gdb, time",
              "print('PC_AT_START=%#x' % int(gdb.parse_and_eval('$pc')))",
              "t0 = time.perf_counter()",
              f"for _ in range({steps}):",
              "    gdb.execute('stepi', to_string=True)",
              f"print('STEPI_PER_S=%f' % ({steps} / (time.perf_counter() - t0)))",
              "end", "kill"]
    return "\n".join(lines) + "\n"


def gdb_script_hits(port: int, addr: int, hits: int, pagetrap: bool) -> str:
    lines = ["set pagination off", "set confirm off", "set tcp connect-timeout 60",
             f"target remote 127.0.0.1:{port}", *(["monitor swbreak pagetrap"] if pagetrap else []),
             f"break *{addr:#x}", "continue",  # the first hit (after QEMU's firmware) is not timed
             "python",
             "import gdb, time",
             "print('PC_AT_START=%#x' % int(gdb.parse_and_eval('$pc')))",
             "t0 = time.perf_counter()",
             f"for _ in range({hits}):",
             "    gdb.execute('continue', to_string=True)",
             f"print('HITS_PER_S=%f' % ({hits} / (time.perf_counter() - t0)))",
             "end", "kill"]
    return "\n".join(lines) + "\n"


def session(server_argv: list[str], port: int, entry: int, steps: int, run_to_entry: bool, tmp,
            env=None, script_text: str | None = None, rate_re=RATE) -> tuple[float, str]:
    """Start the server, run gdb's timed steps (or ``script_text``) against it; (rate, pc at start)."""
    script = tmp / "steps.gdb"
    script.write_text(script_text or gdb_script(port, entry, steps, run_to_entry))
    server = subprocess.Popen(server_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=env)
    try:  # gdb retries a refused connection until the server listens ("tcp connect-timeout")
        g = subprocess.run(["gdb", "-nx", "-batch", "-x", str(script)], capture_output=True, text=True,
                           timeout=300, stdin=subprocess.DEVNULL)
        out = g.stdout + g.stderr
        m, pc = rate_re.search(out), ENTRY_PC.search(out)
        if not m or not pc:
            raise RuntimeError(f"gdb session failed: {out[-600:]}")
        return float(m.group(1)), pc.group(1)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(10)


def measure(repeats: int = 3, steps: int = STEPS) -> dict:
    from pvhboot.image import load_kernel

    if not shutil.which("gdb"):
        raise RuntimeError("gdb is not installed (scripts/setup-tests.sh installs it)")
    tmp = common.build_dir()
    probe = common.probe_path()
    entry = load_kernel(probe).entries.pvh
    env = {**os.environ, "PYTHONPATH": str(common.REPO / "src")}  # this checkout's pvhboot
    qemu = shutil.which(common.QEMU)
    accels = {"tcg": None}
    notes = []
    if qemu:
        cpu, _ = common.find_qemu_cpu(probe, tmp)
        if cpu is not None:
            accels["kvm"] = cpu
        else:
            notes.append("QEMU -accel kvm does not run the probe here: TCG only")
    else:
        notes.append("QEMU is not installed: pvhboot only")
    runs: dict[str, list[float]] = {"pvhboot": [], **({f"qemu-{a}": [] for a in accels} if qemu else {})}
    hit_runs: dict[str, list[float]] = {"pvhboot": [], "pvhboot-pagetrap": [], **({"qemu-tcg": []} if qemu else {})}
    emit = _symbol(probe, "emit")
    pcs: dict[str, str] = {}
    for _ in range(repeats):
        for name, pagetrap in (("pvhboot", False), ("pvhboot-pagetrap", True)):
            port = free_port()
            argv = [sys.executable, "-m", "pvhboot", "boot", "--memory", "64M", "--gdb", f"127.0.0.1:{port}",
                    "--gdb-wait", "--timeout", "300"]
            rate, _ = session(argv, port, entry, 0, False, tmp, env, gdb_script_hits(port, emit, HITS, pagetrap),
                              HIT_RATE)
            hit_runs[name].append(rate)
        if qemu:
            port = free_port()
            rate, _ = session(_qemu_argv(probe, "tcg", None, port), port, entry, 0, False, tmp, None,
                              gdb_script_hits(port, emit, HITS, False), HIT_RATE)
            hit_runs["qemu-tcg"].append(rate)
        port = free_port()
        argv = [sys.executable, "-m", "pvhboot", "boot", "--memory", "64M", "--gdb", f"127.0.0.1:{port}",
                "--gdb-wait", "--timeout", "300"]
        rate, pcs["pvhboot"] = session(argv, port, entry, steps, False, tmp, env)
        runs["pvhboot"].append(rate)
        if not qemu:
            continue
        for accel, cpu in accels.items():
            port = free_port()
            rate, pcs[f"qemu-{accel}"] = session(_qemu_argv(probe, accel, cpu, port), port, entry, steps, True, tmp)
            runs[f"qemu-{accel}"].append(rate)
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: median(v) for k, v in runs.items() if v}
    rows = [row("13", "gdb stepi round trip, pvhboot --gdb", "steps/s", med["pvhboot"])]
    for accel in accels:
        q = med.get(f"qemu-{accel}")
        if q is not None:
            # higher is better: the ratio is pvhboot / QEMU
            rows.append(row(f"13{accel[0]}", f"same, against QEMU's gdbstub ({accel})", "steps/s", med["pvhboot"],
                            q, f"QEMU microvm {accel}"))
    hits = {k: median(v) for k, v in hit_runs.items() if v}
    q = hits.get("qemu-tcg")
    rows.append(row("13b", "gdb breakpoint hit + continue, pvhboot default (debug register here)", "hits/s",
                    hits["pvhboot"], q, "QEMU microvm tcg" if q else None))
    rows.append(row("13p", "same, pvhboot page traps (monitor swbreak pagetrap: the rig's mechanism)", "hits/s",
                    hits["pvhboot-pagetrap"], q, "QEMU microvm tcg" if q else None))
    notes.append(f"13b/13p: break *emit ({emit:#x}), {HITS} timed continues after the first hit; ratio = "
                 "pvhboot / QEMU (above 1 is faster)")
    notes.append(f"{steps} stepi from the PVH entry {entry:#x} (pc at start: "
                 + ", ".join(f"{k} {v}" for k, v in pcs.items()) + f"), {repeats} interleaved runs, medians; "
                 "timed inside gdb (Python API), connection and start-up not counted; ratio = pvhboot / QEMU")
    return {"rows": rows, "notes": notes, "details": {"runs": runs, "hit_runs": hit_runs, "steps": steps,
                                                      "pcs": pcs}}


def _qemu_argv(probe, accel: str, cpu: str | None, port: int) -> list[str]:
    return [common.QEMU, "-M", "microvm", "-accel", accel, *(["-cpu", cpu] if cpu else []), "-m", "64M",
            "-smp", "1", "-kernel", probe, "-nodefaults", "-nographic", "-no-reboot",
            "-serial", "null", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-gdb", f"tcp:127.0.0.1:{port}", "-S"]


def _symbol(elf_path, name: str) -> int:
    from elftools.elf.elffile import ELFFile

    with open(elf_path, "rb") as f:
        return ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]["st_value"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=STEPS)
    a = ap.parse_args(argv)
    common.emit("gdb_step", **measure(a.repeats, a.steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
