"""kvm tier: the KVM layer and the run loop on a real /dev/kvm with tiny hand-assembled guests."""
from __future__ import annotations

import os

import guests  # tests/kvm/guests.py (pytest puts this folder on sys.path)
import pytest

from pvhboot.abi import kvm as abi
from pvhboot.errors import KvmError
from pvhboot.kvm import Kvm
from pvhboot.memory import GuestMemory
from pvhboot.vmm import Machine

pytestmark = pytest.mark.kvm


def run_guest(code: bytes, state, *, data: dict[int, bytes] | None = None, timeout: float = 10.0,
              memory: int = 1 << 20, cpus: int = 1, irqchip: bool = True):
    with GuestMemory([(0, memory)]) as mem:
        mem.write(guests.LOAD, code)
        for addr, blob in (data or {}).items():
            mem.write(addr, blob)
        with Machine(mem, state, console=None, timeout=timeout, cpus=cpus, irqchip=irqchip) as m:
            return m.run()


def test_kvm_system():
    with Kvm() as kvm:
        assert kvm.check_extension(abi.KvmCap.USER_MEMORY) > 0
        assert kvm.vcpu_mmap_size >= 4096
        cpuid = kvm.supported_cpuid()
        assert any(e.function == 0 for e in cpuid) and any(e.function == 1 for e in cpuid)


def test_missing_device_is_a_clear_error():
    with pytest.raises(KvmError, match="does not exist"):
        Kvm("/dev/no-such-kvm")


def test_port_writes_reach_the_serial_bus():
    r = run_guest(guests.HELLO_REAL, guests.real_mode(), data={guests.LOAD + 0x20: guests.HELLO_MSG})
    assert r.reason == "debug_exit" and r.exit_code == 7
    assert r.console == b"hello from the guest\n"
    assert r.crash_report is None


def test_unmapped_port_does_not_kill_the_vmm():
    r = run_guest(guests.UNMAPPED_REAL, guests.real_mode())
    assert r.reason == "debug_exit"
    assert r.exit_code == 0xFF  # the IN from an unmapped port read all ones


def test_boot_markers_recorded():
    r = run_guest(guests.MARKERS_32, guests.flat32())
    assert r.reason == "debug_exit" and r.exit_code == 0
    assert [c for c, _ in r.boot_markers] == [0x40, 0x41]
    assert all(t >= 0 for _, t in r.boot_markers)


def test_mmio_boot_timer_and_unmapped_mmio_read():
    r = run_guest(guests.MMIO_32, guests.flat32())
    assert r.reason == "debug_exit"
    assert r.exit_code == 0xFFFFFFFF  # unmapped MMIO read: all ones
    assert [c for c, _ in r.boot_markers] == [123]


def test_acpi_poweroff_and_i8042_reset():
    assert run_guest(guests.POWEROFF_32, guests.flat32()).reason == "poweroff"
    assert run_guest(guests.RESET_32, guests.flat32()).reason == "reset"


def test_triple_fault_report_names_the_instruction():
    r = run_guest(guests.TRIPLE_FAULT_32, guests.flat32())
    assert r.reason == "crash" and r.exit_code == 1
    rep = r.crash_report
    assert "triple fault" in rep
    assert "RIP=0x0000000000001001" in rep
    assert "0x1001: 0f 0b" in rep and "ud2" in rep  # capstone, 32-bit
    assert "CR0=0x1 " in rep and "CS  sel=0x0010" in rep


def test_spinning_guest_stopped_by_timeout_with_report():
    r = run_guest(guests.SPIN_32, guests.flat32(), timeout=0.5)
    assert r.reason == "timeout" and r.exit_code != 0
    assert "timeout" in r.crash_report and "jmp 0x1000" in r.crash_report
    assert r.wall_time_s < 5


