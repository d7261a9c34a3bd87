"""The probe under a real peer: QEMU's microvm machine with TCG (no /dev/kvm needed).

QEMU boots an ELF with the Xen PHYS32_ENTRY note the PVH way through its firmware (qboot on
microvm), so this checks the probe against an independent PVH loader, and pins down exactly where
QEMU 7.2's microvm differs from the ABI as pvhboot reads it (README, "Notes: QEMU"):

* qboot's memmap ends with an empty entry (addr 0, size 0, type 0) counted in memmap_entries:
  ``start_info.memmap_no_empty`` fails, and only it (the other entries are sorted and typed; Linux's
  e820 sanitizer drops the empty one).
* start_info, the memmap and the cmdline live in qboot's data area below 1 MiB (0xE0000-0xFFFFF),
  which the memmap marks ACPI NVS / reserved, not RAM: the three ``*_in_ram`` rules fail.
* With ``-initrd`` the modlist is a local on qboot's stack, 0x1c above the entry ESP and 4 bytes off
  an 8-byte boundary: ``start_info.modlist_aligned`` and ``start_info.not_on_entry_stack`` fail.
* TR: the null selector (and a GDT inside the firmware ROM, 0xffffffc1): the TR rules are
  unverifiable, and say it is the null selector.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from pvhboot.cli import main
from pvhboot.probe import probe_path
from pvhboot.probe.report import parse_report

QEMU = "qemu-system-x86_64"
QEMU_MICROVM_DEVIATIONS = {
    "start_info.memmap_no_empty",
    "start_info.memmap_in_ram", "start_info.in_ram", "start_info.cmdline_in_ram",
}
QEMU_INITRD_DEVIATIONS = {"start_info.modlist_aligned", "start_info.not_on_entry_stack"}
QEMU_UNVERIFIABLE = {"entry.tr_busy", "entry.tr_tss32", "entry.tr_base", "entry.tr_limit"}
ALWAYS_PASS = ["entry.cr0", "entry.cr4", "entry.efer", "entry.eflags", "entry.ebx", "entry.cs_base",
               "entry.cs_flat", "entry.ds_flat", "entry.es_flat", "entry.ss_flat", "start_info.version",
               "start_info.memmap_present", "start_info.memmap_nonoverlap", "start_info.cmdline_nul",
               "start_info.memmap_sorted", "start_info.memmap_types", "start_info.aligned",
               "start_info.memmap_aligned", "load.bss_zeroed"]


def fnv1a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def qemu_cmd(*extra, machine="microvm,accel=tcg", memory="64"):
    return [QEMU, "-M", machine, "-m", memory, "-kernel", str(probe_path()), "-nographic", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", *extra]


def run_qemu(*extra, **kw):
    if not shutil.which(QEMU):
        pytest.skip(f"{QEMU} is not installed (scripts/setup-tests.sh installs qemu-system-x86)")
    proc = subprocess.run(qemu_cmd(*extra, **kw), stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    return proc, parse_report(proc.stdout)


def test_tcg_microvm_report_and_deviations():
    cmdline = "console=ttyS0 probe.peer=qemu"
    proc, rep = run_qemu("-append", cmdline)
    assert rep.complete, proc.stdout[-2000:]
    assert set(rep.failed) == QEMU_MICROVM_DEVIATIONS
    assert {r.name for r in rep.rules if r.status == "unverifiable"} == QEMU_UNVERIFIABLE
    for name in ALWAYS_PASS:
        assert rep.status(name) == "pass", name
    assert proc.returncode == (1 << 1) | 1  # isa-debug-exit: (value << 1) | 1, value 1 = FAIL
    assert rep.facts["probe.protocol"] == "pvh" and rep.facts["cpu.hypervisor"] == "TCGTCGTCGTCG"
    assert rep.int_fact("start_info.version") == 1
    assert rep.int_fact("start_info.cmdline_len") == len(cmdline)
    assert rep.int_fact("start_info.cmdline_fnv1a") == fnv1a(cmdline.encode())
    memmap = rep.table("start_info.memmap")
    assert memmap[-1] == (0, 0, 0)  # the empty trailing entry: its own rule, its own text
    assert rep.rule("start_info.memmap_no_empty").seen == \
        f"1 empty, first: entry {len(memmap) - 1} (addr 0x0 size 0 type 0)"
    assert rep.rule("start_info.memmap_sorted").seen == "ascending addresses"
    assert (0x100000, 64 * 2**20 - 0x100000, 1) in memmap
    # TR: qboot leaves the null selector, reported as such (not as a selector missing from the GDT)
    assert rep.int_fact("entry.tr") == 0
    for name in QEMU_UNVERIFIABLE:
        assert rep.rule(name).seen.startswith("tr=0x0 is the null selector"), rep.rule(name)
    # without modules nothing of the boot data lies near qboot's stack
    assert rep.status("start_info.not_on_entry_stack") == "pass" and rep.status("start_info.modlist_aligned") is None
    # QEMU's RSDP is valid and its MADT lists the one vCPU.
    for name in ("acpi.rsdp_checksum", "acpi.root_checksum", "acpi.table_checksums", "acpi.madt_present"):
        assert rep.status(name) == "pass", name
    assert rep.int_fact("acpi.madt.cpus") == 1 and rep.int_fact("smp.cpus_seen") == 1


def test_tcg_microvm_smp_and_initrd(tmp_path):
    initrd = tmp_path / "initrd.bin"
    initrd.write_bytes(bytes(range(256)) * 20)
    proc, rep = run_qemu("-smp", "2", "-initrd", str(initrd), "-append", "x")
    assert rep.complete and set(rep.failed) == QEMU_MICROVM_DEVIATIONS | QEMU_INITRD_DEVIATIONS
    assert rep.int_fact("acpi.madt.cpus") == 2
    assert rep.int_fact("smp.cpus_seen") == 2  # the AP came up through INIT/SIPI/SIPI and reported
    assert rep.status("smp.apic_ids") == "pass"
    paddr, size, _ = (int(v, 0) for v in rep.facts["start_info.mod.0"].split())
    assert size == 5120 and rep.facts["start_info.mod.0.head"] == bytes(range(16)).hex()
    assert rep.int_fact("pvh_bootparams.ramdisk_image") == paddr
    assert rep.int_fact("pvh_bootparams.ramdisk_size") == size
    assert rep.table("pvh_bootparams.e820")[-1] == (0xA0000, 0x60000, 2)  # Linux appends the ISA range
    assert_modlist_on_qboot_stack(rep)


def assert_modlist_on_qboot_stack(rep):
    """qboot's modlist: a local on its stack just above the entry ESP, 4 bytes off an 8-byte boundary."""
    esp, modlist = rep.int_fact("entry.esp"), rep.int_fact("start_info.modlist_paddr")
    assert esp and 0 < modlist - esp < 0x1000, (hex(esp), hex(modlist))  # 0x7b7c = esp 0x7b60 + 0x1c (7.2)
    assert modlist % 8 == 4
    assert rep.rule("start_info.modlist_aligned").seen == f"modlist {modlist:#x} is 4 bytes past an 8-byte boundary"
    seen = rep.rule("start_info.not_on_entry_stack").seen
    assert seen.startswith(f"modlist {modlist:#x}+0x20 at esp+{modlist - esp:#x}, on the loader's stack"), seen
    assert f"entry esp {esp:#x}" in seen
    assert rep.status("start_info.modlist_in_ram") == "pass"  # RAM per the memmap: the old rules missed it


