"""kvm tier: the probe under QEMU microvm with -accel kvm on this machine's /dev/kvm.

On kvm_pvm QEMU needs no -cpu option for the probe (it warns that the host lacks CPUID features
such as pni, and goes on).  QEMU's deviations are the same as under TCG
(tests/differential/test_probe_qemu.py): they come from its firmware, not from the accelerator; with
one addition: under KVM, QEMU reserves 16 KiB at 0xfeffc000 (KVM's identity-map page and TSS), and qboot
lists it before the RAM at 1 MiB, so this memmap is both unsorted and ends in an empty entry, two
defects the probe reports with two rules and two texts.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from pvhboot.probe import probe_path
from pvhboot.probe.report import parse_report

pytestmark = pytest.mark.kvm

QEMU = "qemu-system-x86_64"
QEMU_MICROVM_DEVIATIONS = {  # without -initrd (with it, also modlist_aligned and not_on_entry_stack)
    "start_info.memmap_no_empty",
    "start_info.memmap_in_ram", "start_info.in_ram", "start_info.cmdline_in_ram",
}


def test_qemu_accel_kvm_runs_the_probe():
    if not shutil.which(QEMU):
        pytest.skip(f"{QEMU} is not installed")
    proc = subprocess.run([QEMU, "-M", "microvm,accel=kvm", "-m", "64", "-smp", "2", "-kernel", str(probe_path()),
                           "-nographic", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                           "-append", "probe.peer=qemu-kvm"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    rep = parse_report(proc.stdout)
    assert rep.complete, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert rep.facts["cpu.hypervisor"] == "KVMKVMKVM"
    assert set(rep.failed) == QEMU_MICROVM_DEVIATIONS | {"start_info.memmap_sorted"}
    memmap = rep.table("start_info.memmap")
    kvm_reserved = memmap.index((0xFEFFC000, 0x4000, 2))
    assert memmap[kvm_reserved + 1][0] == 0x100000 and memmap[-1] == (0, 0, 0)
    assert rep.rule("start_info.memmap_sorted").seen == \
        f"entry {kvm_reserved + 1} (0x100000) below entry {kvm_reserved} (0xfeffc000)"
    assert rep.rule("start_info.memmap_no_empty").seen == \
        f"1 empty, first: entry {len(memmap) - 1} (addr 0x0 size 0 type 0)"
    assert rep.int_fact("smp.cpus_seen") == 2
    assert proc.returncode == 3
