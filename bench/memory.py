"""Bench 5: VMM memory overhead = peak RSS of the pvhboot process (VmHWM) minus the guest memory it
touched (the resident pages of the guest RAM mappings, from /proc/self/smaps, read after the run:
guest pages are never given back during a run, so the end value is the peak).  For the probe with
16 MiB and with 512 MiB of guest RAM.  The child runs :class:`pvhboot.vmm.MicroVM` (what ``pvhboot
boot`` runs) with the console discarded.  For context: ``python3 -c pass`` and the QEMU microvm
process (peak RSS, guest pages included) on the same probe.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from . import common
from .common import median, row

GOAL_MIB = 15.0
FLOOD_GOAL_MIB = 4.0  # issue 10: a console flood keeps the peak within a few MiB of an idle VM's
FLOOD_BYTES = 8 << 20  # ~40 s per run here (bench 4: ~300 kB/s); `--flood-bytes 1G` for the 1 GB
SIZES = {"probe 16 MiB": 16 << 20, "probe 512 MiB": 512 << 20}


def rss_of_ranges(smaps: str, ranges: list[tuple[int, int]]) -> int:
    """Bytes resident (Rss) in the smaps entries that start inside any [start, end) of ``ranges``."""
    total = 0
    current = None
    for line in smaps.splitlines():
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            start = int(m.group(1), 16)
            current = any(a <= start < b for a, b in ranges)
            continue
        if current and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def vm_hwm(status: str) -> int:
    m = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(m.group(1)) * 1024 if m else 0


def child(memory: int) -> None:
    from pvhboot.probe import probe_path
    from pvhboot.vmm import MicroVM

    with MicroVM(probe_path(), memory=memory, console=None) as vm:
        r = vm.run()
        ranges = [(reg.host_addr, reg.host_addr + reg.size) for reg in vm.mem.regions]
        guest = rss_of_ranges(Path("/proc/self/smaps").read_text(), ranges)
        hwm = vm_hwm(Path("/proc/self/status").read_text())
    print(json.dumps({"reason": r.reason, "exit_code": r.exit_code, "vm_hwm": hwm, "guest_rss": guest}))


def _run_child(memory: int) -> dict:
    p = subprocess.run([sys.executable, "-m", "bench.memory", "--child", str(memory)], capture_output=True,
                       text=True, timeout=300, cwd=str(common.REPO))
    if p.returncode != 0:
        raise RuntimeError(f"memory child failed: {p.stderr[-600:]}")
    d = json.loads(p.stdout.strip().splitlines()[-1])
    if d["reason"] != "debug_exit" or d["exit_code"] != 0:
        raise RuntimeError(f"probe did not pass in the memory child: {d}")
    return d


def console_flood(repeats: int, nbytes: int) -> tuple[list[dict], list[str], dict]:
    """Peak RSS of `pvhboot boot` (the whole process) for bench 4's uart_flood guest printing
    ``nbytes`` against the same guest printing nothing (the idle VM), interleaved, console to
    /dev/null.  The exit record keeps a bounded tail (vmm/builder.py CONSOLE_TAIL), so the
    difference must not grow with ``nbytes``."""
    MiB = 1 << 20
    tmp = common.build_dir()
    elfs = {"idle": str(common.build_uart_flood(tmp, 0)), "flood": str(common.build_uart_flood(tmp, nbytes))}
    peaks: dict[str, list[float]] = {"idle": [], "flood": []}
    walls: list[float] = []
    for _ in range(repeats):
        for name, elf in elfs.items():
            r = common.run_process(common.pvhboot_argv() + ["boot", elf, "--memory", "64M"],
                                   stdout_path=os.devnull, timeout=max(600, nbytes / 50e3))
            if r.returncode != 0:
                raise RuntimeError(f"console flood ({name}): status {r.returncode}: "
                                   f"{r.stderr.decode(errors='replace')[-400:]}")
            peaks[name].append(r.peak_rss_kib / 1024)
            if name == "flood":
                walls.append(r.wall_s)
    shutil.rmtree(tmp, ignore_errors=True)
    idle, flood = median(peaks["idle"]), median(peaks["flood"])
    size = f"{nbytes / MiB:g} MiB" if nbytes < 1 << 30 else f"{nbytes / (1 << 30):g} GiB"
    rows = [row("5i", "VMM peak RSS, idle VM (uart_flood guest, 0 bytes)", "MiB", idle),
            row("5f", f"VMM peak RSS, {size} console flood, minus idle", "MiB", flood - idle,
                goal=FLOOD_GOAL_MIB, peak_mib=flood)]
    notes = [f"console flood: {size} in {median(walls):.1f} s per run; peak RSS idle {idle:.1f} MiB, "
             f"flood {flood:.1f} MiB (VmHWM of the whole pvhboot process; the exit record keeps the "
             f"last 64 KiB)"]
    return rows, notes, {"peak_mib": peaks, "flood_wall_s": walls, "flood_bytes": nbytes}


def measure(repeats: int = 3, flood_bytes: int = FLOOD_BYTES) -> dict:
    MiB = 1 << 20
    res = {name: [_run_child(size) for _ in range(repeats)] for name, size in SIZES.items()}
    rows = []
    for name, runs in res.items():
        over = median((r["vm_hwm"] - r["guest_rss"]) / MiB for r in runs)
        rows.append(row("5" if name.endswith("16 MiB") else "5b", f"VMM memory overhead, {name}", "MiB",
                        over, goal=GOAL_MIB,
                        peak_mib=median(r["vm_hwm"] / MiB for r in runs),
                        guest_touched_mib=median(r["guest_rss"] / MiB for r in runs)))
    py = median(common.run_process([sys.executable, "-c", "pass"]).peak_rss_kib / 1024 for _ in range(repeats))
    rows.append(row("5p", "  python3 -c pass, peak RSS (this machine's site .pth files included)", "MiB", py))
    py_s = median(common.run_process([sys.executable, "-S", "-c", "pass"]).peak_rss_kib / 1024 for _ in range(repeats))
    rows.append(row("5s", "  python3 -S -c pass, peak RSS (bare interpreter)", "MiB", py_s))
    tmp = common.build_dir()
    cpu, _ = common.find_qemu_cpu(common.probe_path(), tmp)
    if cpu is not None:
        q = median(common.run_process(common.qemu_microvm_argv(common.probe_path(), "512M", str(tmp / "q.out"),
                                                               cpu)).peak_rss_kib / 1024 for _ in range(repeats))
        rows.append(row("5q", "  QEMU microvm probe 512 MiB, peak RSS (guest included)", "MiB", q))
    shutil.rmtree(tmp, ignore_errors=True)
    notes = ["; ".join(f"{r['metric'].split(', ')[-1]}: peak {r['peak_mib']:.1f} MiB, guest touched "
                       f"{r['guest_touched_mib']:.1f} MiB" for r in rows if "guest_touched_mib" in r)]
    flood_rows, flood_notes, flood = console_flood(repeats, flood_bytes)
    return {"rows": rows + flood_rows, "notes": notes + flood_notes,
            "details": {"runs": res, "repeats": repeats, "console_flood": flood}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--flood-bytes", type=int, default=FLOOD_BYTES,
                    help=f"console flood size (a multiple of 16; default {FLOOD_BYTES})")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child)
        return 0
    common.emit("memory", **measure(a.repeats, a.flood_bytes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
