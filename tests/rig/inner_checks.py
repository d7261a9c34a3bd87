"""Runs INSIDE the nested rig (Debian's python3.11, pvhboot from the checkout, /dev/kvm from
kvm_amd): boots the real Debian cloud kernel with pvhboot once per case and prints one line
``INNER-RESULT {json}`` per case for the host-side tests (tests/rig/test_real_linux.py).

Usage: python3 inner_checks.py CASES.json  — a list of {"name", "argv", "input_after",
"input", "pty", "timeout", "marks"}.  argv[0] == "pvhboot" runs the CLI of this checkout.  When "input_after" is
seen on the guest's output, "input" is written to pvhboot's stdin (the 16550's receive side).
"""
from __future__ import annotations

import json
import os
import pty
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


def main() -> int:
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    for case in cases:
        for step in case.get("before", []):
            subprocess.run(step, check=False)
        try:
            result = run_case(case)
        except Exception as e:  # report it as this case's result; the others still run
            result = {"name": case["name"], "rc": -1, "timed_out": False, "wall": 0, "marks": {},
                      "stdout": "", "stderr": f"inner_checks: {type(e).__name__}: {e}"}
        print("INNER-RESULT " + json.dumps(result), flush=True)
        print(f"INNER-DONE {case['name']} rc={result['rc']} wall={result['wall']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
