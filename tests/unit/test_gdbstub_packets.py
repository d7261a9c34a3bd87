"""unit: the GDB remote protocol's packet layer and register file (pvhboot.vmm.gdbstub), no KVM.

Bytes go through a real socketpair so the reader sees them split as a socket delivers them.  The
register layout is checked against gdb's own features/i386/64bit-*.xml order (core, sse, segments).
"""
from __future__ import annotations

import io
import socket
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvhboot.abi import kvm as abi
from pvhboot.errors import ConfigError
from pvhboot.vmm import gdbstub as g


def through_socket(data: bytes, chunk: int = 7) -> list[tuple]:
    """Send ``data`` through a socketpair in ``chunk``-byte writes and feed what arrives to a reader."""
    a, b = socket.socketpair()
    reader = g.PacketReader()
    events: list[tuple] = []
    with a, b:
        for i in range(0, len(data), chunk):
            a.sendall(data[i:i + chunk])
        a.shutdown(socket.SHUT_WR)
        while True:
            got = b.recv(5)
            if not got:
                break
            events += reader.feed(got)
    return events


def test_frame_and_checksum():
    assert g.frame(b"OK") == b"$OK#9a"
    assert g.frame(b"") == b"$#00"
    assert g.checksum(b"qSupported") == 0x37


def test_reader_packets_acks_interrupts_and_bad_checksums():
    stream = b"+" + g.frame(b"qSupported:swbreak+") + b"-" + b"\x03" + b"$g#00" + b"noise" + g.frame(b"?")
    assert through_socket(stream) == [
        ("ack",), ("packet", b"qSupported:swbreak+"), ("nak",), ("interrupt",), ("bad", b"g"),
        ("packet", b"?")]


def test_reader_non_hex_checksum_is_bad_not_a_crash():
    assert through_socket(b"$g#zz") == [("bad", b"g")]


def test_reader_bounds_its_buffer():
    reader = g.PacketReader(limit=64)
    assert reader.feed(b"$" + b"a" * 64 + b"#" + b"%02x" % g.checksum(b"a" * 64)) == [("packet", b"a" * 64)]
    with pytest.raises(g.ProtocolError):
        reader.feed(b"$" + b"a" * 65)


def test_reader_keeps_partial_packet_state_across_reads():
    reader = g.PacketReader()
    assert reader.feed(b"$m10") == []
    assert reader.feed(b"0,4#") == []
    assert reader.feed(b"%02x" % g.checksum(b"m100,4")) == [("packet", b"m100,4")]


@given(st.binary(max_size=300))
def test_binary_escaping_round_trips(data):
    escaped = g.escape_binary(data)
    for c in b"#$*":
        assert c not in escaped
    assert g.unescape_binary(escaped) == data
    # an escaped payload always frames into exactly one packet
    assert through_socket(g.frame(escaped)) == [("packet", escaped)]


def test_unescape_rejects_a_dangling_escape():
    with pytest.raises(ValueError):
        g.unescape_binary(b"ab}")


