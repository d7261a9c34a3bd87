"""Bench 8: `pvhboot compare` throughput on probe cells (2 paths x 1-2 vCPUs x 64 MiB/512 MiB = 8 cells,
each a child process booting the probe): cells per minute with ``--jobs 1`` and ``--jobs 2`` (the
scaling ratio), and the Dask backend on a ``distributed.LocalCluster`` (2 worker processes, 1 thread
each) against the local pool with the same parallelism (cost per cell, ratio; goal <= 1.1).

Rounds are interleaved (jobs 1, jobs 2, Dask) and medians taken; the cluster is started once and
warmed with one round (worker imports, the first scatter), as a farm's would be.  Row 8c uses one
connected client (a farm's long-lived submitter); connecting a client, which `pvhboot compare
--cluster` does once per run, is measured on its own (8d).
"""
from __future__ import annotations

import tempfile
import time

from . import common
from .common import median, row


def probe_cells(workdir: str):
    from pvhboot.compare.engine import Options, plan_cells

    _, cells = plan_cells(Options(kernel=None, cpus=(1, 2), memory=(64 << 20, 512 << 20)), workdir)
    return cells


def _timed(cells, jobs: int, cluster=None) -> float:
    from pvhboot.compare.engine import run_cells

    t0 = time.perf_counter()
    records = run_cells(cells, jobs, cluster=cluster)
    wall = time.perf_counter() - t0
    bad = [r for r in records if r["status"] != "ok"]
    if bad:
        raise SystemExit(f"compare bench: a cell did not boot: {bad[0].get('status')} {bad[0].get('detail', '')}")
    return wall


def measure(repeats: int = 3) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        cells = probe_cells(tmp)
        n = len(cells)
        walls: dict[str, list[float]] = {"jobs1": [], "jobs2": [], "dask": []}
        dask_note = None
        try:
            from distributed import LocalCluster
        except ImportError:
            LocalCluster = None
            dask_note = "Dask distributed not installed: pip install 'pvhboot[cluster]'"
        cluster = client = None
        connects: list[float] = []
        try:
            if LocalCluster is not None:
                from distributed import Client

                cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    Client(cluster.scheduler_address, timeout=15).close()
                    connects.append(time.perf_counter() - t0)
                client = Client(cluster.scheduler_address, timeout=15)
                _timed(cells, 2, client)  # warm-up
            _timed(cells, 2)  # warm-up of the local pool (page cache, imports)
            for _ in range(repeats):
                walls["jobs1"].append(_timed(cells, 1))
                walls["jobs2"].append(_timed(cells, 2))
                if client is not None:
                    walls["dask"].append(_timed(cells, 2, client))
        finally:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
    per_min = {k: 60 * n / median(v) for k, v in walls.items() if v}
    per_cell = {k: median(v) / n for k, v in walls.items() if v}
    rows = [row("8", f"compare: probe cells per minute, --jobs 1 ({n} cells)", "cells/min", per_min["jobs1"]),
            row("8b", "compare: probe cells per minute, --jobs 2", "cells/min", per_min["jobs2"],
                per_min["jobs1"], "--jobs 1")]
    if "dask" in per_cell:
        rows.append(row("8c", "compare: Dask LocalCluster (2 workers) cost per cell", "s/cell", per_cell["dask"],
                        per_cell["jobs2"], "local pool --jobs 2", goal=1.1))
        rows.append(row("8d", "compare: connecting a Dask client (once per --cluster run)", "s", median(connects)))
    else:
        rows.append(row("8c", "compare: Dask LocalCluster cost per cell", "s/cell", None, status="not run"))
    notes = [f"{repeats} interleaved rounds of {n} probe cells (pvh, linux64 x 1-2 vCPUs x 64M/512M), medians; "
             f"each cell is a child process; {common.machine_facts()['cpus']} shared cores"]
    if dask_note:
        notes.append(dask_note)
    return {"rows": rows, "notes": notes, "details": {"walls_s": walls, "cells": n, "connect_s": connects}}


main = common.repeats_main("compare", measure, repeats=3)


if __name__ == "__main__":
    raise SystemExit(main())