def test_crash_report_quotes_the_first_oops_after_it_scrolled_away():
    # An oops, then 200 lines of cascade, then a hang: the report's last console lines show only the
    # cascade; the first sign of trouble is shown on its own, with its console line number.
    msg = (b"booting\n[    7.46] traps: PANIC: double fault, error_code: 0x0\n[    7.47] RIP: first_culprit\n"
           + b"".join(b"[    7.5] ? asm_exc_page_fault+0x9/0x30\n" for _ in range(200)) + b"\0")
    r = run_guest(guests.PRINT_THEN_HANG_REAL, guests.real_mode(), data={guests.LOAD + 0x20: msg}, timeout=1.0)
    assert r.reason == "timeout", r.crash_report
    rep = r.crash_report
    assert "guest said: [    7.46] traps: PANIC: double fault, error_code: 0x0" in rep
    assert "first sign of trouble (console line 2):" in rep
    assert "  | [    7.47] RIP: first_culprit" in rep
    assert rep.index("first sign of trouble") < rep.index("last 40 console lines")


def test_halted_second_vcpu_is_stopped():
    """The AP waits in the in-kernel LAPIC for INIT/SIPI (blocked in KVM_RUN); the stop must kick it."""
    r = run_guest(guests.SPIN_32, guests.flat32(), timeout=0.3, cpus=2)
    assert r.reason == "timeout"
    assert "vCPU 1:" in r.crash_report and "did not leave" not in r.crash_report


def test_bare_vm_hlt_exit():
    r = run_guest(bytes([0xF4]), guests.real_mode(), irqchip=False)
    assert r.reason == "poweroff"


def test_rep_outs_to_serial():
    # 16-bit: mov dx, 0x3f8 ; mov si, msg ; mov cx, 6 ; rep outsb ; mov al, 0 ; out 0xf4, al
    code = bytes([0xBA, 0xF8, 0x03, 0xBE, 0x20, 0x10, 0xB9, 0x06, 0x00, 0xF3, 0x6E, 0xB0, 0x00, 0xE6, 0xF4, 0xF4])
    r = run_guest(code, guests.real_mode(), data={guests.LOAD + 0x20: b"rep ok\n"})
    assert r.reason == "debug_exit"
    assert r.console.startswith(b"rep ok")


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _maps_count() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_200_cycles_leave_no_fd_and_no_mapping():
    def cycle():
        r = run_guest(bytes([0xB0, 0x03, 0xE6, 0xF4, 0xF4]), guests.real_mode(),
                      memory=64 << 10)
        assert r.reason == "debug_exit" and r.exit_code == 3

    for _ in range(5):  # warm up caches, thread stacks, lazily imported modules
        cycle()
    fds, maps = _fd_count(), _maps_count()
    for _ in range(200):
        cycle()
    assert _fd_count() == fds
    assert _maps_count() <= maps + 2  # allocator arenas may shift by one or two; growth would be hundreds


def test_coalesced_pio_zone_delivers_in_order():
    """Port writes to a coalesced PIO zone (KVM_CAP_COALESCED_PIO) do not exit; the run loop delivers
    them from the ring before the next exit, so the console still sees every byte in order."""
    with Kvm() as kvm:
        if not kvm.check_extension(abi.KvmCap.COALESCED_PIO):
            pytest.skip("this KVM has no KVM_CAP_COALESCED_PIO")
    with GuestMemory([(0, 1 << 20)]) as mem:
        mem.write(guests.LOAD, guests.HELLO_REAL)
        mem.write(guests.LOAD + 0x20, guests.HELLO_MSG)
        # only the THR/DLL register (port 0x3f8) is coalesced; LSR reads etc. still exit
        with Machine(mem, guests.real_mode(), console=None, timeout=10, coalesced=((0x3F8, 1, True),)) as m:
            r = m.run()
    assert r.reason == "debug_exit" and r.exit_code == 7
    assert r.console == b"hello from the guest\n"


class _BrokenDevice:
    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        raise RuntimeError(f"device bug at offset {offset} value {value:#x}")


def test_device_exception_ends_the_vm_with_a_report():
    # 16-bit: mov al, 0x5a ; out 0x90, al ; hlt
    with GuestMemory([(0, 1 << 20)]) as mem:
        mem.write(guests.LOAD, bytes([0xB0, 0x5A, 0xE6, 0x90, 0xF4]))
        with Machine(mem, guests.real_mode(), console=None, timeout=10) as m:
            m.pio_bus.insert(_BrokenDevice(), 0x90, 1, "broken")
            r = m.run()
    assert r.reason == "crash" and r.exit_code == 1
    assert "vmm error" in r.crash_report and "device bug at offset 0 value 0x5a" in r.crash_report
