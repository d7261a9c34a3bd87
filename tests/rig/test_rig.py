"""The nested rig itself: it comes up with kvm_amd, returns a command's output and exit status,
and says why when it cannot come up or finish (tier `rig`: seconds per boot under QEMU TCG)."""
from __future__ import annotations

import re

import pytest

from pvhboot.rig import RigError, run_in_rig
from pvhboot.rig.launch import OUTER_CPUS

pytestmark = [pytest.mark.rig, pytest.mark.usefixtures("rig_available")]


def test_rig_brings_up_kvm_amd_and_runs_a_command():
    res = run_in_rig(
        "ls -l /dev/kvm; dmesg | grep -o 'SVM: kvm: Nested Paging enabled'; "
        "python3 -c 'import pvhboot.cli, pvhboot.initramfs, rich, elftools, lz4.block, zstandard, "
        "capstone, ctypes; print(\"imports-ok\")'; echo to-stderr >&2; "
        "echo keeper=$(cat /run/kvm-keeper.ready) "
        "vms=$(ls -l /proc/[0-9]*/fd 2>/dev/null | grep -c anon_inode:kvm-vm); "
        "exit 5", timeout=300)
    assert res.rc == 5, res.console[-2000:]
    lines = res.output.splitlines()
    assert lines[0].startswith("crw") and lines[0].endswith("/dev/kvm")
    assert "SVM: kvm: Nested Paging enabled" in lines
    assert "imports-ok" in lines and "to-stderr" in lines
    # pvhboot.rig.keeper holds one idle VM from before the command on (no code patching per inner boot)
    assert "keeper=held vms=1" in lines, res.output
    assert res.ready_time is not None and "nested_paging=yes" in res.console
    # maxcpus=1 at boot, the others brought online by /init once the keeper holds its VM
    assert f"cpus=0-{OUTER_CPUS - 1}" in res.console, res.console[-2000:]


def test_rig_passes_files_and_argv():
    res = run_in_rig(["sh", "/rig/work/t.sh", "a b", "c"], timeout=300,
                     files={"rig/work/t.sh": b'#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done\n'})
    assert res.rc == 0
    assert res.output == "[a b]\n[c]\n"


@pytest.fixture
def _keep_the_real_failed_console(monkeypatch, tmp_path):
    """These tests make the rig fail on purpose: their consoles must not replace the one .ci/run
    shows for a real failure earlier in the run (launch.FAILED_CONSOLE_LOG)."""
    from pvhboot.rig import launch

    monkeypatch.setattr(launch, "FAILED_CONSOLE_LOG", tmp_path / "last-console-failed.log")


@pytest.mark.usefixtures("_keep_the_real_failed_console")
def test_rig_out_of_memory_is_reported():
    # The rig archive (~120 MB) does not fit in 96 MiB: QEMU refuses the initrd.  (In 160-200 MiB
    # the kernel either panics "System is deadlocked on memory" or stalls: not a stable test.)
    with pytest.raises(RigError, match="rig ran out of memory"):
        run_in_rig("true", timeout=120, memory="96M")


@pytest.mark.usefixtures("_keep_the_real_failed_console")
def test_rig_timeout_says_where_with_last_lines():
    with pytest.raises(RigError) as e:
        run_in_rig("echo last-words-before-hang; sleep 600", timeout=20)
    msg = str(e.value)
    assert "timed out after 20 s while running the command" in msg
    assert "last-words-before-hang" in msg


@pytest.mark.usefixtures("_keep_the_real_failed_console")
def test_a_silent_outer_guest_is_reported_as_a_stall_with_its_registers():
    # Silence the outer guest's watchdog, then say nothing: the host must call it a stall well
    # before the timeout, with QEMU's view of the outer vCPUs, and (attempts=1) not boot it again.
    from pvhboot.rig.launch import RigStalled

    with pytest.raises(RigStalled) as e:
        run_in_rig("kill $(cat /run/rig-heartbeat.pid); echo silenced-now; sleep 600", timeout=240,
                   stall_timeout=20, attempts=1)
    msg = str(e.value)
    assert "rig stalled" in msg and "silenced-now" in msg
    assert msg.count("RIP=") == OUTER_CPUS, msg  # one register dump per outer vCPU
    # The outer clock, read twice a second apart: each local APIC's timer and jiffies_64 at the address
    # the rig's /init printed.  Here the outer guest is only quiet, so its jiffies move.
    assert msg.count("| Timer") == 2 * OUTER_CPUS, msg
    jiffies = [int(v, 16) for v in re.findall(r"\| ffffffff[0-9a-f]{8}: (0x[0-9a-f]+)", msg)]
    assert len(jiffies) == 2 and jiffies[1] > jiffies[0], msg
