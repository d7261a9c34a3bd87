"""Bench 3: builder time for the Debian cloud vmlinux (~53 MB ELF), process start to the first KVM_RUN.

The vmlinux is extracted once with ``pvhboot extract`` from .cache/debian-kernel/current/boot/vmlinuz-*
into .cache/bench/.  A child process (bench/_builder_child.py) timestamps each step with the
monotonic clock: Python start-up (spawn -> first line of the script), imports (what ``pvhboot boot``
imports), image load (load_kernel), plan + guest RAM mapping, structure writing (load_guest: kernel
segments and the PVH structures into guest RAM), KVM setup (Machine: VM, irqchip, memory slot,
devices, vCPU, CPUID, MSRs, registers) and the first KVM_RUN (entered with immediate_exit: the guest
does not run).  Goal: under 50 ms from Python start-up to the first KVM_RUN.  The end-to-end number
also comes from the real CLI (``pvhboot boot VMLINUX``, stopped at its first KVM_RUN).  ``-X
importtime`` and cProfile say where the time goes.
"""
from __future__ import annotations

import argparse
import glob
import json
import re
import subprocess
import sys
import time

from . import common
from .common import median, row

GOAL_MS = 50.0
STEPS = ("imports", "image_load", "plan_and_memory", "structure_writing", "kvm_setup", "first_kvm_run")
CHILD = str(common.BENCH_DIR / "_builder_child.py")


def debian_vmlinux() -> str:
    """The extracted cloud vmlinux in .cache/bench (extracting it with `pvhboot extract` if needed)."""
    bz = sorted(glob.glob(str(common.REPO / ".cache/debian-kernel/current/boot/vmlinuz-*")))
    if not bz:
        raise FileNotFoundError("no Debian cloud kernel in .cache/debian-kernel/current/boot "
                                "(run scripts/setup-tests.sh)")
    out = common.CACHE / (bz[-1].rsplit("/", 1)[1] + ".vmlinux")
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(common.pvhboot_argv() + ["extract", bz[-1], "-o", str(out)], check=True)
    return str(out)


def _child(mode: str, kernel: str) -> dict:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, CHILD, mode, kernel, repr(t)], capture_output=True, text=True,
                       timeout=300)
    for line in reversed(p.stderr.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"builder child ({mode}) failed ({p.returncode}): {p.stderr[-800:]}")


def split_durations(marks: dict) -> dict:
    """Milliseconds per step from the child's timestamps."""
    out = {"python_startup": (marks["python_started"] - marks["spawn"]) * 1e3}
    prev = marks["python_started"]
    for step in STEPS:
        out[step] = (marks[step] - prev) * 1e3
        prev = marks[step]
    out["after_startup"] = (marks["first_kvm_run"] - marks["python_started"]) * 1e3
    return out


_IMPORT = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def parse_importtime(text: str) -> list[tuple[str, int, int]]:
    """``-X importtime`` stderr -> [(module, self_us, cumulative_us, depth)] in output order."""
    out = []
    for m in _IMPORT.finditer(text):
        out.append((m.group(4), int(m.group(1)), int(m.group(2)), (len(m.group(3)) - 1) // 2))
    return out


def top_imports(kernel: str) -> list[dict]:
    p = subprocess.run([sys.executable, "-X", "importtime", "-c",
                        "import pvhboot.cli, pvhboot.commands.boot, pvhboot.vmm, pvhboot.image, pvhboot.boot"],
                       capture_output=True, text=True, timeout=120)
    rows = parse_importtime(p.stderr)
    # third-party and pvhboot packages by cumulative time, plus `site` (start-up, before any import)
    keep = [r for r in rows if r[3] == 0 or r[0].split(".")[0] in ("elftools", "rich", "capstone", "lz4",
                                                                      "zstandard")]
    best: dict[str, int] = {}
    for name, _self, cum, _depth in keep:
        best[name] = max(best.get(name, 0), cum)
    return [{"module": k, "cumulative_ms": v / 1e3} for k, v in sorted(best.items(), key=lambda kv: -kv[1])[:14]]


def measure(repeats: int = 5) -> dict:
    kernel = debian_vmlinux()
    splits, clis = [], []
    for _ in range(repeats):
        splits.append(split_durations(_child("split", kernel)))
        m = _child("cli", kernel)
        clis.append({"python_startup": (m["python_started"] - m["spawn"]) * 1e3,
                     "after_startup": (m["first_kvm_run"] - m["python_started"]) * 1e3})
    med = {k: median(s[k] for s in splits) for k in splits[0]}
    cli_after = median(c["after_startup"] for c in clis)
    prof = _child("profile", kernel).get("profile", "")
    imports = top_imports(kernel)
    rows = [row("3", "builder: python start-up -> first KVM_RUN, `pvhboot boot` (Debian vmlinux)", "ms",
                cli_after, goal=GOAL_MS)]
    rows.append(row("3s", "  same, step by step (sum of the steps below)", "ms", med["after_startup"],
                    goal=GOAL_MS))
    for letter, k in zip("abcdefg", ("python_startup",) + STEPS):
        label = "python start-up (not in the goal)" if k == "python_startup" else k.replace("_", " ")
        rows.append(row(f"3{letter}", f"  {label}", "ms", med[k]))
    notes = [f"kernel {kernel}", "top imports (cumulative ms): " +
             ", ".join(f"{i['module']} {i['cumulative_ms']:.1f}" for i in imports[:8])]
    details = {"kernel": kernel, "splits_ms": splits, "cli_ms": clis, "median_ms": med, "imports": imports,
               "profile_top": prof}
    return {"rows": rows, "notes": notes, "details": details}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print the cProfile table too")
    a = ap.parse_args(argv)
    r = measure(a.repeats)
    if a.profile:
        print(r["details"]["profile_top"])
    common.emit("builder_time", **r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
