"""Start the nested rig under QEMU TCG and run one shell script inside it.

``run_in_rig(cmd, timeout)`` boots ``qemu-system-x86_64 -M microvm,accel=tcg -cpu max`` with the
cloud vmlinux and the cached rig archive followed by a small per-run archive holding /rig/cmd.sh,
then reads the console: the rig's /init (pvhboot.rig.build.INIT_SCRIPT) prints ``RIG-READY`` once
kvm_amd is loaded, ``RIG-BEGIN`` before the command and ``RIG-RESULT rc=N`` after it.  When the rig
does not come up, :class:`RigError` says why (no SVM, kvm_amd refused, out of memory, a kernel
panic, or a timeout with the last console lines) instead of timing out silently.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .build import CACHE_DIR, build_rig, outer_kernel, write_command_archive

# The whole console of the latest rig run (see _run_qemu).
CONSOLE_LOG = CACHE_DIR / "last-console.log"
# The rig reports RIG-READY ~3.3 s after QEMU starts here; 90 s means it is stuck, not slow.
READY_TIMEOUT_S = 90.0

QEMU = "qemu-system-x86_64"
# loglevel=5: warnings (OOM killer, hung tasks) reach the console for the diagnosis; info does not.
OUTER_CMDLINE = "console=ttyS0 reboot=t panic=-1 loglevel=5 mitigations=off"
_RESULT = re.compile(r"RIG-RESULT rc=(-?\d+)")


def _host_tsc_khz() -> int | None:
    """The host's TSC rate, which is what the TCG guest's RDTSC counts at (QEMU reads the host's
    TSC).  Handing it to the outer kernel (tsc_early_khz=) spares it the PIT calibration, which
    under TCG on a loaded host sometimes fails ("tsc: Unable to calibrate against PIT") and then
    leaves calibrate_delay() waiting for jiffies for ever (seen in this rig)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


class RigError(RuntimeError):
    """The rig did not come up or did not finish; the message says why, with console lines."""

    def __init__(self, message: str, console: str = "") -> None:
        super().__init__(message)
        self.console = console


class RigNotReady(RigError):
    """The outer kernel showed no sign of life in time (run_in_rig retries once)."""

    def __init__(self, message: str, console: str, waited: float) -> None:
        super().__init__(message, console)
        self.waited = waited


@dataclass
class RigResult:
    rc: int  # the command's exit status inside the rig
    output: str  # what the command printed (between RIG-BEGIN and RIG-RESULT)
    wall_time: float  # seconds, QEMU start to QEMU exit
    ready_time: float | None = None  # seconds from QEMU start to RIG-READY (kvm_amd loaded)
    console: str = ""  # the whole console, kernel messages included
    stages: dict[str, float] = field(default_factory=dict)


def _diagnose(lines: list[str], timed_out: bool, timeout: float, ready: bool,
              returncode: int | None = None) -> str:
    text = "\n".join(lines)
    tail = "\n".join(f"  | {ln}" for ln in lines[-25:])
    for ln in lines:
        if ln.startswith("RIG-FAIL"):
            return f"rig failed to come up: {ln[len('RIG-FAIL '):]}\n{tail}"
    if re.search(r"Out of memory|oom-kill|deadlocked on memory|Initramfs unpacking failed|"
                 r"initrd is too large|write error", text):
        return ("rig ran out of memory (the initramfs did not fit, or the command used too much; "
                f"raise the outer -m)\n{tail}")
    panic = next((ln for ln in lines if "Kernel panic" in ln), None)
    if panic:
        return f"outer kernel panicked: {panic.strip()}\n{tail}"
    if timed_out and not lines:
        return (f"rig timed out after {timeout:.0f} s and QEMU printed nothing: the kernel may be "
                "stuck unpacking the initramfs (out of memory? the rig archive needs about twice "
                "its size in RAM) or the machine is overloaded")
    if timed_out:
        where = "while running the command" if ready else "before kvm_amd was ready"
        return f"rig timed out after {timeout:.0f} s {where}; last console lines:\n{tail}"
    if not lines:
        return (f"QEMU exited with status {returncode} and printed nothing (is the outer kernel a "
                "PVH vmlinux? is -m large enough for the kernel and the rig archive?)")
    return f"rig stopped without a RIG-RESULT line; last console lines:\n{tail}"


