"""rig tier: `pvhboot compare` on real Linux — Debian's 6.1 cloud bzImage in the nested rig (QEMU TCG
+ kvm_amd), one rig run for everything (inner boots ~6-20 s each, run one at a time: --jobs 1).

* The unmodified kernel through every path (pvh of its extracted vmlinux, linux64 and linux32 of the
  bzImage, linux64 of the vmlinux), 2 vCPUs, 256 MiB: every path boots and the only differences are
  the allowed, explained ones (pvhboot.compare.rules.LINUX_RULES; the README lists them).
* Three seeded faults at one cell each, compared against that clean run as --baseline: a finding
  naming the field that moved (MemTotal and the memory map; cpus and the MADT; ACPI tables).  The
  fourth, cmdline-cut, ran here too (a finding on `cmdline`, 2026-12-01) and is kept in the kvm tier
  only, to hold the rig run near 3 minutes (7 inner boots of ~17-25 s).
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest
from rigrun import INNER_RETRIES, run_or_fail, time_limit  # tests/rig/ is on sys.path

from pvhboot.rig.build import CACHE_DIR
from pvhboot.rig.launch import CONSOLE_LOG

RIG_TIMEOUT_S = 480
INNER_CHECKS = Path(__file__).resolve().parent / "inner_checks.py"  # its shorten() for crash reports
pytestmark = [pytest.mark.rig, pytest.mark.usefixtures("rig_available"), time_limit(RIG_TIMEOUT_S)]

KERNEL = "/rig/guest/vmlinuz"
COMMON = f"--cpus 2 --memory 256M --jobs 1 --timeout 60 --retries {INNER_RETRIES} --quiet"
# (name, path, the fields that must be findings).  One cell each, against the clean run.
FAULTS = [
    ("memmap-ram-dropped", "pvh", {"MemTotal", "memmap"}),
    ("madt-cpu-missing", "linux64", {"cpu.possible", "cpu.present", "cpu.online", "acpi.table.APIC"}),
    ("rsdp-missing", "linux32", {"acpi.table.APIC", "acpi.table.FACP", "cpu.possible", "exit"}),
]
# Prints the parts of a --json document the tests read (the whole one is large for a serial console).
SUMMARY = r"""
import json, sys
sys.path.insert(0, "/rig/work")
from inner_checks import shorten
d = json.load(open(sys.argv[1]))
cells = [{k: c.get(k) for k in ("path", "status", "fault", "detail", "exit", "wall_s", "flaky", "attempts", "failures")}
         for c in d["cells"]]
for c, full in zip(cells, d["cells"]):
    c["fields"] = len(full.get("fingerprint", {}))
    report = full.get("crash_report") or ""  # its head names the crash and holds the registers
    c["crash_report"] = shorten(report, 5000)  # its first sign of trouble kept between head and tail
    c["console_tail"] = "" if full.get("status") == "ok" else (full.get("console_tail") or "")[-1500:]
    c["stderr"] = "" if full.get("status") == "ok" else (full.get("stderr") or "")[-2000:]  # a VMM that died
print("COMPARE-JSON " + json.dumps({"name": sys.argv[2], "rc": int(sys.argv[3]), "findings": d["findings"],
                                    "cells": cells, "groups": d["groups"]}))