def test_tcg_microvm_without_acpi(tmp_path):
    initrd = tmp_path / "initrd.bin"
    initrd.write_bytes(b"\x5a" * 100)
    proc, rep = run_qemu("-smp", "2", "-initrd", str(initrd), machine="microvm,accel=tcg,acpi=off")
    assert rep.complete and set(rep.failed) == QEMU_MICROVM_DEVIATIONS | QEMU_INITRD_DEVIATIONS
    assert_modlist_on_qboot_stack(rep)
    assert rep.int_fact("start_info.rsdp_paddr") == 0
    assert rep.status("acpi.rsdp") == "unverifiable" and rep.status("smp.aps_started") == "unverifiable"


def test_tcg_microvm_16m():
    proc, rep = run_qemu(memory="16")
    assert rep.complete and set(rep.failed) == QEMU_MICROVM_DEVIATIONS
    assert rep.status("start_info.memmap_covers_probe") == "pass"


def test_conformance_command_against_qemu(capsys):
    if not shutil.which(QEMU):
        pytest.skip(f"{QEMU} is not installed")
    argv = qemu_cmd()
    argv[argv.index(str(probe_path()))] = "{probe}"
    assert main(["conformance", "--", *argv]) == 1
    out = capsys.readouterr().out
    for name in QEMU_MICROVM_DEVIATIONS:
        assert name in out
    assert "PROBE FAIL" in out and "exit status 3" in out
