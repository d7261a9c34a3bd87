"""kvm tier: `pvhboot compare` on the built-in probe (PVH entry and 64-bit Linux entry) — the whole
engine (cells as child processes, fingerprints, field rules, diff, JSON, baseline, Dask) in seconds.

The clean probe must show no finding across vCPU counts and a memory size above 4 GiB; each seeded
fault, applied to ONE path, must come out as a finding naming the field that moved, and nothing
else may move.  A cell that does not boot is a finding with its crash report, and the other cells
still run.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kvm
SRC = str(Path(__file__).resolve().parents[2] / "src")  # this checkout's pvhboot, not an installed one


def compare(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-m", "pvhboot", "compare", "--quiet", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "clean.json"
    p = compare("--cpus", "1,2", "--memory", "64M,6G", "--jobs", "2", "--json", str(out))
    return p, json.loads(out.read_text()), out


def test_clean_probe_has_no_finding(clean):
    p, doc, _ = clean
    assert p.returncode == 0, p.stdout + p.stderr
    assert doc["collector"] == "probe" and doc["findings"] == 0
    assert doc["paths"] == ["pvh", "linux64"]
    cells = {(c["path"], c["cpus"], c["memory"]) for c in doc["cells"]}
    assert cells == {(p, c, m) for p in ("pvh", "linux64") for c in (1, 2) for m in (64 << 20, 6 << 30)}
    for c in doc["cells"]:
        assert c["status"] == "ok", c
        assert c["fingerprint"]["probe.verdict"] == "PASS"
        assert c["fingerprint"]["smp.cpus_seen"] == str(c["cpus"])
    six = [c for c in doc["cells"] if c["memory"] == 6 << 30]
    assert all("0x0000000100000000-" in c["fingerprint"]["boot.e820"] for c in six), "RAM above 4 GiB"
    # Every difference shown is an allowed one, with its reason.
    for g in doc["groups"]:
        assert g["equal_fields"] > 20
        for row in g["rows"]:
            assert row["kind"] == "allowed" and row["reason"], row
    assert {r["field"] for g in doc["groups"] for r in g["rows"]} == {
        "entry.state", "acpi.rsdp_source", "boot.version", "boot.type_of_loader"}
    assert "0 findings" in p.stdout


ACPI_GONE = ("acpi.", "smp.", "boot.acpi_rsdp_addr", "probe.")  # no RSDP: no ACPI, no MADT, no APs
FAULTS = [  # (fault:path, the fields that must be findings, and the only ones (or prefixes) allowed to be)
    ("rsdp-missing:pvh", {"boot.acpi_rsdp_addr", "probe.unverifiable", "acpi.madt.cpus"}, ACPI_GONE),
    ("rsdp-missing:linux64", {"boot.acpi_rsdp_addr", "probe.unverifiable", "acpi.root"}, ACPI_GONE),
    ("memmap-ram-dropped:pvh", {"boot.ram_total", "boot.e820"}, {"boot.ram_total", "boot.e820"}),
    ("memmap-ram-dropped:linux64", {"boot.ram_total", "boot.e820"}, {"boot.ram_total", "boot.e820"}),
    ("cmdline-cut:pvh", {"boot.cmdline"}, {"boot.cmdline", "boot.cmdline_len"}),
    ("madt-cpu-missing:linux64", {"acpi.madt.cpus", "smp.cpus_seen"},
     {"acpi.madt.cpus", "smp.cpus_seen", "acpi.madt.lapic.1", "acpi.table.1", "smp.ap.1", "smp.trampoline"}),
]


@pytest.mark.parametrize("fault,must,may", FAULTS, ids=[f[0] for f in FAULTS])
def test_seeded_fault_is_a_finding_naming_the_field(tmp_path, fault, must, may):
    out = tmp_path / "f.json"
    p = compare("--cpus", "2", "--memory", "128M", "--jobs", "2", "--seed-fault", fault, "--json", str(out))
    assert p.returncode == 1, p.stdout + p.stderr
    doc = json.loads(out.read_text())
    (group,) = doc["groups"]
    name, path = fault.split(":")
    assert group["faults"] == {path: name}
    findings = {r["field"] for r in group["rows"] if r["kind"] == "finding"}
    assert must <= findings, findings
    assert all(f.startswith(tuple(may)) for f in findings), findings
    for field in findings:  # the faulted path is the odd one out
        row = next(r for r in group["rows"] if r["field"] == field)
        other = "linux64" if path == "pvh" else "pvh"
        assert row["values"][path] != row["values"][other]
    for field in must:
        assert field in p.stdout  # named in the table


def test_fault_shown_in_table_and_listed_names_only_one_path(tmp_path):
    p = compare("--cpus", "2", "--memory", "128M", "--seed-fault", "cmdline-cut:pvh")
    assert p.returncode == 1
    assert "seeded fault" in p.stdout and "cmdline-cut" in p.stdout
    assert "1 finding" in p.stdout or "2 findings" in p.stdout


def test_baseline_finds_a_change_against_a_saved_run(clean, tmp_path):
    _, _, saved = clean
    p = compare("--cpus", "2", "--memory", "64M", "--paths", "pvh", "--baseline", str(saved),
                "--seed-fault", "memmap-ram-dropped:pvh", "--json", str(tmp_path / "b.json"))
    assert p.returncode == 1, p.stdout + p.stderr
    doc = json.loads((tmp_path / "b.json").read_text())
    (group,) = doc["groups"]
    assert group["columns"] == ["pvh", "baseline:pvh", "baseline:linux64"]
    findings = {r["field"] for r in group["rows"] if r["kind"] == "finding"}
    assert findings == {"boot.ram_total", "boot.e820"}
    # and the same run without the fault matches its baseline
    p = compare("--cpus", "2", "--memory", "64M", "--paths", "pvh", "--baseline", str(saved))
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_cell_that_does_not_boot_is_a_finding_and_the_others_run(tmp_path):
    """One cell stopped by its time limit (a crash report), one whose kernel is not a kernel: both
    are findings with the reason, and the remaining cells still produce fingerprints."""
    from pvhboot.compare.diff import compare_records
    from pvhboot.compare.engine import Options, plan_cells, run_cells
    from pvhboot.compare.rules import PROBE_RULES

    kind, cells = plan_cells(Options(kernel=None, cpus=(1,), memory=(64 << 20,)), str(tmp_path))
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a kernel" * 100)
    extra = [dataclasses.replace(cells[0], timeout=0.02, path="pvh-stopped"),
             dataclasses.replace(cells[1], kernel=str(junk), path="linux64-junk")]
    records = run_cells(cells + extra, jobs=2)
    by_path = {r["path"]: r for r in records}
    assert by_path["pvh"]["status"] == "ok" and by_path["linux64"]["status"] == "ok"
    assert by_path["pvh-stopped"]["status"] == "timeout"
    assert "wall-clock limit" in by_path["pvh-stopped"]["crash_report"]
    assert by_path["linux64-junk"]["status"] == "error"
    assert "junk" in by_path["linux64-junk"]["detail"]
    (group,) = compare_records(records, PROBE_RULES)
    row = next(r for r in group.rows if r.field == "boot status")
    assert row.kind == "finding"
    assert row.values["pvh"] == "ok" and row.values["pvh-stopped"].startswith("timeout")
    assert set(group.failed) == {"pvh-stopped", "linux64-junk"}


def test_a_cell_that_stops_after_its_whole_fingerprint_is_booted_again(tmp_path, monkeypatch):
    """The rig lost a clean cell this way (2026-12-01): every field printed, then the vCPU died, and
    ``exit: timeout`` became a finding.  Here the real probe with its exit port write turned into
    ``jmp .`` reports in full and then spins until its time limit; the file is mended between
    attempts, so the retry boots the probe as it is: flaky, not a finding.  Broken every time, the
    first attempt stands with its attempts and its exit is the finding."""
    from pvhboot.compare import runner
    from pvhboot.compare.engine import Options, plan_cells, run_cells
    from pvhboot.probe import probe_path

    real = probe_path().read_bytes()
    out_f4 = b"\xe7\xf4"  # out %eax,$0xf4: probe_exit()'s write to the debug-exit port (probe.c)
    assert real.count(out_f4) == 1
    spins = real.replace(out_f4, b"\xeb\xfe")  # jmp .
    kernel = tmp_path / "probe.elf"
    _, cells = plan_cells(Options(kernel=None, paths="pvh", cpus=(1,), memory=(64 << 20,)), str(tmp_path))
    cell = dataclasses.replace(cells[0], kernel=str(kernel), timeout=3.0)
    boot_real = runner.run_cells
    booted = []

    def boot_then_mend(batch, jobs, progress=None):
        booted.append(len(batch))
        out = boot_real(batch, jobs, progress=progress)
        kernel.write_bytes(real)
        return out
    monkeypatch.setattr(runner, "run_cells", boot_then_mend)

    kernel.write_bytes(spins)
    (rec,) = run_cells([cell], jobs=1, retries=1)
    assert booted == [1, 1]
    assert rec["status"] == "ok" and rec["fingerprint"]["exit"] not in ("crash", "timeout"), rec["exit"]
    assert "wall-clock limit" in rec["flaky"], rec["flaky"]

    monkeypatch.setattr(runner, "run_cells", boot_real)
    kernel.write_bytes(spins)
    (rec,) = run_cells([cell], jobs=1, retries=1)
    assert rec["status"] == "ok" and rec["fingerprint"]["exit"] == "timeout" and rec["attempts"] == 2
    assert rec["fingerprint"]["probe.verdict"] == "PASS" and "flaky" not in rec


def test_dask_local_cluster_gives_the_same_fingerprints(tmp_path):
    distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed "
                                      "(pip install 'pvhboot[cluster]'; scripts/setup-tests.sh does)")
    from pvhboot.compare.engine import Options, plan_cells, run_cells

    _, cells = plan_cells(Options(kernel=None, cpus=(1, 2), memory=(64 << 20,),
                                  faults=(("cmdline-cut", "linux64"),)), str(tmp_path))
    local = run_cells(cells, jobs=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        remote = run_cells(cells, jobs=2, cluster=cluster.scheduler_address)
    assert [r["status"] for r in remote] == ["ok"] * len(cells), remote
    for a, b in zip(local, remote):
        assert (a["path"], a["cpus"], a["fault"]) == (b["path"], b["cpus"], b["fault"])
        assert a["fingerprint"] == b["fingerprint"]
    assert any(r["fingerprint"]["boot.cmdline"] == "console=ttyS0 probe" for r in remote)  # the fault travelled
