"""kvm tier: the probe under QEMU microvm with -accel kvm on this machine's /dev/kvm.

On kvm_pvm QEMU needs no -cpu option for the probe (it warns that the host lacks CPUID features
such as pni, and goes on).  QEMU's deviations are the same as under TCG
(tests/differential/test_probe_qemu.py): they come from its firmware, not from the accelerator.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from pvhboot.probe import probe_path
from pvhboot.probe.report import parse_report

pytestmark = pytest.mark.kvm

QEMU = "qemu-system-x86_64"
QEMU_MICROVM_DEVIATIONS = {
    "start_info.memmap_sorted", "start_info.memmap_types",
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
    assert set(rep.failed) == QEMU_MICROVM_DEVIATIONS
    assert rep.int_fact("smp.cpus_seen") == 2
    assert proc.returncode == 3