"""


def _script() -> str:
    lines = ["cd /tmp",
             f"pvhboot compare {KERNEL} {COMMON} --json /tmp/clean.json >/tmp/clean.txt 2>&1; rc=$?",
             "tail -5 /tmp/clean.txt; python3 /rig/work/summary.py /tmp/clean.json clean $rc"]
    for name, path, _ in FAULTS:
        lines += [f"pvhboot compare {KERNEL} {COMMON} --paths {path} --baseline /tmp/clean.json "
                  f"--seed-fault {name}:{path} --json /tmp/{name}.json >/tmp/{name}.txt 2>&1; rc=$?",
                  f"tail -3 /tmp/{name}.txt; python3 /rig/work/summary.py /tmp/{name}.json {name} $rc"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def runs() -> dict:
    start = time.monotonic()
    res = run_or_fail(_script(), timeout=RIG_TIMEOUT_S, files={"rig/work/summary.py": SUMMARY.encode(),
                                                            "rig/work/inner_checks.py": INNER_CHECKS.read_bytes()})
    out = {}
    for line in res.output.splitlines():
        at = line.find("COMPARE-JSON ")
        if at >= 0:
            doc = json.loads(line[at + len("COMPARE-JSON "):])
            out[doc["name"]] = doc
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / "last-compare-linux.json").write_text(json.dumps(
        {"rig_wall_s": round(time.monotonic() - start, 1), "runs": out}, indent=1))
    print(f"\ncompare rig run: {time.monotonic() - start:.0f} s; "
          + ", ".join(f"{n}: {[c['wall_s'] for c in d['cells']]}" for n, d in out.items()))
    for name, d in out.items():  # a crash that did not repeat (--retries): in pytest's warnings summary
        for c in d["cells"]:
            if c.get("flaky"):
                heads = c.get("failures") or [c["flaky"]]
                warnings.warn(f"compare {name}: {c['path']} failed {len(heads)}x, booted when tried again:\n"
                              + "\n".join(heads), stacklevel=2)
    return out


def _run(runs, name) -> dict:
    if name not in runs:
        pytest.fail(f"compare run {name!r} did not report (see {CONSOLE_LOG})")
    return runs[name]


def _rows(doc) -> dict[str, dict]:
    (group,) = doc["groups"]
    return {r["field"]: r for r in group["rows"]}


def test_every_path_boots_and_only_allowed_differences(runs):
    doc = _run(runs, "clean")
    assert [c["path"] for c in doc["cells"]] == ["pvh", "linux64", "linux32", "linux64-vmlinux"]
    for c in doc["cells"]:
        # Say why in full (pytest would shorten the dict): the crash report and the console's end.
        assert c["status"] == "ok", (f"{c['path']}: {c['status']} {c.get('exit')}\n"
                                     f"{c.get('crash_report') or ''}\n{(c.get('console_tail') or '')[-3000:]}\n"
                                     f"{c.get('stderr') or ''}\nevery failed attempt: {c.get('failures')}")
        assert c["fields"] > 200, c  # boot_params, memmap, cpus, ACPI, vulnerabilities, dmesg lines...
    rows = _rows(doc)
    findings = {f: r["values"] for f, r in rows.items() if r["kind"] == "finding"}
    assert not findings, findings
    assert doc["findings"] == 0 and doc["rc"] == 0
    for r in rows.values():
        assert r["reason"], r
    # KASLR: its own explained row; off everywhere under nokaslr
    assert rows["kaslr.state"]["kind"] == "explained"
    assert set(rows["kaslr.state"]["values"].values()) == {"off (nokaslr)"}


def test_the_known_explained_differences_show(runs):
    rows = _rows(_run(runs, "clean"))
    assert rows["bp.hdr.type_of_loader"]["values"]["pvh"] == "0xb0"
    assert rows["bp.acpi_rsdp_addr"]["values"]["pvh"] == "0x0"  # Linux's PVH code keeps it in start_info
    la57 = rows.get("cpu.flag.la57")
    if la57:  # only when the rig's CPU has LA57: 5-level paging only through the decompressor
        assert la57["values"]["pvh"] == la57["values"]["linux64-vmlinux"] == "none"
        assert la57["values"]["linux64"] != "none"


@pytest.mark.parametrize("name,path,must", FAULTS, ids=[f[0] for f in FAULTS])
def test_seeded_fault_on_real_linux_is_a_finding_naming_the_field(runs, name, path, must):
    doc = _run(runs, name)
    (cell,) = doc["cells"]
    assert cell["fault"] == name and cell["status"] == "ok", cell
    assert doc["rc"] == 1, doc
    rows = _rows(doc)
    findings = {f for f, r in rows.items() if r["kind"] == "finding"}
    assert must <= findings, sorted(findings)
    for field in must:  # the faulted cell is the odd one out against its own path's clean run
        values = rows[field]["values"]
        assert values[path] != values[f"baseline:{path}"], (field, values)
