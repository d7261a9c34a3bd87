"""kvm tier: COM1's THR as a coalesced PIO zone (the default) keeps the 16550's semantics.

KVM queues THR writes (port 0x3f8) in the coalesced ring instead of exiting; the run loop delivers
them before handling any exit, and the VMM's 10 ms tick delivers them when no exit comes.  Each
guest here is 16-bit real-mode code at 0x1000 (GNU as, `.code16`; assembly beside the bytes), and
each test also checks that bytes really went through the ring (``coalesced_writes.delivered``).
"""
from __future__ import annotations

import guests  # tests/kvm/guests.py
import pytest

from pvhboot.abi import kvm as abi
from pvhboot.kvm import Kvm
from pvhboot.memory import GuestMemory
from pvhboot.vmm import Machine

pytestmark = pytest.mark.kvm

# THR 'A'; in LSR; MCR=0x1b (loopback on); THR 'B' (-> receive FIFO); in RBR -> bl; MCR=0x0b
# (loopback off); THR 'C'; THR bl; THR '\n'; then "ordered\n" byte by byte, polling LSR.THRE before
# each; out 0xf4 <- 7.  In order, the console reads "ACB\nordered\n"; a THR byte delivered after the
# exit that followed it would land on the wrong side of the loopback switch (A lost, B read as 0).
ORDER_GUEST = bytes.fromhex(
    "baf803b041eebafd03ecbafc03b01beebaf803b042eeec88c3bafc03b00beebaf803b043ee88d8eeb00aeebe4610"
    "bafd03eca82074f8ac84c07406baf803eeebedb007e6f4f46f7264657265640a00")

# THR 'x' (DLAB=0); LCR=0x83 (DLAB=1); 0x3f8 <- 0x34 (DLL); 0x3f9 <- 0x12 (DLM); 0x3f8 <- 0x56 (DLL,
# queued, then at once:) LCR=0x03 (DLAB=0); THR 'y'; THR '\n'; LCR=0x83; in 0x3f8 (DLL) -> bl;
# LCR=0x03; out 0xf4 <- bl.  Exit code 0x56 and console "xy\n" when every 0x3f8 write is decoded
# with the DLAB state it was written under.
DLAB_GUEST = bytes.fromhex(
    "baf803b078eebafb03b083eebaf803b034eebaf903b012eebaf803b056eebafb03b003eebaf803b079eeb00aeebafb"
    "03b083eebaf803ec88c3bafb03b003ee88d8e6f4f4")

# Interrupt-driven transmit as Linux's 8250 does it: IVT[12] = isr; 8259 PIC ICW1-4 (vector base 8),
# only IRQ 4 unmasked; IER = ETBEI; loop { sti; hlt; cli } until done; out 0xf4 <- 7.
# isr: in IIR; up to 4 bytes of the message to THR (coalesced: no exit); at the NUL: done = 1,
# IER = 0; EOI (out 0x20 <- 0x20, in-kernel PIC: no exit); iret.  After each burst the vCPU halts with
# nothing left to exit on: only the VMM's tick delivers the bytes and raises the next THRE interrupt.
IRQ_MSG = b"interrupt-driven transmit works\n"
IRQ_GUEST = bytes.fromhex(
    "fac70630003e10c70632000000b011e620b008e621b004e621b001e621b0efe621be6910c606681000baf903b002"
    "eefbf4fa803e68100175f6b007e6f4f4505152bafa03ecbaf803b90400ac84c07405eee2f8eb0bc606681001baf9"
    "0330c0eeb020e6205a5958cf00") + IRQ_MSG + b"\0"


@pytest.fixture(autouse=True)
def _need_coalesced_pio():
    with Kvm() as kvm:
        if not kvm.check_extension(abi.KvmCap.COALESCED_PIO):
            pytest.skip("this KVM has no KVM_CAP_COALESCED_PIO")


def _run(code: bytes, **kw):
    with GuestMemory([(0, 1 << 20)]) as mem:
        mem.write(guests.LOAD, code)
        with Machine(mem, guests.real_mode(), console=None, timeout=20, **kw) as m:
            r = m.run()
            return m, r


def test_order_preserved_across_coalesced_thr_writes_lsr_polls_and_loopback():
    m, r = _run(ORDER_GUEST)
    assert m.coalesced_uart is True
    assert (r.reason, r.exit_code) == ("debug_exit", 7), r.crash_report
    assert r.console == b"ACB\nordered\n"
    assert m.coalesced_writes.delivered == 13  # A B C B \n + "ordered\n": all through the ring


def test_divisor_latch_writes_decoded_with_their_dlab_state():
    m, r = _run(DLAB_GUEST)
    assert (r.reason, r.exit_code) == ("debug_exit", 0x56), r.crash_report
    assert r.console == b"xy\n"
    assert m.serial._dlm == 0x12
    assert m.coalesced_writes.delivered == 5  # x, DLL 0x34, DLL 0x56, y, \n: every 0x3f8 write


def test_interrupt_driven_writer_that_halts_completes():
    m, r = _run(IRQ_GUEST)
    assert (r.reason, r.exit_code) == ("debug_exit", 7), r.crash_report
    assert r.console == IRQ_MSG
    assert m.coalesced_writes.delivered == len(IRQ_MSG)


def test_off_switch_gives_the_same_output_through_full_exits():
    for code, want in ((ORDER_GUEST, b"ACB\nordered\n"), (IRQ_GUEST, IRQ_MSG)):
        m, r = _run(code, coalesced_uart=False)
        assert m.coalesced_uart is False and m.coalesced_writes is None
        assert r.reason == "debug_exit" and r.console == want
