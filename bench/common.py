"""Shared helpers for the bench scripts: timing child processes, medians, machine facts, the result
format every script prints, and building the bench-time binaries (C loop, guests).

Every bench script ends by printing one JSON object on its last stdout line::

    {"bench": "exit_roundtrip", "rows": [ROW, ...], "notes": ["..."], "details": {...}}

where a ROW is ``{"id", "metric", "unit", "pvhboot", "reference", "ref_name", "ratio", "goal",
"goal_op", "met"}`` (reference/ratio/goal may be null).  :func:`parse_result` reads it back.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CACHE = REPO / ".cache" / "bench"
QEMU = "qemu-system-x86_64"


# ------------------------------------------------------------------------------------ results
def row(id: str, metric: str, unit: str, pvhboot: float | None, reference: float | None = None,
        ref_name: str | None = None, goal: float | None = None, goal_op: str = "<=",
        ratio: float | None = None, **extra) -> dict:
    """One table row.  ``ratio`` defaults to pvhboot/reference; ``goal`` applies to the ratio when
    there is a reference, else to the pvhboot value itself."""
    if ratio is None and pvhboot is not None and reference:
        ratio = pvhboot / reference
    judged = ratio if reference is not None else pvhboot
    met = None
    if goal is not None and judged is not None:
        met = judged <= goal if goal_op == "<=" else judged >= goal
    return {"id": id, "metric": metric, "unit": unit, "pvhboot": pvhboot, "reference": reference,
            "ref_name": ref_name, "ratio": ratio, "goal": goal, "goal_op": goal_op, "met": met, **extra}


def emit(bench: str, rows: list[dict], notes: list[str] | None = None, details: dict | None = None) -> dict:
    out = {"bench": bench, "rows": rows, "notes": notes or [], "details": details or {}}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return out


def parse_result(stdout: str) -> dict:
    """The JSON object a bench script printed last (anything before it is the script's chatter)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            obj = json.loads(line)
            if "bench" in obj and "rows" in obj:
                return obj
    raise ValueError("no bench result line in the output")


def median(xs) -> float:
    return statistics.median(list(xs))


# ------------------------------------------------------------------------------- processes
@dataclass
class ProcessRun:
    returncode: int
    wall_s: float  # fork to reaped, perf_counter
    cpu_s: float  # user + system of the child (guest time included on kvm_pvm)
    peak_rss_kib: int  # the child's VmHWM, last read from /proc/PID/status before it exited
    stdout: bytes
    stderr: bytes


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def run_process(argv: list[str], *, stdout_path: str | None = None, timeout: float = 600,
                env: dict | None = None, cwd: str | None = None) -> ProcessRun:
    """Run ``argv`` and measure it: wall time, CPU time (wait4's rusage of that child only) and peak
    RSS.  The peak is VmHWM polled from /proc while the child runs, not wait4's ru_maxrss: that one
    also counts the parent's memory the child had between fork and exec.
    ``stdout_path``: send stdout to this file instead of capturing it."""
    import threading

    chunks: list[bytes] = []
    with contextlib.ExitStack() as files:
        out_f = files.enter_context(open(stdout_path, "wb")) if stdout_path else subprocess.PIPE
        err_f = files.enter_context(tempfile.TemporaryFile())
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f, env=env, cwd=cwd)
        reader = None
        if out_f is subprocess.PIPE:  # drain while it runs (a full pipe would stall the child)
            reader = threading.Thread(target=lambda: chunks.append(p.stdout.read()), daemon=True)
            reader.start()
        deadline = time.monotonic() + timeout
        hwm = 0
        while True:
            h = _vm_hwm_kib(p.pid)
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if h is not None:
                hwm = h  # the latest value is the exec'd program's own (VmHWM only grows)
            if time.monotonic() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.0005)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if reader is not None:
            reader.join(10)
        err_f.seek(0)
        return ProcessRun(p.returncode, wall, ru.ru_utime + ru.ru_stime, hwm, b"".join(chunks), err_f.read())


def python_argv() -> list[str]:
    return [sys.executable]


def pvhboot_argv() -> list[str]:
    """The installed console script when present (what a user runs), else ``python -m pvhboot``."""
    exe = shutil.which("pvhboot")
    return [exe] if exe else [sys.executable, "-m", "pvhboot"]


# ------------------------------------------------------------------------------- building
def build_dir() -> Path:
    """A per-run temporary directory for bench-time binaries (removed at exit by the caller)."""
    return Path(tempfile.mkdtemp(prefix="pvhboot-bench-"))


