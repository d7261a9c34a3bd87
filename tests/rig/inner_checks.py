"""Runs INSIDE the nested rig (Debian's python3.11, pvhboot from the checkout, /dev/kvm from
kvm_amd): boots the real Debian cloud kernel with pvhboot once per case and prints one line
``INNER-RESULT {json}`` per case for the host-side tests (tests/rig/test_real_linux.py).

Usage: python3 inner_checks.py CASES.json  — a list of {"name", "argv", "input_after",
"input", "pty", "timeout", "marks", "retries", "expect"}.  argv[0] == "pvhboot" runs the CLI of this checkout.  When
"input_after" is seen on the guest's output, "input" is written to pvhboot's stdin (the 16550's receive side).

"retries": N boots a case again, up to N times, when the guest stopped with a triple fault or a timeout (pvhboot's
crash report): the rare faults and hangs of a Linux guest seen only in this nested rig (README, "How the rig tier
stays stall-proof"), the rule `pvhboot compare --retries` applies to its cells.  A case that then passes carries
"flaky": the first attempt's crash report, and the host-side test prints it.  A VMM error, an entry failure or
a case the harness had to kill is never retried.  A case that provokes a crash names its console sign
("expect"): a stop that shows it is the expected result; one before it is the bench's and is retried.

Rig scripts that boot the guest themselves (tests/rig/test_virtio_linux.py's shell, test_gdb_linux.py's
gdb sessions) apply the same rule with ``python3 inner_checks.py --retried NAME ATTEMPT STDERR_FILE``: exit
0 and one ``INNER-RETRIED {json}`` line (name, attempt, the shortened report) when that stderr is such a
stop, so the caller boots again; exit 1 otherwise.  rigrun.warn_about_inner_retries turns the lines into
pytest warnings.
"""
from __future__ import annotations

import json
import os
import pty
import re
import selectors
import subprocess
import sys
import time


