"""kvm tier: `pvhboot boot` end to end (image -> boot structures -> KVM -> exit status).

Two guests: a synthetic ELF kernel built here (a PHYS32_ENTRY note and a few instructions that are the
same bytes in 32- and 64-bit mode), so the whole path is tested whatever else exists; and the built-in
probe (skipped, with the reason, until it is part of the installation).
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys

import imagekit
import pytest
from support import probe_elf

pytestmark = pytest.mark.kvm

PADDR = 0x1000000
VADDR = 0xFFFFFFFF81000000
STT_FUNC = 2
TEXT_OFFSET = 0x1000  # imagekit puts .text at this file offset


def hello_then_exit(text: bytes, status: int) -> bytes:
    """mov edx, 0x3f8 ; (mov al, c ; out dx, al)* ; mov eax, status ; out 0xf4, eax ; hlt"""
    code = bytes([0xBA, 0xF8, 0x03, 0x00, 0x00])
    for c in text:
        code += bytes([0xB0, c, 0xEE])
    return code + bytes([0xB8]) + struct.pack("<I", status) + bytes([0xE7, 0xF4, 0xF4])


def synthetic_kernel(tmp_path, code: bytes, name: str = "vmlinux") -> str:
    elf = bytearray(imagekit.build_elf(
        entry=PADDR, paddr=PADDR, vaddr=VADDR, notes=[("Xen", 18, struct.pack("<I", PADDR))],
        symbols=[("synthetic_start", VADDR, 0x100, STT_FUNC), ("synthetic_tail", VADDR + 0x100, 0x100, STT_FUNC)],
        text_size=0x200))
    assert len(code) <= 0x200
    elf[TEXT_OFFSET:TEXT_OFFSET + len(code)] = code
    path = tmp_path / name
    path.write_bytes(bytes(elf))
    return str(path)


def pvhboot(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "pvhboot", "boot", *args], capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("protocol", ["pvh", "linux64"])
@pytest.mark.parametrize("cpus", [1, 2])
@pytest.mark.parametrize("memory", ["64M", "6G"])
def test_synthetic_kernel_exit_status(tmp_path, protocol, cpus, memory):
    kernel = synthetic_kernel(tmp_path, hello_then_exit(b"ok\n", 42))
    p = pvhboot(kernel, "--protocol", protocol, "--cpus", str(cpus), "--memory", memory, "--timeout", "20")
    assert p.returncode == 42, p.stderr.decode()
    assert p.stdout == b"ok\n"
    assert p.stderr == b""


def test_auto_protocol_and_events_json(tmp_path):
    kernel = synthetic_kernel(tmp_path, bytes([0xB0, 0x40, 0xE6, 0x80]) + hello_then_exit(b"", 0))
    out = tmp_path / "events.json"
    p = pvhboot(kernel, "--memory", "32M", "--events-json", str(out))
    assert p.returncode == 0, p.stderr.decode()
    rec = json.loads(out.read_text())
    assert rec["reason"] == "debug_exit" and rec["exit_code"] == 0
    assert [m["code"] for m in rec["boot_markers"]] == [0x40]
    assert rec["crash_report"] is None and rec["wall_time_s"] > 0


def test_timeout_report_is_symbolized(tmp_path):
    # 0x100 bytes of nops then a spin loop inside synthetic_tail
    code = bytes([0xE9]) + struct.pack("<i", 0x100 + 0x10 - 5) + b"\x90" * (0x110 - 5) + bytes([0xEB, 0xFE])
    kernel = synthetic_kernel(tmp_path, code)
    out = tmp_path / "ev.json"
    p = pvhboot(kernel, "--memory", "32M", "--timeout", "0.5", "--events-json", str(out))
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "timeout" in err and "<synthetic_tail+0x10>" in err and "jmp" in err
    assert json.loads(out.read_text())["reason"] == "timeout"


def test_triple_fault_report(tmp_path):
    kernel = synthetic_kernel(tmp_path, bytes([0x90, 0x0F, 0x0B]))  # nop ; ud2 (the boot IDT is empty)
    p = pvhboot(kernel, "--memory", "32M", "--timeout", "20")
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "triple fault" in err and "ud2" in err and "<synthetic_start+0x1>" in err


def test_user_errors_exit_2(tmp_path):
    kernel = synthetic_kernel(tmp_path, hello_then_exit(b"", 0))
    for args in (["/no/such/kernel"], [kernel, "--memory", "lots"], [kernel, "--cpus", "0"],
                 [kernel, "--timeout", "-1"], [kernel, "--initrd", "/no/such/initrd"],
                 [kernel, "--symbols", "/no/such/map"]):
        p = pvhboot(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.startswith(b"pvhboot: error: ") and b"Traceback" not in p.stderr
        assert p.stderr.count(b"\n") == 1




@pytest.mark.parametrize("protocol", ["pvh", "linux64"])
@pytest.mark.parametrize("cpus", [1, 2])
@pytest.mark.parametrize("memory", ["512M", "6G"])
def test_probe_passes(protocol, cpus, memory):
    probe_elf()
    p = pvhboot("--protocol", protocol, "--cpus", str(cpus), "--memory", memory, "--timeout", "60", timeout=120)
    assert p.returncode == 0, (p.stdout.decode()[-2000:], p.stderr.decode())
    assert b"PROBE PASS" in p.stdout
    assert f"smp.cpus_seen={cpus}".encode() in p.stdout
    assert p.stderr == b""
