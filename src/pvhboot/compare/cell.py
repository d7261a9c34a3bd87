"""Boot ONE cell and print its result as one JSON line: ``python3 -m pvhboot.compare.cell < SPEC.json``.

This is the child process of every cell (local pool and Dask workers alike), so that a cell whose
VMM crashes, hangs or runs out of memory never takes the others down.  The spec is
:class:`pvhboot.compare.cells.Cell` as JSON; the seeded fault (if any) is applied through the
builder's ``mutate`` hook and is reachable from nowhere else.
"""
from __future__ import annotations

import json
import sys
import time

from .cells import Cell

CONSOLE_TAIL_LINES = 60


def fingerprint_of(cell: Cell, console: bytes) -> dict[str, str]:
    if cell.collector == "probe":
        from .probe import probe_booted, probe_fingerprint

        return probe_fingerprint(console) if probe_booted(console) else {}
    from .linux import linux_fingerprint

    return linux_fingerprint(console, cell.link_text)


def boot_cell(cell: Cell) -> dict:
    """Boot ``cell`` in this process; the result dict (status, fingerprint, exit, crash report)."""
    from ..errors import PvhbootError
    from ..vmm import MicroVM
    from .engine import kernel_path  # the VMM boots what it is given: None (the probe) named here

    mutate = None
    if cell.fault:
        from .faults import fault_hook

        mutate = fault_hook(cell.fault, cell.cpus)
    start = time.monotonic()
    try:
        with MicroVM(kernel_path(cell.kernel), initrd=cell.initrd, cmdline=cell.cmdline, memory=cell.memory,
                     cpus=cell.cpus, protocol=cell.protocol, console=None, timeout=cell.timeout,
                     mutate=mutate) as vm:
            record = vm.run()
    except PvhbootError as e:
        return {"status": "error", "detail": str(e), "wall_s": round(time.monotonic() - start, 3)}
    fp = fingerprint_of(cell, record.console)
    if fp and fp.get("collector", "complete") == "complete":
        # The fingerprint is whole; how the VM ended is one more field (a path whose kernel cannot
        # power off is a finding there, with the crash report kept beside it).
        status = "ok"
        fp["exit"] = record.reason
    elif record.crash_report:
        status = record.reason  # crash | timeout
    else:
        status = "no fingerprint"
    tail = record.console.decode("utf-8", "replace").replace("\r", "").split("\n")[-CONSOLE_TAIL_LINES:]
    return {"status": status, "fingerprint": fp, "exit": {"reason": record.reason, "code": record.exit_code},
            "wall_s": round(record.wall_time_s, 3), "crash_report": record.crash_report,
            "console_tail": "\n".join(tail)}


def main() -> int:
    cell = Cell.from_json(json.load(sys.stdin))
    result = boot_cell(cell)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