def run_in_rig(cmd: list[str] | str, timeout: float = 600, *, files: dict[str, bytes] | None = None,
               memory: str = "3G", rebuild: bool = False, echo=None,
               ready_timeout: float = READY_TIMEOUT_S) -> RigResult:
    """Run ``cmd`` (argv list, or a shell script as one string) inside the rig as root.

    ``files`` maps guest paths ("rig/work/t.py") to contents placed beside the command.
    ``echo(line)`` receives every console line as it arrives (for progress output).
    Raises :class:`RigError` when the rig does not come up or the command does not finish.  A rig
    that shows no sign of life (no RIG-READY, no failure, no panic) within ``ready_timeout`` seconds
    is started once more."""
    if not shutil.which(QEMU):
        raise RigError(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    script = cmd if isinstance(cmd, str) else shlex.join(cmd)
    rig = build_rig(rebuild=rebuild)
    kernel = outer_kernel()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="run-", dir=CACHE_DIR) as tmp:
        initrd = Path(tmp) / "initrd.cpio"
        # The cached archive plus the per-run one: the kernel unpacks concatenated newc archives.
        shutil.copyfile(rig, initrd)
        with open(initrd, "ab") as f:
            write_command_archive(f, "#!/bin/sh\n" + script + "\n", files)
        khz = _host_tsc_khz()
        cmdline = OUTER_CMDLINE + (f" tsc_early_khz={khz}" if khz else "")
        argv = [QEMU, "-M", "microvm,accel=tcg", "-cpu", "max", "-m", memory, "-smp", "1",
                "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
                "-nographic", "-no-reboot", "-monitor", "none"]
        try:
            return _run_qemu(argv, timeout, echo, ready_timeout)
        except RigNotReady as first:
            # The outer kernel under TCG (rarely) stalls before kvm_amd is up — an infrastructure
            # failure that says nothing about pvhboot: keep its console and try once more.
            shutil.copyfile(CONSOLE_LOG, CONSOLE_LOG.with_name("last-console-not-ready.log"))
            print(f"rig: {str(first).splitlines()[0]}; retrying once "
                  f"(console kept in {CONSOLE_LOG.with_name('last-console-not-ready.log')})", file=sys.stderr)
            return _run_qemu(argv, max(timeout - first.waited, ready_timeout), echo, ready_timeout)


def _run_qemu(argv: list[str], timeout: float, echo, ready_timeout: float) -> RigResult:
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: list[str] = []
    stages: dict[str, float] = {}

    # Every console line also goes to CONSOLE_LOG, so a run that a test harness kills still leaves
    # its whole console behind.
    CACHE_DIR.mkdir(parents=True, exist_ok=True)

    def reader() -> None:
        assert proc.stdout is not None
        with open(CONSOLE_LOG, "w", encoding="utf-8", errors="replace") as log:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
                lines.append(line)
                log.write(line + "\n")
                log.flush()
                for tag in ("RIG-STAGE", "RIG-READY", "RIG-BEGIN", "RIG-RESULT", "RIG-FAIL"):
                    if tag in line and tag not in stages:
                        stages[tag] = time.monotonic() - start
                if echo:
                    echo(line)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    timed_out = False
    not_ready = False
    while proc.poll() is None:
        elapsed = time.monotonic() - start
        if elapsed >= timeout:
            timed_out = True
        elif elapsed >= ready_timeout and not stages.keys() & {"RIG-READY", "RIG-FAIL"}:
            not_ready = True
        if timed_out or not_ready:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.2)
    t.join(5)
    if not_ready and not any("Kernel panic" in ln or "Out of memory" in ln for ln in lines):
        raise RigNotReady(f"rig not ready (no RIG-READY) after {ready_timeout:.0f} s: "
                          + _diagnose(lines, True, ready_timeout, False), "\n".join(lines),
                          time.monotonic() - start)
    wall = time.monotonic() - start
    console = "\n".join(lines)
    begin = next((i for i, ln in enumerate(lines) if ln.startswith("RIG-BEGIN")), None)
    # RIG-RESULT may follow output that did not end with a newline: search, do not match.
    result = next((i for i, ln in enumerate(lines) if _RESULT.search(ln)), None)
    if begin is None or result is None:
        raise RigError(_diagnose(lines, timed_out, timeout, "RIG-READY" in stages,
                                 proc.returncode), console)
    m = _RESULT.search(lines[result])
    rc = int(m.group(1))
    output = "\n".join(lines[begin + 1:result] + [lines[result][:m.start()]])
    return RigResult(rc=rc, output=output.rstrip("\n") + "\n" if output.strip("\n") else "",
                     wall_time=wall,
                     ready_time=stages.get("RIG-READY"), console=console, stages=stages)


__all__ = ["RigError", "RigResult", "run_in_rig"]
