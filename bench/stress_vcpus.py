"""Bench 9: many vCPUs.  ``pvhboot boot --cpus N`` on the probe (64 MiB) for N = 128 and 255 (the MADT's
xAPIC limit, boot.plan.MAX_CPUS) beside N = 1: wall time to the probe's verdict and peak RSS (VmHWM) of
the pvhboot process, reported as extra KiB per extra vCPU (one Python thread, one KVM vCPU fd and its
kvm_run mapping each).  The probe starts every AP with INIT/SIPI/SIPI and checks that each reports
its APIC id, so a run counts only when it prints ``PROBE PASS`` with all N-1 APs seen and exits 0 (a
VMM crash at teardown, issue 10's SIGSEGV, is a failure here too).  The kvm tier covers 1..96 vCPUs.
"""
from __future__ import annotations

import os
import sys

from . import common
from .common import median, row

COUNTS = (1, 128, 255)
MEMORY = "64M"


def boot_argv(cpus: int) -> list[str]:
    return [sys.executable, "-m", "pvhboot", "boot", "--cpus", str(cpus), "--memory", MEMORY, "--timeout", "300"]


def run_once(cpus: int) -> common.ProcessRun:
    # this checkout's pvhboot, whatever `pip install -e` points at
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(common.REPO / "src"),
                                                                      os.environ.get("PYTHONPATH")]))}
    r = common.run_process(boot_argv(cpus), timeout=600, env=env)
    out = r.stdout.decode(errors="replace")
    aps = f"rule.smp.aps_started=pass {cpus - 1} of {cpus - 1} APs reported" if cpus > 1 else "PROBE PASS"
    if r.returncode != 0 or "PROBE PASS" not in out or aps not in out:
        raise RuntimeError(f"--cpus {cpus}: exit {r.returncode}; {r.stderr.decode(errors='replace')[-600:]}"
                           f"{out[-400:]}")
    return r


def measure(repeats: int = 3) -> dict:
    runs: dict[int, list[common.ProcessRun]] = {n: [] for n in COUNTS}
    for _ in range(repeats):  # interleaved
        for n in COUNTS:
            runs[n].append(run_once(n))
    wall = {n: median(r.wall_s for r in v) for n, v in runs.items()}
    cpu = {n: median(r.cpu_s for r in v) for n, v in runs.items()}
    rss = {n: median(r.peak_rss_kib for r in v) for n, v in runs.items()}
    rows = []
    for ident, n in (("9", 128), ("9b", 255)):
        rows.append(row(ident, f"probe boot, {n} vCPUs, all APs started (wall)", "s", wall[n], wall[1],
                        "1 vCPU", cpu_s=cpu[n], peak_rss_mib=rss[n] / 1024))
    for ident, n in (("9r", 128), ("9s", 255)):
        rows.append(row(ident, f"  peak RSS per extra vCPU, {n} vCPUs", "KiB/vCPU", (rss[n] - rss[1]) / (n - 1)))
    notes = [f"{repeats} interleaved runs of `pvhboot boot --cpus N --memory {MEMORY}` (probe), medians; wall "
             + ", ".join(f"{n}: {wall[n]:.2f} s" for n in COUNTS) + "; CPU "
             + ", ".join(f"{n}: {cpu[n]:.2f} s" for n in COUNTS) + "; peak RSS "
             + ", ".join(f"{n}: {rss[n] / 1024:.1f} MiB" for n in COUNTS)]
    details = {"counts": COUNTS, "repeats": repeats,
               "runs": {n: [{"wall_s": r.wall_s, "cpu_s": r.cpu_s, "peak_rss_kib": r.peak_rss_kib} for r in v]
                        for n, v in runs.items()}}
    return {"rows": rows, "notes": notes, "details": details}


main = common.repeats_main("stress_vcpus", measure, repeats=3)


if __name__ == "__main__":
    raise SystemExit(main())
