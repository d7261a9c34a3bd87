"""One comparison run: the cells of a kernel, booted (locally or on a Dask cluster), diffed.

:func:`plan_cells` turns the options into :class:`Cell` specs (extracting a bzImage's vmlinux into
``workdir`` for the paths that boot it) and checks every cell with the builder's dry run, so a
size the kernel cannot use is one user error before anything boots.  :func:`run_comparison` boots
them and returns the records `--json` writes and the diff groups.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ConfigError
from .cells import Cell, choose_paths, path_specs
from .faults import FAULTS
from .linux import END_ARGUMENT, linux_cmdline

PROBE_TIMEOUT_S = 30.0
LINUX_TIMEOUT_S = 120.0
PROBE_CMDLINE = "console=ttyS0 probe"
PROBE_MARKER = b"probe.version="  # a string only pvhboot's probe carries (probe/src/probe.c)
PROBE_MAX_SIZE = 4 << 20  # the probe ELF is 64 KiB; a real kernel is megabytes


@dataclass(frozen=True)
class Options:
    kernel: str | None  # None: the built-in probe
    paths: str | None = None
    cpus: tuple[int, ...] = (1, 2)
    memory: tuple[int, ...] = (512 << 20,)
    initrd: str | None = None  # probe: its module; Linux: the collector's initramfs (built by the caller)
    cmdline: str = ""
    timeout: float | None = None
    kaslr: bool = False
    faults: tuple[tuple[str, str], ...] = ()  # (fault, path)


def is_probe(kernel: str | None) -> bool:
    """The built-in probe (no KERNEL), or a probe ELF (small, carrying the probe's report keys)."""
    if kernel is None:
        return True
    from ..files import KERNEL_LIMIT, open_regular

    fd = open_regular(kernel, "kernel", KERNEL_LIMIT)
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_size > PROBE_MAX_SIZE:
            return False
        return PROBE_MARKER in f.read()


def kernel_path(kernel: str | None) -> str:
    if kernel is not None:
        return kernel
    from ..probe import probe_path

    return str(probe_path())


def plan_cells(opts: Options, workdir: str) -> tuple[str, list[Cell]]:
    """(collector kind, the cells in table order).  A bzImage's vmlinux is written into ``workdir``."""
    from ..boot import plan_guest
    from ..image import load_kernel
    from ..vmm.config import VmConfig

    kind = "probe" if is_probe(opts.kernel) else "linux"
    path = kernel_path(opts.kernel)
    VmConfig(kernel=path)  # a regular file of a sane size (pvhboot.files)
    image = load_kernel(path)
    chosen = choose_paths(path_specs(image), opts.paths, path)
    files = {"bzimage": path, "vmlinux": path}
    if image.format == "bzimage" and any(p.image == "vmlinux" for p in chosen):
        files["vmlinux"] = os.path.join(workdir, "vmlinux")
        with open(files["vmlinux"], "wb") as f:
            f.write(image.elf.data)
    # _text's link address: the first PT_LOAD is .text, which starts at _text (arch/x86/kernel/vmlinux.lds.S);
    # not the lowest vaddr (x86_64's percpu segment is linked at 0).
    link_text = next((s.vaddr for s in image.segments if s.memsz), None) if kind == "linux" else None
    if kind == "probe":
        cmdline = " ".join(p for p in (PROBE_CMDLINE, opts.cmdline, END_ARGUMENT) if p)
    else:
        cmdline = linux_cmdline(opts.cmdline, opts.kaslr)
    timeout = opts.timeout or (PROBE_TIMEOUT_S if kind == "probe" else LINUX_TIMEOUT_S)
    faults = dict((p, f) for f, p in opts.faults)
    for fault, p in opts.faults:
        if fault not in FAULTS:
            raise ConfigError(f"unknown seeded fault {fault!r} (one of {', '.join(FAULTS)})")
        if p not in [c.name for c in chosen]:
            raise ConfigError(f"seeded fault {fault}: path {p!r} is not compared ({', '.join(c.name for c in chosen)})")
        if max(opts.cpus) < FAULTS[fault].min_cpus:
            raise ConfigError(f"seeded fault {fault} needs a cell with at least {FAULTS[fault].min_cpus} vCPUs")
    if len(faults) < len(opts.faults):
        raise ConfigError("one seeded fault per path")
    cells = []
    for cpus in opts.cpus:
        for memory in opts.memory:
            for p in chosen:
                fault = faults.get(p.name)
                if fault and cpus < FAULTS[fault].min_cpus:
                    fault = None
                cells.append(Cell(path=p.name, protocol=p.protocol, cpus=cpus, memory=memory,
                                  kernel=files[p.image], cmdline=cmdline, collector=kind, timeout=timeout,
                                  initrd=opts.initrd, link_text=link_text, fault=fault))
    # The VM options checked once (vmm.config) and the builder's dry run for each distinct
    # configuration: a size this kernel cannot use, an initrd that does not fit, is the user's error
    # now, not a failed cell later.
    images = {path: image}
    seen = set()
    for c in cells:
        key = (c.kernel, c.protocol, c.cpus, c.memory)
        if key in seen:
            continue
        seen.add(key)
        if c.kernel not in images:
            images[c.kernel] = load_kernel(c.kernel)
        config = VmConfig(kernel=c.kernel, memory=c.memory, cpus=c.cpus, protocol=c.protocol, cmdline=c.cmdline,
                          initrd=c.initrd, timeout=c.timeout)
        plan_guest(images[c.kernel], config.boot_config(c.protocol))
    return kind, cells


def record_of(cell: Cell, result: dict) -> dict:
    rec = {"path": cell.path, "protocol": cell.protocol, "cpus": cell.cpus, "memory": cell.memory,
           "fault": cell.fault, "kernel": cell.kernel, "cmdline": cell.cmdline}
    rec.update(result)
    rec.setdefault("fingerprint", {})
    return rec


# The text a cell record may carry (record_of, cell.boot_cell, run_cells); str or absent/None each.
RECORD_TEXT = ("path", "protocol", "fault", "kernel", "cmdline", "status", "detail", "crash_report", "console_tail",
               "stderr", "flaky")


def is_cell_record(rec) -> bool:
    """Has ``rec`` the shape record_of gives?  A --baseline file is read back through this, so a
    hand-edited or hostile one is refused with one line instead of breaking the diff or the report."""
    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not (isinstance(rec, dict) and {"path", "cpus", "memory", "status"} <= set(rec)):
        return False
    fingerprint, exit_, failures = rec.get("fingerprint", {}), rec.get("exit"), rec.get("failures", [])
    return (all(isinstance(rec.get(k), (str, type(None))) for k in RECORD_TEXT)
            and isinstance(rec["path"], str) and isinstance(rec["status"], str)
            and is_int(rec["cpus"]) and is_int(rec["memory"]) and is_int(rec.get("attempts", 1))
            and isinstance(fingerprint, dict) and all(isinstance(v, str) for v in fingerprint.values())
            and (exit_ is None or (isinstance(exit_, dict) and isinstance(exit_.get("reason", ""), str)))
            and isinstance(failures, list) and all(isinstance(h, str) for h in failures))


RETRIED = ("crash", "timeout")  # how a cell may end by chance; "error" and "no fingerprint" repeat


def ended_by_chance(result: dict) -> bool:
    """The boot crashed or timed out: before its fingerprint was whole (``status``), or after it
    (``exit``).  The second is how the rig lost a clean cell on 2026-12-02: its kernel printed every
    field, then a vCPU died of a fault the nested bench injects, and ``exit: timeout`` became a
    finding.  A kernel that really cannot power off on one path still shows: it does so every time."""
    status = result.get("status")
    reason = (result.get("exit") or {}).get("reason")
    return status in RETRIED or (status == "ok" and reason in RETRIED)


def run_cells(cells: list[Cell], jobs: int, cluster=None, progress=None, retries: int = 0) -> list[dict]:
    """Boot ``cells``: ``jobs`` child processes at a time here, or on a Dask cluster (a scheduler
    address, or a connected distributed.Client).  A cell that crashed or timed out, before or after
    its fingerprint (:func:`ended_by_chance`), is booted again, up to ``retries`` times: early boot is
    deterministic, so a crash that does not repeat is not a difference between entry paths.  Such a
    cell keeps the first failure's head as ``flaky`` (the report shows it); one that fails every time
    keeps its first failure and ``attempts``.  Either way ``failures`` holds the head of every failed
    attempt, in order, so a report can tell a cell that failed alike each time from one hit by
    different chances (the rig lost a clean cell to two failures on 2026-12-02 and kept only one)."""
    def boot(batch: list[Cell]) -> list[dict]:
        if cluster:
            from .cluster import run_cells_on_cluster

            return run_cells_on_cluster(cluster, batch, progress=progress)
        from .runner import run_cells as run_local

        return run_local(batch, jobs, progress=progress)

    results = boot(cells)
    for attempt in range(2, retries + 2):
        again = [i for i, r in enumerate(results) if ended_by_chance(r) and "flaky" not in r]
        if not again:
            break
        for i, r in zip(again, boot([cells[i] for i in again])):
            first = results[i]
            failures = first.setdefault("failures", [failure_head(first)])
            if not ended_by_chance(r) and r.get("status") == "ok":
                r["flaky"] = failures[0]
                r["failures"] = failures
                results[i] = r
            else:
                failures.append(failure_head(r))
                first["attempts"] = attempt
    return [record_of(c, r) for c, r in zip(cells, results)]


def failure_head(result: dict, lines: int = 4) -> str:
    """How a failed attempt ended, in a few lines (a crash report's kind and the pc)."""
    text = result.get("crash_report") or result.get("detail") or result.get("status", "")
    return "\n".join(text.strip().splitlines()[:lines])
