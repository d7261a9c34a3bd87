"""Bench 7: VM churn: probe VMs created, run to the probe's debug exit and destroyed per second, by 1
and by 2 concurrent worker *processes* (each one Python process looping MicroVM(...).run() for a
fixed time; separate processes because the vCPU loop holds the GIL between exits and a process is
what a user scaling out would start).  The first VM of each worker (imports, warm-up) is not counted.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from . import common
from .common import median, row

MEMORY = 512 << 20


def worker(seconds: float) -> None:
    from pvhboot.probe import probe_path
    from pvhboot.vmm import MicroVM

    def one():
        with MicroVM(probe_path(), memory=MEMORY, console=None) as vm:
            r = vm.run()
        if r.reason != "debug_exit" or r.exit_code != 0:
            raise SystemExit(f"probe VM ended with {r.reason} {r.exit_code}")

    one()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        one()
        n += 1
    print(json.dumps({"vms": n, "seconds": time.perf_counter() - t0}))


def _round(workers: int, seconds: float) -> float:
    procs = [subprocess.Popen([sys.executable, "-m", "bench.churn", "--worker", str(seconds)],
                              stdout=subprocess.PIPE, text=True, cwd=str(common.REPO)) for _ in range(workers)]
    rate = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 120)
        if p.returncode != 0:
            raise RuntimeError(f"churn worker failed ({p.returncode})")
        d = json.loads(out.strip().splitlines()[-1])
        rate += d["vms"] / d["seconds"]
    return rate


def measure(repeats: int = 3, seconds: float = 3.0) -> dict:
    rates = {1: [], 2: []}
    for _ in range(repeats):
        for w in (1, 2):
            rates[w].append(_round(w, seconds))
    r1, r2 = median(rates[1]), median(rates[2])
    rows = [row("7", "VM churn, 1 process (probe, 512 MiB)", "VMs/s", r1),
            row("7b", "VM churn, 2 concurrent processes", "VMs/s", r2, r1, "1 process")]
    notes = [f"{repeats} rounds of {seconds:g} s per configuration, medians; ratio = scaling from 1 to 2 "
             f"processes on {common.machine_facts()['cpus']} shared cores"]
    return {"rows": rows, "notes": notes, "details": {"rates": rates, "seconds": seconds}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--worker", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker)
        return 0
    common.emit("churn", **measure(a.repeats, a.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
