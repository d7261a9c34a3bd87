"""Runs INSIDE the nested rig (Debian's python3.11, pvhboot from the checkout, /dev/kvm from
kvm_amd): boots the real Debian cloud kernel with pvhboot once per case and prints one line
``INNER-RESULT {json}`` per case for the host-side tests (tests/rig/test_real_linux.py).

Usage: python3 inner_checks.py CASES.json  — a list of {"name", "argv", "input_after",
"input", "timeout"}.  argv[0] == "pvhboot" runs the CLI of this checkout.  When "input_after" is
seen on the guest's output, "input" is written to pvhboot's stdin (the 16550's receive side).
"""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time


def run_case(case: dict) -> dict:
    argv = case["argv"]
    if argv[0] == "pvhboot":
        argv = [sys.executable, "-m", "pvhboot", *argv[1:]]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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
                time.sleep(0.2)  # let the guest reach its read()
                proc.stdin.write(case["input"].encode())
                proc.stdin.flush()
                sent = True
    if not case.get("input_after"):
        try:
            proc.stdin.close()
        except OSError:
            pass
    rc = proc.wait()
    return {"name": case["name"], "rc": rc, "timed_out": timed_out,
            "wall": round(time.monotonic() - start, 2), "marks": marks,
            "stdout": out["stdout"].decode(errors="replace"),
            "stderr": out["stderr"].decode(errors="replace")}


def main() -> int:
    cases = json.load(open(sys.argv[1]))
    for case in cases:
        for step in case.get("before", []):
            subprocess.run(step, check=False)
        result = run_case(case)
        print("INNER-RESULT " + json.dumps(result), flush=True)
        print(f"INNER-DONE {case['name']} rc={result['rc']} wall={result['wall']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
