"""The rig's stall dump against the real QEMU monitor (QEMU 7.2, TCG, no /dev/kvm needed).

When the outer guest of the nested rig goes silent, pvhboot.rig.launch asks QEMU's monitor (QMP,
human-monitor-command) where the outer vCPUs are and reads the outer clock twice: each vCPU's local
APIC (its timer's current count) and the outer kernel's jiffies_64 (`x /1gx`).  These tests hold
those commands to what this QEMU really answers, on a paused microvm with two vCPUs."""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from pvhboot.rig import launch

QEMU = "qemu-system-x86_64"


@pytest.fixture
def paused_qemu(tmp_path):
    if not shutil.which(QEMU):
        pytest.skip(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen([QEMU, "-M", "microvm,accel=tcg", "-cpu", "max", "-smp", str(launch.OUTER_CPUS),
                             "-m", "64M", "-nographic", "-S", "-monitor", "none", "-serial", "none",
                             "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        yield sock
    finally:
        proc.kill()
        proc.wait()


def test_the_stall_dump_reads_vcpus_uart_and_the_clock_twice(paused_qemu, monkeypatch):
    monkeypatch.setattr(launch, "CLOCK_PROBE_S", 0.1)
    # Paging is off at reset, so `x` reads guest-physical 0x1000 here (jiffies_64's place in a real dump).
    dump = launch._qmp_outer_state(paused_qemu, 0x1000)
    assert "* CPU #0" in dump and "CPU#1" in dump  # info cpus, info registers -a
    assert "portb[0x03f9]" in dump and "portb[0x03fd]" in dump  # the UART's IER and LSR
    for reading in (1, 2):
        assert f"--- outer clock, reading {reading} of 2" in dump
    for cpu in range(launch.OUTER_CPUS):
        assert dump.count(f"dumping local APIC state for CPU {cpu}") == 2
    assert dump.count("0000000000001000: 0x") == 2  # jiffies_64, read twice

    summary = launch._summarise_registers(dump)
    assert summary.count("| Timer") == 2 * launch.OUTER_CPUS  # each APIC timer's count, twice
    assert summary.count("| LVTT\t") == 2 * launch.OUTER_CPUS
    assert summary.count("| 0000000000001000: 0x") == 2


def test_without_the_jiffies_address_the_apics_are_still_read(paused_qemu, monkeypatch):
    monkeypatch.setattr(launch, "CLOCK_PROBE_S", 0.0)
    dump = launch._qmp_outer_state(paused_qemu)
    assert dump.count("(info lapic 0)") == 2 and "(x /1gx" not in dump