def compile_c_loop(out_dir: Path) -> Path:
    """bench/c/kvm_exit_loop.c -> out_dir/kvm_exit_loop with ``cc -O2`` (built at bench time)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc/gcc) to build the raw KVM loop")
    exe = out_dir / "kvm_exit_loop"
    subprocess.run([cc, "-O2", "-o", str(exe), str(BENCH_DIR / "c" / "kvm_exit_loop.c")], check=True)
    return exe


def build_uart_flood(out_dir: Path, nbytes: int) -> Path:
    """bench/guests/uart_flood.S (GNU as via gcc -m32) linked at 1 MiB: a PVH guest writing nbytes."""
    if nbytes % 16:
        raise ValueError(f"console bytes must be a multiple of 16, not {nbytes}")
    cc = shutil.which("gcc") or shutil.which("cc")
    src = BENCH_DIR / "guests" / "uart_flood.S"
    obj = out_dir / f"uart_flood_{nbytes}.o"
    elf = out_dir / f"uart_flood_{nbytes}.elf"
    subprocess.run([cc, "-m32", "-c", f"-DNBYTES={nbytes}", "-o", str(obj), str(src)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-static", "--build-id=none", "-z", "noexecstack",
                    "--no-warn-rwx-segments", "-T", str(BENCH_DIR / "guests" / "uart_flood.ld"),
                    "-o", str(elf), str(obj)], check=True)
    return elf


def probe_path() -> str:
    from pvhboot.probe import probe_path as p

    return str(p())


# ------------------------------------------------------------------------------- machine
def machine_facts() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    kvm_module = next((m for m in ("kvm_pvm", "kvm_intel", "kvm_amd") if os.path.isdir(f"/sys/module/{m}")), None)
    qemu = None
    if shutil.which(QEMU):
        try:
            out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=10).stdout
            qemu = out.splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    mem_total = None
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        mem_total = int(m.group(1)) * 1024 if m else None
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "memory_bytes": mem_total,
        "kernel": platform.release(),
        "kvm_device": "/dev/kvm" if os.path.exists("/dev/kvm") else None,
        "kvm_module": kvm_module,
        "kvm_is_kvm_pvm": kvm_module == "kvm_pvm",
        "python": platform.python_version(),
        "qemu": qemu,
        "loadavg": os.getloadavg(),
    }


def have_kvm() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def self_rusage_maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ------------------------------------------------------------------------------- QEMU
#: -cpu models tried in order on this /dev/kvm.  On kvm_pvm plain `host` and `max` abort at start-up
#: ("failed to set MSR 0x10a": IA32_ARCH_CAPABILITIES is refused); without that feature they run.
QEMU_CPU_CANDIDATES = ("host,-arch-capabilities", "host", "max,-arch-capabilities", "qemu64")


def qemu_microvm_argv(kernel: str, memory: str, serial_path: str, cpu: str | None, extra=()) -> list[str]:
    """QEMU microvm on /dev/kvm with the debug-exit port pvhboot also has (0xf4, 4 bytes)."""
    argv = [QEMU, "-M", "microvm", "-accel", "kvm"]
    if cpu:
        argv += ["-cpu", cpu]
    return argv + ["-m", memory, "-smp", "1", "-kernel", kernel, "-nodefaults", "-nographic",
                   "-no-reboot", "-serial", f"file:{serial_path}",
                   "-device", "isa-debug-exit,iobase=0xf4,iosize=4", *extra]


def find_qemu_cpu(kernel: str, tmp: Path, survey: bool = False) -> tuple[str | None, dict[str, str]]:
    """The first -cpu candidate under which QEMU runs ``kernel`` to its debug exit (QEMU's status is
    (value << 1) | 1).  Returns (cpu or None, {candidate: why it failed}); with ``survey`` every
    candidate is tried and the dict says "works" or why not for each."""
    failed: dict[str, str] = {}
    found = None
    for cpu in QEMU_CPU_CANDIDATES:
        out = tmp / "qemu-cpu-probe.out"
        r = run_process(qemu_microvm_argv(kernel, "512M", str(out), cpu), timeout=120)
        if r.returncode != 0 and r.returncode % 2 == 1 and out.exists() and out.stat().st_size:
            found = found or cpu
            if survey:
                failed[cpu] = "works"
                continue
            return found, failed
        err = r.stderr.decode(errors="replace").strip().splitlines()
        failed[cpu] = f"exit {r.returncode}: " + next((ln for ln in err if "warning" not in ln), "no output")
    return found, failed



def repeats_main(name: str, measure, repeats: int):
    """The ``main(argv)`` of a bench whose one option is ``--repeats``: parse, measure, emit."""

    def main(argv=None) -> int:
        doc = sys.modules[measure.__module__].__doc__ or name
        ap = argparse.ArgumentParser(description=doc.splitlines()[0])
        ap.add_argument("--repeats", type=int, default=repeats)
        a = ap.parse_args(argv)
        emit(name, **measure(a.repeats))
        return 0

    return main
