"""kvm tier: vCPU threads run under the seccomp allow-list (pvhboot.vmm.seccomp).

A test-only device on port 0x10 does, from the vCPU thread that handles the guest's OUT, what no
device may do (open a file, make a socket, exec a program, spawn a thread): the VM stops with a
crash report naming the syscall and the vCPU, exit code 1, and the call itself failed (EPERM).
With ``seccomp=False`` (--no-seccomp) the same device runs unhindered.  The probe boots with the
filter on (the default) across vCPU counts: tests/kvm/test_vcpus.py and test_probe_matrix.py.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import guests
import pytest

from pvhboot.memory import GuestMemory
from pvhboot.vmm import Machine

pytestmark = pytest.mark.kvm

# 16-bit: mov al, 1 ; out 0x10, al ; mov al, 0 ; out 0xf4, al ; hlt
OUT_THEN_EXIT = bytes([0xB0, 0x01, 0xE6, 0x10, 0xB0, 0x00, 0xE6, 0xF4, 0xF4])


def _seccomp_unavailable() -> str | None:
    from pvhboot.vmm.seccomp import SeccompUnavailable, vcpu_filter_program

    try:
        vcpu_filter_program()
    except SeccompUnavailable as e:
        return str(e)
    return None


@pytest.fixture(scope="module", autouse=True)
def need_seccomp():
    why = _seccomp_unavailable()
    if why:
        pytest.skip(f"seccomp filter unavailable here: {why}")


class Misbehaving:
    """A bus device whose write handler runs ``action`` on the vCPU thread and keeps what happened."""

    def __init__(self, action) -> None:
        self.action = action
        self.outcome: BaseException | str | None = None

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        try:
            self.action()
            self.outcome = "allowed"
        except BaseException as e:  # noqa: BLE001 - swallowed on purpose: the VMM must stop anyway
            self.outcome = e


def run_with_device(action, seccomp: bool = True):
    mem = GuestMemory([(0, 1 << 20)])
    try:
        mem.write(guests.LOAD, OUT_THEN_EXIT)
        dev = Misbehaving(action)
        with Machine(mem, guests.real_mode(), console=None, timeout=30, seccomp=seccomp) as m:
            m.pio_bus.insert(dev, 0x10, 1, "misbehaving")
            record = m.run()
        return record, dev
    finally:
        mem.close()


def _open_file():
    os.close(os.open("/etc/hostname", os.O_RDONLY))


def _socket():
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()


def _exec():
    os.execv("/bin/true", ["true"])  # would replace the VMM: must never happen


def _sigaction():
    # Only a fatal signal's rt_sigaction is allowed (faulthandler's re-raise); any other handler is not.
    import ctypes
    import signal as sig

    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.restype = ctypes.c_ssize_t
    if libc.signal(int(sig.SIGUSR2), ctypes.c_void_p(1)) == -1:  # SIG_IGN; SIG_ERR on failure
        raise OSError(ctypes.get_errno(), "signal(SIGUSR2)")  # EPERM: a PermissionError


def _thread():
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()


@pytest.mark.parametrize("action,syscall", [
    (_open_file, "openat("), (_socket, "socket(0x2, "), (_exec, "execve("),
    (_thread, ("gettid(", "clone3(", "clone(")),  # CPython asks its thread id before glibc's clone3
    (_sigaction, "rt_sigaction(0xc, "),
], ids=["open", "socket", "exec", "thread", "sigaction"])
def test_forbidden_syscall_stops_the_vm_naming_it(action, syscall):
    record, dev = run_with_device(action)
    assert (record.reason, record.exit_code) == ("crash", 1), record
    first = record.crash_report.splitlines()[0]
    assert first.startswith("pvhboot: guest stopped: seccomp violation on vCPU 0: the thread of vCPU 0")
    assert any(call in first for call in ((syscall,) if isinstance(syscall, str) else syscall)), first
    assert "not in the vCPU threads' seccomp allow-list" in first
    # The call failed: EPERM from the supervisor, or EINTR when the VM's stop kicked the thread first
    # (a thread start reports either as RuntimeError).
    assert isinstance(dev.outcome, (PermissionError, InterruptedError, RuntimeError)), dev.outcome


def test_no_seccomp_lets_the_device_do_it():
    record, dev = run_with_device(_open_file, seccomp=False)
    assert (record.reason, record.exit_code, record.crash_report) == ("debug_exit", 0, None)
    assert dev.outcome == "allowed"


def test_allowed_path_runs_filtered():
    """The same guest and a well-behaved device: no report (the filter allows the run loop's needs)."""
    record, dev = run_with_device(lambda: None)
    assert (record.reason, record.exit_code, record.crash_report) == ("debug_exit", 0, None)
    assert dev.outcome == "allowed"


def test_cli_no_seccomp_option_boots_the_probe():
    for flag in ([], ["--no-seccomp"]):
        p = subprocess.run([sys.executable, "-m", "pvhboot", "boot", "--cpus", "2", "--memory", "64M",
                            "--timeout", "60", *flag], capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
        assert b"PROBE PASS" in p.stdout


def test_allow_ioctls_extends_the_vcpu_ioctls():
    """A feature that issues another KVM ioctl from the vCPU thread declares it (VcpuSandbox.allow_ioctls)."""
    from pvhboot.abi import kvm as abi

    def get_fpu(vcpu):
        return lambda: vcpu._call("KVM_GET_FPU", abi.KVM_GET_FPU, abi.kvm_fpu())

    for allow, expect in ((False, "crash"), (True, "debug_exit")):
        mem = GuestMemory([(0, 1 << 20)])
        try:
            mem.write(guests.LOAD, OUT_THEN_EXIT)
            with Machine(mem, guests.real_mode(), console=None, timeout=30) as m:
                dev = Misbehaving(get_fpu(m.vm.vcpus[0]))
                m.pio_bus.insert(dev, 0x10, 1, "misbehaving")
                if allow:
                    m.sandbox.allow_ioctls(abi.KVM_GET_FPU)
                record = m.run()
        finally:
            mem.close()
        assert record.reason == expect, record.crash_report
        if not allow:
            assert "called ioctl(" in record.crash_report and f"{abi.KVM_GET_FPU:#x}" in record.crash_report


def test_a_fatal_signal_in_a_vcpu_thread_under_faulthandler_ends_the_process(tmp_path):
    """A vCPU thread that takes SIGSEGV (a device bug; in the nested rig, a VMM thread's state
    corrupted by the bench) under -X faulthandler, as `compare` runs its cells: faulthandler writes
    every thread's traceback and re-raises with the default action, and the process dies of the
    signal at once.  Before rt_sigaction of a fatal signal was allowed, the refused call left the
    thread taking SIGSEGV again and again holding the GIL: the VMM hung, tracebacks without end."""
    from pathlib import Path

    script = tmp_path / "segv_in_vcpu.py"
    script.write_text("import ctypes\nfrom test_seccomp import run_with_device\n"
                      "run_with_device(lambda: ctypes.string_at(0))\nprint('VMM RETURNED')\n")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), str(Path(__file__).parent)]))
    p = subprocess.run([sys.executable, "-X", "faulthandler", str(script)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == -11, (p.returncode, p.stderr[-2000:])
    assert p.stderr.count("Fatal Python error: Segmentation fault") == 1, p.stderr[-3000:]
    assert "in string_at" in p.stderr and "in write" in p.stderr  # the vCPU thread's own traceback
