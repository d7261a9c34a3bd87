"""kvm tier, issue 10's user-input cases that need a running guest: large sparse guests, debug-exit
values that do not fit an exit status, and VMM memory that stays bounded whatever the guest prints."""
from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys

import pytest
from test_boot_cli import hello_then_exit, synthetic_kernel

pytestmark = pytest.mark.kvm

MiB = 1 << 20
FLOOD_CHUNK = 4096  # bytes per rep outsb (what KVM hands over per PIO exit at most: one page)


def console_flood(chunks: int, status: int = 0) -> bytes:
    """32-bit: mov edx, 0x3f8 ; mov ebx, chunks ; L: mov esi, 0x100000 ; mov ecx, 4096 ; rep outsb ;
    dec ebx ; jnz L ; mov eax, status ; out 0xf4, eax ; hlt   (prints chunks * 4096 zero bytes)"""
    code = bytes([0xBA, 0xF8, 0x03, 0x00, 0x00, 0xBB]) + struct.pack("<I", chunks)
    code += bytes([0xBE]) + struct.pack("<I", 0x100000) + bytes([0xB9]) + struct.pack("<I", FLOOD_CHUNK)
    code += bytes([0xF3, 0x6E, 0x4B, 0x75, 0xF1])
    return code + bytes([0xB8]) + struct.pack("<I", status) + bytes([0xE7, 0xF4, 0xF4])


# The child's peak RSS, measured by a wrapper process whose only child is pvhboot (RUSAGE_CHILDREN
# is the largest of the waited-for children: this test process has had many).
PEAK_RSS = ("import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss_kib(kernel: str, *args) -> tuple[int, int]:
    p = subprocess.run([sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "pvhboot", "boot", kernel,
                        "--protocol", "pvh", "--memory", "64M", "--timeout", "120", *args],
                       capture_output=True, text=True, timeout=300)
    status, rss = p.stdout.split()
    return int(status), int(rss)


def test_console_flood_keeps_vmm_memory_bounded(tmp_path):
    """3 MiB of console: the VMM's peak RSS stays within 3 MiB of an idle VM's (it kept every byte,
    twice, before: +7 MB here); bench/memory.py rows 5f/5i measure larger floods."""
    idle = synthetic_kernel(tmp_path, console_flood(1), "idle")
    flood = synthetic_kernel(tmp_path, console_flood(768), "flood")
    s0, rss0 = peak_rss_kib(idle)
    s1, rss1 = peak_rss_kib(flood)
    assert s0 == s1 == 0
    assert (rss1 - rss0) * 1024 < 3 * MiB, f"idle {rss0} KiB, 3 MiB flood {rss1} KiB"


def test_exit_record_keeps_the_console_tail(tmp_path):
    from pvhboot.vmm import MicroVM
    from pvhboot.vmm.builder import CONSOLE_TAIL

    kernel = synthetic_kernel(tmp_path, console_flood(40))
    with MicroVM(kernel, memory=64 * MiB, protocol="pvh", console=None, timeout=120) as vm:
        r = vm.run()
    assert r.reason == "debug_exit" and r.console_total == 40 * FLOOD_CHUNK
    assert len(r.console) == CONSOLE_TAIL


@pytest.mark.parametrize("value, status", [(0x100, 1), (0x200, 1), (0x101, 1), (0x1FF, 0xFF), (0x42, 0x42)])
def test_debug_exit_values_map_to_a_nonzero_status(tmp_path, value, status):
    kernel = synthetic_kernel(tmp_path, hello_then_exit(b"", value))
    p = subprocess.run([sys.executable, "-m", "pvhboot", "boot", kernel, "--timeout", "20"],
                       capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == status, p.stderr
    err = p.stderr.decode().splitlines()
    assert (err == [f"pvhboot: warning: the guest's debug-exit value {value:#x} is not an exit status "
                    f"(one byte); exiting {status}"]) if value > 0xFF else err == []


@pytest.mark.parametrize("args", [("boot", "--memory", "1T", "--timeout", "60"),
                                  ("conformance", "--memory", "32G")])
def test_large_sparse_guest_boots_the_probe(args):
    """MAP_NORESERVE: more guest RAM than this host has; the probe touches a few MiB of it."""
    p = subprocess.run([sys.executable, "-m", "pvhboot", *args], capture_output=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    assert b"PROBE PASS" in p.stdout


def test_events_json_is_a_normal_file(tmp_path):
    kernel = synthetic_kernel(tmp_path, hello_then_exit(b"ok\n", 3))
    events = tmp_path / "events.json"
    p = subprocess.run([sys.executable, "-m", "pvhboot", "boot", kernel, "--events-json", events],
                       capture_output=True, timeout=60, stdin=subprocess.DEVNULL, preexec_fn=lambda: os.umask(0o022))
    assert p.returncode == 3, p.stderr
    assert stat.S_IMODE(os.stat(events).st_mode) == 0o644 and b'"exit_code": 3' in events.read_bytes()


def test_port80_flood_keeps_the_event_record_bounded(tmp_path):
    """32-bit: mov ecx, 10000 ; L: mov al, 0x42 ; out 0x80, al ; loop L ; debug exit 0."""
    from pvhboot.vmm import MicroVM
    from pvhboot.vmm.builder import EVENTS_KEPT

    n = 10000
    code = bytes([0xB9]) + struct.pack("<I", n) + bytes([0xB0, 0x42, 0xE6, 0x80, 0xE2, 0xFA])
    code += bytes([0xB8]) + struct.pack("<I", 0) + bytes([0xE7, 0xF4, 0xF4])
    kernel = synthetic_kernel(tmp_path, code)
    with MicroVM(kernel, memory=64 * MiB, protocol="pvh", console=None, timeout=120) as vm:
        r = vm.run()
    assert r.reason == "debug_exit" and r.exit_code == 0
    assert len(r.boot_markers) == EVENTS_KEPT and len(r.events) == EVENTS_KEPT
    assert r.events_dropped == n + 1 - EVENTS_KEPT  # the markers beyond the cap, and the debug exit


@pytest.mark.parametrize("args", [("boot", "KERNEL"), ("conformance",)])
def test_closed_pipe_keeps_the_guest_status(tmp_path, args):
    """`pvhboot boot K | head`: the guest runs to its end and its status is the exit status, with
    nothing on stderr; the probe's verdict likewise for conformance."""
    kernel = synthetic_kernel(tmp_path, console_flood(4, 42))  # 16 KiB of console into the closed pipe
    r, w = os.pipe()
    os.close(r)
    p = subprocess.run([sys.executable, "-m", "pvhboot", *[kernel if a == "KERNEL" else a for a in args]],
                       stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=120)
    os.close(w)
    assert p.returncode == (42 if args[0] == "boot" else 0) and p.stderr == b"", p
