"""Run cells as independent child processes, ``jobs`` at a time, on this machine.

Each cell is ``python3 -m pvhboot.compare.cell`` with its spec on stdin (this very checkout of
pvhboot: the child gets its PYTHONPATH).  A child that dies, prints no result or outlives its
guest timeout by CHILD_GRACE_S is killed and reported as that cell's result; the others go on.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .cells import Cell

CHILD_GRACE_S = 60  # the VMM stops the guest at cell.timeout; this long again for start-up and teardown
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding pvhboot/
CELL_MODULE = "pvhboot.compare.cell"  # what each child runs (python3 -m), its spec on stdin


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


def run_cell(cell: Cell) -> dict:
    """Boot ``cell`` in a child process; always returns a result dict (never raises for the cell)."""
    # -X faulthandler: a child that dies on a signal (a VMM exited -11 once in the rig) leaves every
    # thread's Python traceback in its stderr, which the result keeps (the report prints it).
    argv = [sys.executable, "-X", "faulthandler", "-m", CELL_MODULE]
    try:
        p = subprocess.run(argv, input=json.dumps(cell.to_json()), capture_output=True, text=True,
                           timeout=cell.timeout + CHILD_GRACE_S, env=child_env())
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"")[-2000:]
        return {"status": "timeout", "detail": f"the cell's VMM process did not finish within "
                f"{cell.timeout + CHILD_GRACE_S:g} s and was killed",
                "stderr": err.decode("utf-8", "replace") if isinstance(err, bytes) else err}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode < 0 and not lines:
        # Killed by a signal (a vCPU thread took SIGSEGV once in the nested rig, 2026-12-02; its cause
        # is not known): a crash, which engine.run_cells boots again like a guest's; one that repeats
        # is still a finding.
        try:
            name = signal.Signals(-p.returncode).name
        except ValueError:
            name = f"signal {-p.returncode}"
        return {"status": "crash", "detail": f"the cell's VMM process was killed by {name} ({p.returncode}) "
                "without a result", "stderr": p.stderr[-4000:]}
    if p.returncode != 0 or not lines:
        return {"status": "error", "detail": f"the cell's VMM process exited {p.returncode} without a result",
                "stderr": p.stderr[-4000:]}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as e:
        return {"status": "error", "detail": f"unreadable result from the cell's process: {e}"}


def run_cells(cells: list[Cell], jobs: int, progress=None) -> list[dict]:
    """Results in the order of ``cells``; ``progress(cell, result)`` after each one finishes."""
    def one(cell: Cell) -> dict:
        result = run_cell(cell)
        if progress is not None:
            progress(cell, result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, cells))
