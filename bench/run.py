"""Run every pvhboot benchmark side by side and report: ``python3 -m bench.run`` (``make bench``).

Each measurement is its own script (bench/exit_roundtrip.py, probe_boot.py, builder_time.py,
console.py, memory.py, rig_boot.py, churn.py, compare.py, stress_vcpus.py, virtio.py, virtio_rig.py,
decompress.py, gdb_step.py), run here as a child process that prints one JSON result line; this
collects them, prints the table, and writes bench/results.json (date, machine facts, every row and the
raw runs), bench/results.md (the table as Markdown, for the README) and bench/results.png (ratios
against goals; needs matplotlib, skipped with a note when it is absent).

    python3 -m bench.run                 # all but the rig (a few minutes on 2 shared cores)
    python3 -m bench.run --rig           # also benches 6 and 11 in the nested rig (adds several minutes)
    python3 -m bench.run --quick         # 2 repeats, 64 KiB console: a smoke run
    python3 -m bench.run --only exit_roundtrip,churn
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from . import common

BENCHES = ("exit_roundtrip", "probe_boot", "builder_time", "console", "memory", "rig_boot", "churn", "compare",
           "stress_vcpus", "virtio", "virtio_rig", "decompress",
           "gdb_step")
RIG_BENCHES = ("rig_boot", "virtio_rig")  # run only with --rig
RESULTS = common.BENCH_DIR / "results.json"
MARKDOWN = common.BENCH_DIR / "results.md"
PLOT = common.BENCH_DIR / "results.png"


def bench_argv(name: str, repeats: int, quick: bool) -> list[str]:
    argv = [sys.executable, "-m", f"bench.{name}"]
    if name == "console":
        argv += ["--repeats", str(min(repeats, 3))] + (["--bytes", str(64 << 10)] if quick else [])
    elif name in ("memory", "churn", "compare", "stress_vcpus", "decompress", "gdb_step", *RIG_BENCHES):
        argv += ["--repeats", str(min(repeats, 3))]
        if name == "memory" and quick:
            argv += ["--flood-bytes", str(1 << 20)]
    else:
        argv += ["--repeats", str(repeats)]
    return argv


def run_bench(name: str, repeats: int, quick: bool) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(bench_argv(name, repeats, quick), capture_output=True, text=True, cwd=str(common.REPO))
    try:
        res = common.parse_result(p.stdout)
    except ValueError:
        err = (p.stderr.strip().splitlines() or ["no output"])[-1]
        res = {"bench": name, "rows": [common.row(name, f"{name}: failed", "", None, status="error")],
               "notes": [f"{name} failed (exit {p.returncode}): {err}"], "details": {"stderr": p.stderr[-4000:]}}
    res["seconds"] = time.perf_counter() - t0
    return res


def fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "bytes/s":
        return f"{v / 1e3:,.1f} kB/s"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def table_rows(results: list[dict]) -> list[list[str]]:
    out = []
    for res in results:
        for r in res["rows"]:
            goal = f"{r['goal_op']} {r['goal']:g}" if r.get("goal") is not None else ""
            met = {True: "yes", False: "NO", None: ""}[r.get("met")]
            if r.get("status") in ("not run", "error"):
                met = r["status"]
            unit = r["unit"]
            shown_unit = "" if unit == "bytes/s" else unit
            out.append([r["id"], r["metric"].strip(),
                        f"{fmt(r['pvhboot'], unit)} {shown_unit}".strip() if r["pvhboot"] is not None else "-",
                        (f"{fmt(r['reference'], unit)} ({r['ref_name']})" if r.get("reference") is not None
                         else (r.get("ref_name") or "")),
                        f"{r['ratio']:.2f}" if r.get("ratio") is not None else "", goal, met])
    return out


HEADER = ["#", "measurement", "pvhboot", "reference", "ratio", "goal", "met"]


def markdown(results: list[dict], facts: dict) -> str:
    lines = [f"Measured {facts['date']} on {facts['cpu_model']} ({facts['cpus']} cores, shared), Linux "
             f"{facts['kernel']}, /dev/kvm = {facts['kvm_module']}"
             + (" (software KVM: CPL0 guest code is emulated)" if facts.get("kvm_is_kvm_pvm") else "")
             + f", Python {facts['python']}, {facts['qemu'] or 'no QEMU'}.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in table_rows(results):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in r) + " |")
    lines.append("")
    for res in results:
        for n in res["notes"]:
            lines.append(f"- {res['bench']}: {n}")
    return "\n".join(lines) + "\n"


def print_table(results: list[dict], facts: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        sys.stdout.write(markdown(results, facts))
        return
    t = Table(title=f"pvhboot bench {facts['date']}  {facts['cpu_model']}  /dev/kvm={facts['kvm_module']}")
    for h in HEADER:
        t.add_column(h, justify="right" if h in ("pvhboot", "ratio") else "left")
    for r in table_rows(results):
        style = "red" if r[-1] == "NO" else ("green" if r[-1] == "yes" else None)
        t.add_row(*r, style=style)
    c = Console(width=160)
    c.print(t)
    for res in results:
        for n in res["notes"]:
            c.print(f"[dim]{res['bench']}:[/dim] {n}", highlight=False)


def plot(results: list[dict], path) -> str | None:
    """Bar per goal row: how far from its goal (<= 1 means met).  None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no PNG (pip install matplotlib)"
    items = []
    for res in results:
        for r in res["rows"]:
            if r.get("goal") is None or r.get("met") is None:
                continue
            value = r["ratio"] if r.get("reference") is not None else r["pvhboot"]
            score = value / r["goal"] if r["goal_op"] == "<=" else r["goal"] / value
            label = f"{r['id']} {r['metric'].strip()[:44]}\n{value:.3g} vs goal {r['goal_op']} {r['goal']:g}"
            items.append((label, score, r["met"]))
    if not items:
        return "no goal rows to plot"
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(items) + 1.5))
    ys = range(len(items))
    ax.barh(list(ys), [s for _, s, _ in items], color=["tab:green" if m else "tab:red" for _, _, m in items])
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(list(ys), [lab for lab, _, _ in items], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.2, max(sc for _, sc, _ in items) * 1.1))
    for y, (_, sc, _) in zip(ys, items):
        ax.text(sc, y, f" {sc:.2f}", va="center", fontsize=8)
    ax.set_xlabel("distance from goal (measured / goal; 'at least' goals inverted): <= 1 is met")
    ax.set_title("pvhboot bench: ratios against goals")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="run every pvhboot benchmark and write bench/results.json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 repeats and a 64 KiB console run")
    ap.add_argument("--rig", action="store_true", help="also run bench 6 in the nested rig (minutes)")
    ap.add_argument("--only", help="comma-separated subset of: " + ",".join(BENCHES))
    ap.add_argument("--no-write", action="store_true", help="print only; keep results.json as it is")
    a = ap.parse_args(argv)
    if not common.have_kvm():
        print("bench: /dev/kvm is not usable here; nothing to measure", file=sys.stderr)
        return 2
    repeats = 2 if a.quick else a.repeats
    names = a.only.split(",") if a.only else list(BENCHES)
    unknown = set(names) - set(BENCHES)
    if unknown:
        ap.error(f"unknown bench {sorted(unknown)}")
    facts = common.machine_facts()
    results = []
    for name in names:
        if name in RIG_BENCHES and not a.rig:
            import importlib

            not_run = importlib.import_module(f"bench.{name}").not_run
            results.append({"bench": name, **not_run("optional; pass --rig (boots real Linux in the nested "
                                                     "QEMU TCG rig, several minutes)"), "seconds": 0.0})
            continue
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        results.append(run_bench(name, repeats, a.quick))
    facts["loadavg_end"] = os.getloadavg()
    print_table(results, facts)
    if a.no_write:
        return 0
    doc = {"date": facts["date"], "machine": facts, "repeats": repeats, "quick": a.quick, "results": results}
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, RESULTS)
    MARKDOWN.write_text(markdown(results, facts))
    why = plot(results, PLOT)
    print(f"wrote {RESULTS.relative_to(common.REPO)}, {MARKDOWN.relative_to(common.REPO)}"
          + (f"; {why}" if why else f", {PLOT.relative_to(common.REPO)}"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
