"""Start the nested rig under QEMU TCG and run one shell script inside it.

``run_in_rig(cmd, timeout)`` boots ``qemu-system-x86_64 -M microvm,accel=tcg -cpu max -smp 2`` with
the cloud vmlinux and the cached rig archive followed by a small per-run archive holding /rig/cmd.sh,
then reads the console: the rig's /init (pvhboot.rig.build.INIT_SCRIPT) prints ``RIG-READY`` once
kvm_amd is loaded, ``RIG-BEGIN`` before the command, a ``RIG-HEARTBEAT`` line every
:data:`~pvhboot.rig.build.HEARTBEAT_S` seconds while it runs, and ``RIG-RESULT rc=N`` after it.
When the rig does not come up or stops, :class:`RigError` says why (no SVM, kvm_amd refused, out of
memory, a kernel panic, an outer guest that went silent with the outer vCPUs' registers from QEMU's
monitor, or a timeout with the last console lines) instead of timing out silently.  An outer guest
that never came up, stopped or panicked while the command ran is an infrastructure failure, not a
result: it is started again (``attempts``), its console kept.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .build import CACHE_DIR, HEARTBEAT_S, build_rig, outer_kernel, write_command_archive

# The whole console of the latest rig run (see _run_qemu).
CONSOLE_LOG = CACHE_DIR / "last-console.log"
# The console of the latest rig run that ended in a RigError (later runs overwrite CONSOLE_LOG).
FAILED_CONSOLE_LOG = CACHE_DIR / "last-console-failed.log"
# The rig reports RIG-READY ~3.3 s after QEMU starts here; 90 s means it is stuck, not slow.
READY_TIMEOUT_S = 90.0
# While the command runs the outer guest prints a heartbeat every HEARTBEAT_S seconds of its own
# time; six missed beats in a row mean the outer guest has stopped (its clock or its interrupts),
# which is what the rig tier's hangs on Intel machines looked like (platform.md), not a slow test.
STALL_TIMEOUT_S = 6.0 * HEARTBEAT_S
# The outer kernel saying that one of its CPUs is wedged.  Seen once in 17 rig-tier runs with two
# outer vCPUs: a soft lockup in kvm_destroy_vm -> on_each_cpu_cond_mask, the other outer vCPU never
# answering the IPI (KVM nested under QEMU TCG), the console busy with the lockup's reports so the
# run only ended at its timeout.  Nothing a guest of the inner KVM does should wedge the outer
# kernel: it is the rig's failure, handled as a stall (diagnosed, then the rig is booted again).
_OUTER_LOCKUP = re.compile(r"soft lockup - CPU#|hard LOCKUP|rcu_\w+ (self-)?detected (expedited )?stalls?|"
                           r"blocked for more than \d+ seconds")
# The outer kernel's jiffies_64, which its /init prints (RIG-SYMS) for the stall dump's clock probe.
_JIFFIES = re.compile(r"RIG-SYMS jiffies_64=([0-9a-f]{16})")
# Seconds between the stall dump's two readings of the outer clock.
CLOCK_PROBE_S = 1.0
# After the first lockup line, let the kernel print its report (stack, registers) before the kill.
LOCKUP_GRACE_S = 5.0
# Outer boots run_in_rig tries when one never comes up or stalls.
ATTEMPTS = 3
# Outer vCPUs.  With one, an inner boot with 2 vCPUs could livelock the outer guest under TCG's
# nested SVM: the two inner vCPU threads share the one outer vCPU and the outer guest never got
# control back (QEMU at 100% CPU, no inner timeout firing; seen 3 runs of 4 on an Intel Xeon
# machine); with two, the same inner boot finished every time (platform.md, "The nested rig can
# livelock with one outer vCPU").
OUTER_CPUS = 2

QEMU = "qemu-system-x86_64"
# loglevel=5: warnings (OOM killer, hung tasks) reach the console for the diagnosis; info does not.
# tsc=reliable: under TCG the guest's TSC is the host's (QEMU reads the host TSC), constant and
# monotonic, but on a loaded host the outer kernel's clocksource watchdog sees jiffies fall behind
# it and marks the TSC unstable ("skew is too large", seen in this rig), moving timekeeping onto
# tick-counted jiffies and telling the inner KVM its host TSC is unreliable; keep the TSC.
# (A periodic tick, nohz=off highres=off, did not prevent a stall: the outer vCPUs are halted
# because nothing is runnable, not because a timer was lost; see _qmp_outer_state.)
# maxcpus=1: the outer kernel comes up on one CPU; the rig's /init brings the others online once
# kvm_amd is loaded and pvhboot.rig.keeper holds its VM, so that those code patches (jump labels,
# text_poke_bp) run with no other CPU executing the code being patched (under TCG a vCPU was caught
# stuck on such an instruction: pvhboot.rig.keeper).
OUTER_CMDLINE = "console=ttyS0 reboot=t panic=-1 loglevel=5 mitigations=off tsc=reliable maxcpus=1"
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
    """The outer kernel showed no sign of life in time (run_in_rig starts it again)."""

    def __init__(self, message: str, console: str, waited: float) -> None:
        super().__init__(message, console)
        self.waited = waited


class RigStalled(RigError):
    """The outer guest went silent while the command ran: no heartbeat for STALL_TIMEOUT_S
    (run_in_rig starts it again).  The message carries QEMU's view of the outer vCPUs."""


