"""kvm tier: the nested rig's KVM keeper (pvhboot.rig.keeper) on a real /dev/kvm: it holds one VM with
an in-kernel irqchip and one vCPU, says so through its ready file, and keeps holding it."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.kvm


def test_keeper_holds_one_vm_and_vcpu_until_killed(tmp_path):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "pvhboot.rig.keeper", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.read_text() == "held\n", proc.stderr.read().decode() if proc.poll() is not None else ""
        time.sleep(0.3)
        assert proc.poll() is None  # still holding
        fds = os.listdir(f"/proc/{proc.pid}/fd")
        kinds = sorted(os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in fds)
        assert kinds.count("anon_inode:kvm-vm") == 1, kinds
        assert kinds.count("anon_inode:kvm-vcpu:0") >= 1, kinds  # its fd (and the kvm_run mapping's)
    finally:
        proc.kill()
        proc.wait()