def run_case(case: dict) -> dict:
    argv = case["argv"]
    if argv[0] == "pvhboot":
        argv = [sys.executable, "-m", "pvhboot", *argv[1:]]
    start = time.monotonic()
    master = None
    if case.get("pty"):
        # A terminal on pvhboot's stdin, as when a person types into the console.
        master, slave = pty.openpty()
        proc = subprocess.Popen(argv, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.close(slave)
    else:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    out = {"stdout": bytearray(), "stderr": bytearray()}
    marks: dict[str, float] = {}
    sent = False
    deadline = start + case.get("timeout", 300)
    timed_out = False
    while sel.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            proc.kill()
            break
        for key, _ in sel.select(min(remaining, 1.0)):
            data = os.read(key.fileobj.fileno(), 65536)
            if not data:
                sel.unregister(key.fileobj)
                continue
            out[key.data] += data
            for m in case.get("marks", []):
                if m not in marks and m.encode() in out["stdout"]:
                    marks[m] = round(time.monotonic() - start, 2)
            trigger = case.get("input_after")
            if trigger and not sent and trigger.encode() in out["stdout"]:
                time.sleep(0.5)  # let the guest reach its read()
                os.write(master, case["input"].encode())
                sent = True
    try:  # output closed: the process should be exiting; never wait for ever
        rc = proc.wait(timeout=max(deadline - time.monotonic(), 5))
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        rc = proc.wait()
    if master is not None:
        os.close(master)
    return {"name": case["name"], "rc": rc, "timed_out": timed_out,
            "wall": round(time.monotonic() - start, 2), "marks": marks,
            "stdout": out["stdout"].decode(errors="replace"),
            "stderr": out["stderr"].decode(errors="replace")}


# The head of pvhboot's crash report (src/pvhboot/vmm/crash.py format_crash_report) for the two kinds of
# stop the rig shows at random; tests/unit/test_rig_inner_retries.py holds it to that function's output.
RETRIED_STOP = re.compile(r"^pvhboot: guest stopped: (triple fault|timeout) on vCPU \d+", re.M)


def guest_stopped_at_random(result: dict) -> bool:
    """pvhboot stopped the guest on a triple fault or its timeout (not the harness, not a VMM error).
    At first only stops before user space were retried; then a 2-vCPU 6.12 guest triple-faulted
    with user space running (vCPU 1, #PF on a fetch at the same module-area RIP as an earlier hang),
    so any stage is retried, as compare does, and every retry is reported."""
    return result["rc"] != 0 and RETRIED_STOP.search(result["stderr"]) is not None


# On AMD SVM KVM resets a vCPU on a shutdown intercept, so pvhboot's crash report shows the reset
# state, never the instruction that triple-faulted.  The outer kernel's kvm_exit tracepoint records
# the guest RIP and the exit information before that reset (arch/x86/kvm/trace.h, kvm_exit; it runs
# right after #VMEXIT in svm_vcpu_run): armed for SVM_EXIT_SHUTDOWN (0x7f) only, it costs nothing
# until a guest triple-faults.
TRACING = "/sys/kernel/tracing"
SVM_EXIT_SHUTDOWN = 0x7F


def arm_shutdown_trace() -> str:
    """'' when armed, else why not (the cases still run)."""
    try:
        if not os.path.exists(f"{TRACING}/events"):
            subprocess.run(["mount", "-t", "tracefs", "nodev", TRACING], check=False, capture_output=True)
        for path, value in (("events/kvm/kvm_exit/filter", f"exit_reason == {SVM_EXIT_SHUTDOWN}"),
                            ("events/kvm/kvm_exit/enable", "1"), ("trace", "")):
            with open(f"{TRACING}/{path}", "w") as f:
                f.write(value)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return ""


def take_shutdown_trace() -> list[str]:
    """The kvm_exit lines recorded since the last call, then cleared."""
    try:
        with open(f"{TRACING}/trace") as f:
            lines = [ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#")]
        with open(f"{TRACING}/trace", "w") as f:
            f.write("")
    except OSError:
        return []
    return lines[-8:]


def run_case_traced(case: dict) -> dict:
    take_shutdown_trace()
    result = run_case(case)
    trace = take_shutdown_trace()
    if trace:
        result["shutdown_trace"] = trace
        result["stderr"] += "".join(f"outer kvm_exit (SHUTDOWN): {ln.strip()}\n" for ln in trace)
    return result


def first_trouble(report: str) -> str:
    """The "first sign of trouble" section of a pvhboot crash report (vmm/crash.FirstTrouble: the
    first oops, shown when it scrolled out of the last console lines), or ''.  Shortened reports keep
    their head and tail; this is the part between that says what went wrong first."""
    at = report.find("first sign of trouble (console line")
    if at < 0:
        return ""
    end = report.find("\nlast ", at)
    return report[at:end if end >= 0 else len(report)][:5000]


def shorten(report: str, keep: int = 3000) -> str:
    """``report``'s head (the fault, the registers) and tail (the console's last lines), with its
    first sign of trouble between them when it has one."""
    middle = first_trouble(report)
    if len(report) <= keep + len(middle):
        return report
    return report[:keep // 2] + "\n[...]\n" + (middle + "\n[...]\n" if middle else "") + report[-keep // 2:]


def stopped_by_chance(case: dict, result: dict) -> bool:
    """A stop to boot again: guest_stopped_at_random, except in a case that expects its guest to stop so
    ("expect": the console sign of the crash it provokes, e.g. "Kernel panic") once that sign is there."""
    expect = case.get("expect")
    if expect and expect in result["stdout"] + result["stderr"]:
        return False
    return guest_stopped_at_random(result)


def run_with_retries(case: dict) -> dict:
    """The last attempt's result.  One that passed after failures carries them all as ``flaky``; one
    that failed every time carries the earlier ones as ``earlier_attempts`` (its own stderr is the last)."""
    failed: list[str] = []
    for attempt in range(1 + case.get("retries", 0)):
        try:
            result = run_case_traced(case)
        except Exception as e:  # report it as this case's result; the others still run
            return {"name": case["name"], "rc": -1, "timed_out": False, "wall": 0, "marks": {},
                    "stdout": "", "stderr": f"inner_checks: {type(e).__name__}: {e}"}
        result["attempts"] = attempt + 1
        if not stopped_by_chance(case, result):
            break
        failed.append(f"attempt {attempt + 1} (wall {result['wall']} s):\n{shorten(result['stderr'])}")
    if failed and not stopped_by_chance(case, result):
        result["flaky"] = "\n".join(failed)
    elif len(failed) > 1:
        result["earlier_attempts"] = "\n".join(failed[:-1])
    return result


def retried_line(name: str, attempt: int, stderr: str) -> str | None:
    """The ``INNER-RETRIED`` line for a boot that stopped at random (guest_stopped_at_random: the caller
    knows its exit status was not 0), else None."""
    if not guest_stopped_at_random({"rc": 1, "stderr": stderr}):
        return None
    return "INNER-RETRIED " + json.dumps({"name": name, "attempt": attempt, "report": shorten(stderr)})


def main() -> int:
    if sys.argv[1] == "--retried":  # NAME ATTEMPT STDERR_FILE (module docstring)
        name, attempt, path = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        with open(path, errors="replace") as f:
            line = retried_line(name, attempt, f.read())
        if line:
            print(line, flush=True)
        return 0 if line else 1
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    why_not = arm_shutdown_trace()
    print(f"INNER-SHUTDOWN-TRACE {'armed' if not why_not else 'off: ' + why_not}", flush=True)
    for case in cases:
        for step in case.get("before", []):
            subprocess.run(step, check=False)
        result = run_with_retries(case)
        print("INNER-RESULT " + json.dumps(result), flush=True)
        print(f"INNER-DONE {case['name']} rc={result['rc']} wall={result['wall']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