class RigOuterCrash(RigError):
    """The outer kernel panicked (not out of memory), or the outer guest triple-faulted, while the
    command ran (run_in_rig starts it again).  Each seen once in ~45 rig-tier runs, during compare
    runs of 2-vCPU inner boots: "corrupted stack end detected inside scheduler", and QEMU exiting
    on a guest reset with no panic printed.  A user-space command can do neither to the outer
    kernel: like a lockup, it is the rig's failure (KVM nested under QEMU TCG), not the command's.
    A crash before the command began (a bad outer kernel or command line) is not retried."""


@dataclass
class RigResult:
    rc: int  # the command's exit status inside the rig
    output: str  # what the command printed (between RIG-BEGIN and RIG-RESULT)
    wall_time: float  # seconds, QEMU start to QEMU exit
    ready_time: float | None = None  # seconds from QEMU start to RIG-READY (kvm_amd loaded)
    console: str = ""  # the whole console, kernel messages included
    stages: dict[str, float] = field(default_factory=dict)
    attempts: int = 1  # outer boots it took (> 1: an earlier one never came up, stalled or crashed)


_PANICKED = "outer kernel panicked"


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
        return f"{_PANICKED}: {panic.strip()}\n{tail}"
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
               ready_timeout: float = READY_TIMEOUT_S, stall_timeout: float = STALL_TIMEOUT_S,
               attempts: int = ATTEMPTS) -> RigResult:
    """Run ``cmd`` (argv list, or a shell script as one string) inside the rig as root.

    ``files`` maps guest paths ("rig/work/t.py") to contents placed beside the command.
    ``echo(line)`` receives every console line as it arrives (for progress output).
    ``timeout`` bounds one outer boot.  Raises :class:`RigError` when the rig does not come up or
    the command does not finish.  An outer guest that shows no sign of life (no RIG-READY, no
    failure, no panic) within ``ready_timeout`` seconds, or whose console goes silent for
    ``stall_timeout`` seconds while the command runs, or that panics or triple-faults while the command
    runs, is started again, up to ``attempts`` boots in all: the command must be safe to run twice (every
    rig test's is: it boots guests)."""
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
        qmp = Path(tmp) / "qmp.sock"
        reset_log = Path(tmp) / "qemu-reset.log"  # a line per outer CPU reset, "Triple fault" first
        argv = [QEMU, "-M", "microvm,accel=tcg", "-cpu", "max", "-m", memory, "-smp", str(OUTER_CPUS),
                "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
                "-nographic", "-no-reboot", "-monitor", "none",
                "-qmp", f"unix:{qmp},server=on,wait=off", "-d", "cpu_reset", "-D", str(reset_log)]
        for attempt in range(1, attempts + 1):
            try:
                reset_log.unlink(missing_ok=True)
                res = _run_qemu(argv, timeout, echo, ready_timeout, stall_timeout, qmp, reset_log)
                res.attempts = attempt
                return res
            except (RigNotReady, RigStalled, RigOuterCrash) as e:
                # An infrastructure failure that says nothing about the command: keep its console
                # and boot the rig again.
                kept = CONSOLE_LOG.with_name(f"last-console-attempt{attempt}.log")
                shutil.copyfile(CONSOLE_LOG, kept)
                if attempt == attempts:
                    shutil.copyfile(CONSOLE_LOG, FAILED_CONSOLE_LOG)
                    raise
                print(f"rig: {str(e).splitlines()[0]}; starting it again (console kept in {kept})",
                      file=sys.stderr, flush=True)
            except RigError:
                # Later rig runs overwrite CONSOLE_LOG: keep the failed one for .ci/run to show.
                shutil.copyfile(CONSOLE_LOG, FAILED_CONSOLE_LOG)
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _qmp_outer_state(path: Path | None, jiffies: int | None = None, timeout: float = 5.0) -> str:
    """QEMU's view of the silent outer guest through its QMP socket: ``info cpus`` and each vCPU's
    registers, the UART (COM1) interrupt enable and line status, then the outer clock read twice
    CLOCK_PROBE_S apart: each vCPU's local APIC (its timer's current count) and, given its address,
    the kernel's jiffies_64.  A healthy quiet outer guest dumps as both vCPUs halted in idle, UART
    idle (IER 0x05, LSR 0x60), timers counting, jiffies moving; a stuck one showed a vCPU spinning
    with IF=0 and the timer vector pending in IRR (pvhboot.rig.keeper).  Best effort: '' when QEMU
    does not answer."""
    if path is None or not path.exists():
        return ""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            stream = sock.makefile("rwb")

            def call(command: dict) -> dict:
                stream.write(json.dumps(command).encode() + b"\n")
                stream.flush()
                while True:  # skip asynchronous events
                    reply = json.loads(stream.readline() or b"{}")
                    if "event" not in reply:
                        return reply

            def hmp(line: str) -> str:
                reply = call({"execute": "human-monitor-command", "arguments": {"command-line": line}})
                return str(reply.get("return", reply.get("error", "")))

            json.loads(stream.readline() or b"{}")  # the greeting
            call({"execute": "qmp_capabilities"})
            out = [hmp(c) for c in ("info cpus", "info registers -a", "i /b 0x3f9", "i /b 0x3fd")]
            clock = [f"info lapic {cpu}" for cpu in range(OUTER_CPUS)]
            if jiffies is not None:
                clock.append(f"x /1gx {jiffies:#x}")
            for reading in (1, 2):
                if reading == 2:
                    time.sleep(CLOCK_PROBE_S)
                out.append(f"--- outer clock, reading {reading} of 2 ({CLOCK_PROBE_S:g} s apart) ---")
                out += [f"({c})\n{hmp(c)}" for c in clock]
            return "\n".join(out)
    except (OSError, ValueError) as e:
        return f"(QEMU's monitor did not answer: {e})"