def test_target_xml_matches_gdbs_x86_64_features():
    root = ET.fromstring(g.target_xml().split(b"?>", 1)[1].split(b">", 1)[1])  # after <?xml?><!DOCTYPE>
    assert root.find("architecture").text == "i386:x86-64"
    features = {f.get("name"): [r.get("name") for r in f.findall("reg")] for f in root.findall("feature")}
    assert features["org.gnu.gdb.i386.core"] == [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *[f"r{i}" for i in range(8, 16)], "rip",
        "eflags", "cs", "ss", "ds", "es", "fs", "gs", *[f"st{i}" for i in range(8)],
        "fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]
    assert features["org.gnu.gdb.i386.sse"] == [f"xmm{i}" for i in range(16)] + ["mxcsr"]
    assert features["org.gnu.gdb.i386.segments"] == ["fs_base", "gs_base"]
    assert features["org.pvhboot.x86.sys"] == ["cr0", "cr2", "cr3", "cr4", "cr8", "efer"]
    assert g.G_SIZE == 600  # 17*8 + 4 + 6*4 + 8*10 + 8*4 + 16*16 + 4 + 2*8 + 6*8


def pvh_entry_state() -> g.RegisterState:
    regs, sregs, fpu = abi.kvm_regs(), abi.kvm_sregs(), abi.kvm_fpu()
    regs.rip, regs.rbx, regs.rflags = 0x100000, 0x6000, 0x2
    sregs.cs.selector, sregs.ds.selector, sregs.cr0 = 0x10, 0x18, 0x1
    sregs.fs.base = 0xFFFF888000000000
    fpu.fcw, fpu.mxcsr, fpu.ftwx = 0x37F, 0x1F80, 0b1
    fpu.xmm[3][0] = 0xAB
    return g.RegisterState(regs, sregs, fpu)


def test_register_file_is_64_bit_in_the_32_bit_phase():
    st = pvh_entry_state()
    data = st.all()
    assert len(data) == g.G_SIZE
    assert st.get(g.RIP) == (0x100000).to_bytes(8, "little")
    assert st.get(g.REG_INDEX["cs"]) == (0x10).to_bytes(4, "little")
    assert st.get(g.REG_INDEX["fs_base"]) == (0xFFFF888000000000).to_bytes(8, "little")
    assert st.get(g.REG_INDEX["ftag"]) == (0xFFFC).to_bytes(4, "little")  # st0 valid, 1-7 empty
    assert st.get(g.REG_INDEX["xmm3"])[0] == 0xAB
    assert st.get(g.REG_INDEX["cr0"]) == (1).to_bytes(8, "little")


def test_register_writes_and_refusals():
    st = pvh_entry_state()
    assert st.set(g.REG_INDEX["rax"], (0x1122334455667788).to_bytes(8, "little")) == "regs"
    assert st.regs.rax == 0x1122334455667788
    assert st.set(g.REG_INDEX["eflags"], (0x46).to_bytes(4, "little")) == "regs" and st.regs.rflags == 0x46
    assert st.set(g.REG_INDEX["cr4"], (0x20).to_bytes(8, "little")) == "sregs" and st.sregs.cr4 == 0x20
    assert st.set(g.REG_INDEX["mxcsr"], (0x1F00).to_bytes(4, "little")) == "fpu" and st.fpu.mxcsr == 0x1F00
    assert st.set(g.REG_INDEX["cs"], (0x10).to_bytes(4, "little")) == ""  # unchanged: fine
    with pytest.raises(ValueError, match="cs cannot be changed"):
        st.set(g.REG_INDEX["cs"], (0x08).to_bytes(4, "little"))
    with pytest.raises(ValueError, match="size"):
        st.set(g.REG_INDEX["rax"], b"\0" * 4)


def test_debug_register_encoding():
    slots = [g.DebugSlot(0x100000, 1, "hw", 0x100000), None, g.DebugSlot(0x112120, 4, "watch", 0x112120),
             g.DebugSlot(0x2000, 8, "awatch", 0x2000)]
    dr = g.debugregs(slots)
    assert dr[0] == 0x100000 and dr[2] == 0x112120 and dr[3] == 0x2000
    dr7 = dr[7]
    assert dr7 & 0x600 == 0x600  # GE|LE
    assert dr7 & 0b11 == 0b10 and dr7 >> 16 & 0xF == 0  # slot 0: G0, exec, len 1
    assert dr7 >> 2 & 0b11 == 0  # slot 1 free
    assert dr7 >> 24 & 0xF == 0b1101  # slot 2: write (01), 4 bytes (11)
    assert dr7 >> 28 & 0xF == 0b1011  # slot 3: read/write (11), 8 bytes (10)
    assert g.debugregs([None] * 4)[7] == 0


@pytest.mark.parametrize("addr,length,pieces", [
    (0x1000, 4, [(0x1000, 4)]), (0x1001, 4, [(0x1001, 1), (0x1002, 2), (0x1004, 1)]),
    (0x1000, 16, [(0x1000, 8), (0x1008, 8)]), (0x1003, 1, [(0x1003, 1)])])
def test_split_watch_gives_aligned_pieces(addr, length, pieces):
    assert g.split_watch(addr, length) == pieces


def test_gdb_address_and_wait_options():
    from pvhboot.vmm.config import VmConfig, check_gdb_address

    assert check_gdb_address("1234") == ("127.0.0.1", 1234)
    assert check_gdb_address(":1234") == ("127.0.0.1", 1234)
    assert check_gdb_address("0.0.0.0:1") == ("0.0.0.0", 1)
    assert check_gdb_address("[::1]:9") == ("::1", 9)
    for bad in ("", "host:", "x:70000", "nope", "1:-5", 1234):
        with pytest.raises(ConfigError):
            check_gdb_address(bad)
    assert VmConfig(gdb="0", gdb_wait=True).gdb == "0"
    with pytest.raises(ConfigError, match="--gdb-wait needs --gdb"):
        VmConfig(gdb_wait=True)


def test_thread_ids():
    assert g._parse_tid(b"-1") == -1 and g._parse_tid(b"0") == 0 and g._parse_tid(b"a") == 10
    assert g._parse_tid(b"p1.2") == 2


class _FakeKvm:
    def check_extension(self, cap):
        return 0


class _FakeVcpu:
    def __init__(self, index):
        self.index = index
        self.immediate_exit = False

    def set_immediate_exit(self, value):
        self.immediate_exit = value


class _FakeMachine:
    """What GdbStub reads of a Machine, without KVM: its dispatch of packets that need no vCPU."""

    def __init__(self, cpus=2, on_kvm_pvm=False):
        from pvhboot.vmm.runloop import VmControl

        self.ctl = VmControl()
        self.mem = None
        self.kvm = _FakeKvm()
        self.on_kvm_pvm = on_kvm_pvm
        self.vm = type("Vm", (), {"vcpus": [_FakeVcpu(i) for i in range(cpus)]})()


@pytest.fixture
def stub():
    s = g.GdbStub(_FakeMachine(), "127.0.0.1:0", log=io.StringIO())
    yield s
    s.close()


def test_queries(stub):
    sup = stub._dispatch(b"qSupported:multiprocess+;swbreak+;hwbreak+")
    assert b"PacketSize=4000" in sup and b"qXfer:features:read+" in sup and b"vContSupported+" in sup
    assert stub._dispatch(b"vCont?") == b"vCont;c;C;s;S;t"
    assert stub._dispatch(b"qfThreadInfo") == b"m1,2" and stub._dispatch(b"qsThreadInfo") == b"l"
    assert stub._dispatch(b"qThreadExtraInfo,2") == b"vCPU 1".hex().encode()
    assert stub._dispatch(b"T2") == b"OK" and stub._dispatch(b"T3") == b"E16"
    assert stub._dispatch(b"Hg2") == b"OK" and stub._dispatch(b"qC") == b"QC2"
    assert stub._dispatch(b"qNoSuchThing") == b"" and stub._dispatch(b"!") == b""
    assert stub._dispatch(b"mzz,4") == b"E16" and stub._dispatch(b"Z1,zz") == b"E16"


def test_target_xml_is_served_in_chunks(stub):
    doc, off = b"", 0
    while True:
        r = stub._dispatch(b"qXfer:features:read:target.xml:%x,%x" % (off, 200))
        assert r[:1] in (b"m", b"l")
        chunk = g.unescape_binary(r[1:])
        doc, off = doc + chunk, off + len(chunk)
        if r[:1] == b"l":
            break
    assert doc == g.target_xml()
    assert stub._dispatch(b"qXfer:features:read:other.xml:0,100") == b"E00"


def test_four_debug_registers_are_shared_then_an_error(stub):
    for i in range(3):
        assert stub._dispatch(b"Z1,%x,1" % (0x1000 + i)) == b"OK"
    assert stub._dispatch(b"Z2,2000,4") == b"OK"  # the fourth slot
    assert stub._dispatch(b"Z1,3000,1") == b"E1c"  # exhausted
    assert stub._dispatch(b"Z2,2001,4") == b"E1c"
    assert stub._dispatch(b"z2,2000,4") == b"OK"
    assert stub._dispatch(b"Z2,2001,4") == b"E1c"  # needs 3 aligned pieces, 1 free
    assert stub._dispatch(b"Z4,2000,2") == b"OK"
    assert [s.kind for s in stub.dregs] == ["hw", "hw", "hw", "awatch"]
    stub.remove_all()
    assert stub.dregs == [None] * 4


def test_kvm_pvm_watchpoints_are_soft_and_write_only():
    s = g.GdbStub(_FakeMachine(on_kvm_pvm=True), "127.0.0.1:0", log=io.StringIO())
    try:
        s._refresh_soft_watches = lambda: None  # needs a parked vCPU to translate
        assert not s.native_sw_bp and not s.data_breakpoints
        assert s._dispatch(b"Z2,112120,4") == b"OK" and s.dregs == [None] * 4 and len(s.soft_watches) == 1
        assert s._dispatch(b"Z3,112120,4") == b"E1c"  # a read cannot be seen by comparing memory
        assert s._dispatch(b"z2,112120,4") == b"OK" and s.soft_watches == []
        assert "single-stepping" in s.mechanisms()
    finally:
        s.close()


def test_kvm_exit_debug_is_decoded():
    import struct

    from pvhboot.kvm.exits import decode_exit

    run = bytearray(304)
    struct.pack_into("<I", run, abi.KVM_RUN_EXIT_REASON, abi.KvmExit.DEBUG)
    struct.pack_into("<I4xQQQ", run, abi.KVM_RUN_EXIT_UNION, 1, 0x101F30, 0xFFFF4FF1, 0x602)
    reason, rec = decode_exit(run)
    assert reason == abi.KvmExit.DEBUG
    assert (rec.exception, rec.pc, rec.dr6, rec.dr7) == (1, 0x101F30, 0xFFFF4FF1, 0x602)
    assert abi.KVM_SET_GUEST_DEBUG == 0x4048AE9B  # _IOW(KVMIO, 0x9b, struct kvm_guest_debug), 72 bytes


def test_bench_gdb_step_is_registered_and_its_script_times_stepi():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench import gdb_step, run

    assert "gdb_step" in run.BENCHES
    script = gdb_step.gdb_script(1234, 0x100000, 10, run_to_entry=True)
    assert "hbreak *0x100000" in script and "range(10)" in script and "target remote 127.0.0.1:1234" in script
    assert gdb_step.RATE.search("STEPI_PER_S=812.5").group(1) == "812.5"


def test_where_int3_cannot_be_used():
    assert "kvm_pvm" in g.int3_unusable_reason(True, "")
    assert "QEMU TCG" in g.int3_unusable_reason(False, "model name\t: QEMU TCG CPU version 2.5+\n")
    assert g.int3_unusable_reason(False, "model name\t: AMD EPYC 7B13\n") is None