def _summarise_registers(dump: str) -> str:
    """The lines of a :func:`_qmp_outer_state` dump worth a failure message: where each vCPU is, and
    the two readings of the clock (each local APIC's timer, pending and in-service vectors; jiffies)."""
    keep = [ln for ln in dump.splitlines()
            if ln.startswith(("* CPU", "  CPU", "CPU#", "RAX", "RIP", "CR0", "RSP", "--- outer clock",
                              "(info lapic", "LVTT\t", "Timer", "ISR", "IRR"))
            or "halted" in ln or re.match(r"[0-9a-f]{16}: ", ln)]  # `x /1gx`: jiffies_64
    return "\n".join(f"  | {ln}" for ln in keep[:60])


def _triple_faulted(reset_log: Path) -> bool:
    """QEMU's TCG logs "Triple fault" under -d cpu_reset before it asks for the reset that
    -no-reboot turns into an exit (target/i386/tcg, check_exception)."""
    try:
        with open(reset_log, "rb") as f:
            return b"Triple fault" in f.read(1 << 20)
    except OSError:
        return False


def _run_qemu(argv: list[str], timeout: float, echo, ready_timeout: float,
              stall_timeout: float = STALL_TIMEOUT_S, qmp: Path | None = None,
              reset_log: Path | None = None) -> RigResult:
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: list[str] = []
    stages: dict[str, float] = {}
    last_beat = [start]  # monotonic time of RIG-BEGIN or the latest RIG-HEARTBEAT (reader thread)
    lockup: list[tuple[float, str]] = []  # (when, line) of the outer kernel's first lockup report

    # Every console line also goes to CONSOLE_LOG, so a run that a test harness kills still leaves
    # its whole console behind.
    CACHE_DIR.mkdir(parents=True, exist_ok=True)

    def reader() -> None:
        assert proc.stdout is not None
        with open(CONSOLE_LOG, "w", encoding="utf-8", errors="replace") as log:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
                if line.startswith(("RIG-HEARTBEAT", "RIG-BEGIN")):
                    last_beat[0] = time.monotonic()
                elif not lockup and "RIG-BEGIN" in stages and _OUTER_LOCKUP.search(line):
                    lockup.append((time.monotonic(), line.strip()))
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
    timed_out = not_ready = stalled = False
    outer_state = ""
    while proc.poll() is None:
        now = time.monotonic()
        if now - start >= timeout:
            timed_out = True
        elif now - start >= ready_timeout and not stages.keys() & {"RIG-READY", "RIG-FAIL"}:
            not_ready = True
        elif "RIG-BEGIN" in stages and "RIG-RESULT" not in stages and (
                now - last_beat[0] >= stall_timeout or (lockup and now - lockup[0][0] >= LOCKUP_GRACE_S)):
            stalled = True
            # before the kill: where the outer vCPUs are, and whether the outer clock moves
            outer_state = _qmp_outer_state(qmp, next((int(m.group(1), 16) for ln in lines
                                                      if (m := _JIFFIES.search(ln))), None))
        if timed_out or not_ready or stalled:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.2)
    t.join(5)
    if outer_state:
        with open(CONSOLE_LOG, "a", encoding="utf-8") as log:
            log.write("--- QEMU monitor: vCPUs, UART and clock (outer guest stalled) ---\n")
            log.write(outer_state + "\n")
    if not_ready and not any("Kernel panic" in ln or "Out of memory" in ln for ln in lines):
        raise RigNotReady(f"rig not ready (no RIG-READY) after {ready_timeout:.0f} s: "
                          + _diagnose(lines, True, ready_timeout, False), "\n".join(lines),
                          time.monotonic() - start)
    if stalled:
        silent = time.monotonic() - last_beat[0]
        tail = "\n".join(f"  | {ln}" for ln in lines[-25:])
        why = (f"the outer kernel reported a lockup ({lockup[0][1]})" if lockup else
               f"the outer guest's heartbeat stopped for {silent:.0f} s")
        raise RigStalled(f"rig stalled: {why} while running the command, {time.monotonic() - start:.0f} s "
                         f"after QEMU started; last console lines:\n{tail}\n"
                         f"outer vCPUs (QEMU monitor):\n{_summarise_registers(outer_state)}",
                         "\n".join(lines))
    wall = time.monotonic() - start
    console = "\n".join(lines)
    begin = next((i for i, ln in enumerate(lines) if ln.startswith("RIG-BEGIN")), None)
    # RIG-RESULT may follow output that did not end with a newline: search, do not match.
    result = next((i for i, ln in enumerate(lines) if _RESULT.search(ln)), None)
    if begin is None or result is None:
        why = _diagnose(lines, timed_out, timeout, "RIG-READY" in stages, proc.returncode)
        if begin is not None and why.startswith(_PANICKED):
            raise RigOuterCrash(why, console)
        if begin is not None and reset_log is not None and _triple_faulted(reset_log):
            tail = "\n".join(f"  | {ln}" for ln in lines[-25:])
            raise RigOuterCrash("the outer guest triple-faulted while the command ran (QEMU's -d cpu_reset "
                                f"log: Triple fault; QEMU exited on the reset); last console lines:\n{tail}",
                                console)
        raise RigError(why, console)
    m = _RESULT.search(lines[result])
    rc = int(m.group(1))
    # The watchdog's heartbeat lines are the rig's, not the command's.
    body = [ln for ln in lines[begin + 1:result] if not ln.startswith("RIG-HEARTBEAT")]
    output = "\n".join(body + [lines[result][:m.start()]])
    return RigResult(rc=rc, output=output.rstrip("\n") + "\n" if output.strip("\n") else "",
                     wall_time=wall,
                     ready_time=stages.get("RIG-READY"), console=console, stages=stages)


__all__ = ["RigError", "RigNotReady", "RigOuterCrash", "RigResult", "RigStalled", "run_in_rig"]
