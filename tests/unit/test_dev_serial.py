"""devices/serial.py against the 8250 register semantics (drivers/tty/serial/8250/8250_port.c),
with a fake IRQ line and output captured in a BytesIO."""
from __future__ import annotations

import io
import threading

import pytest

from pvhboot.devices.irq import FakeIrqLine
from pvhboot.devices.serial import FIFO_SIZE, Serial16550

# register offsets
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7


class Uart:
    def __init__(self, **kw) -> None:
        self.irq = FakeIrqLine()
        self.out = io.BytesIO()
        self.dev = Serial16550(self.irq, self.out, **kw)

    def inb(self, reg: int) -> int:
        return self.dev.read(reg, 1)

    def outb(self, reg: int, value: int) -> None:
        self.dev.write(reg, 1, value)

    def output(self) -> bytes:
        self.dev.flush()
        return self.out.getvalue()


@pytest.fixture
def u() -> Uart:
    return Uart()


def linux_autoconfig(u: Uart) -> str:
    """The probe steps of autoconfig(), autoconfig_16550a() and size_fifo(), in the kernel's order."""
    # IER test: write 0 then 0x0F, read back the low nibble.
    saved_ier = u.inb(IER)
    u.outb(IER, 0)
    s2 = u.inb(IER) & 0x0F
    u.outb(IER, 0x0F)
    s3 = u.inb(IER) & 0x0F
    u.outb(IER, saved_ier)
    if s2 != 0 or s3 != 0x0F:
        return "no uart (IER test)"
    # Loopback test: MCR = LOOP|OUT2|RTS must read MSR status DCD|CTS.
    save_mcr = u.inb(MCR)
    u.outb(MCR, 0x10 | 0x08 | 0x02)
    status1 = u.inb(MSR) & 0xF0
    u.outb(MCR, save_mcr)
    if status1 != 0x90:
        return f"no uart (loopback test: MSR {status1:#x})"
    # FIFO detection.
    u.outb(LCR, 0xBF)
    u.outb(2, 0)  # "EFR" = FCR on a 16550A
    u.outb(LCR, 0)
    u.outb(FCR, 0x01)
    kind = u.inb(IIR) >> 6
    if kind != 3:
        return {0: "8250/16450", 1: "unknown", 2: "16550"}[kind]
    # autoconfig_16550a: EFR probes must not read 0 (IIR is there on a 16550A).
    u.outb(LCR, 0x80)
    if u.inb(2) == 0:
        return "ST16C650V1"
    u.outb(LCR, 0xBF)
    if u.inb(2) == 0:
        return "16650"
    # IER bit 6 (UUE) must not stick, or it is an XScale.
    u.outb(LCR, 0)
    iersave = u.inb(IER)
    u.outb(IER, iersave & ~0x40)
    if not u.inb(IER) & 0x40:
        u.outb(IER, iersave | 0x40)
        if u.inb(IER) & 0x40:
            return "XScale"
    u.outb(IER, iersave)
    # size_fifo(): loopback, divisor 1, 256 bytes out, count what comes back.
    u.outb(LCR, 0)
    u.outb(FCR, 0x07)
    old_mcr = u.inb(MCR)
    u.outb(MCR, 0x10)
    u.outb(LCR, 0x80)
    u.outb(DLL, 1)
    u.outb(DLM, 0)
    u.outb(LCR, 0x03)
    for i in range(256):
        u.outb(THR, i)
    count = 0
    while u.inb(LSR) & 0x01 and count < 256:
        u.inb(RBR)
        count += 1
    u.outb(FCR, 0x01)
    u.outb(MCR, old_mcr)
    if count == 64:
        return "U6_16550A"
    return f"16550A fifo={count}"


def test_linux_autoconfig_finds_a_16550a_with_16_byte_fifo(u):
    assert linux_autoconfig(u) == "16550A fifo=16"
    assert u.output() == b""  # loopback bytes never reach the host
    assert u.irq.redundant_calls == 0


def test_scratch_register_keeps_bytes(u):
    for v in (0xA5, 0x5A, 0x00, 0xFF):
        u.outb(SCR, v)
        assert u.inb(SCR) == v


def test_divisor_latch_read_back_and_does_not_touch_ier_or_output(u):
    u.outb(IER, 0x05)
    u.outb(LCR, 0x83)  # DLAB + 8N1
    u.outb(DLL, 0x01)
    u.outb(DLM, 0x02)
    assert (u.inb(DLL), u.inb(DLM)) == (0x01, 0x02)
    u.outb(LCR, 0x03)
    assert u.inb(IER) == 0x05
    u.outb(LCR, 0x83)
    assert (u.inb(DLL), u.inb(DLM)) == (0x01, 0x02)
    assert u.inb(LCR) == 0x83
    assert u.output() == b""


def test_default_divisor_is_9600_baud(u):
    u.outb(LCR, 0x80)
    assert (u.inb(DLL), u.inb(DLM)) == (12, 0)


def test_ier_keeps_low_nibble_only(u):
    u.outb(IER, 0xFF)
    assert u.inb(IER) == 0x0F


def test_iir_fifo_bits_follow_fcr(u):
    assert u.inb(IIR) == 0x01
    u.outb(FCR, 0x01)
    assert u.inb(IIR) == 0xC1
    u.outb(FCR, 0x00)
    assert u.inb(IIR) == 0x01


def test_thre_interrupt_when_etbei_enabled_and_cleared_by_iir_read(u):
    u.outb(IER, 0x02)
    assert u.irq.level is True
    assert u.inb(IIR) == 0x02  # THRE, FIFO off
    assert u.irq.level is False
    assert u.inb(IIR) == 0x01  # cleared by the read that reported it
    assert u.irq.history == [True, False]


def test_linux_thre_retest_reasserts(u):
    """serial8250_do_startup(): IER=THRI, read IIR, IER=0, IER=THRI, read IIR -> must reassert."""
    u.outb(FCR, 0x01)
    u.outb(IER, 0x02)
    iir1 = u.inb(IIR)
    u.outb(IER, 0)
    u.outb(IER, 0x02)
    iir2 = u.inb(IIR)
    u.outb(IER, 0)
    assert (iir1, iir2) == (0xC2, 0xC2)
    assert u.irq.history == [True, False, True, False]


def test_thre_after_thr_write(u):
    u.outb(IER, 0x02)
    assert u.inb(IIR) == 0x02
    u.irq.clear_history()
    u.outb(THR, ord("a"))
    assert u.irq.history == [True]
    u.outb(THR, ord("b"))  # still pending: no redundant edge
    assert u.irq.history == [True]
    assert u.inb(IIR) == 0x02
    assert u.irq.level is False
    assert u.output() == b"ab"


def test_no_interrupt_without_ier(u):
    u.outb(THR, ord("x"))
    u.dev.feed_input(b"y")
    assert u.irq.history == []
    assert u.inb(IIR) == 0x01
    assert u.inb(LSR) == 0x61  # DR | THRE | TEMT


def test_lsr_idle_transmitter(u):
    assert u.inb(LSR) == 0x60


def test_rx_data_rda_interrupt_and_dr(u):
    u.outb(IER, 0x01)
    u.dev.feed_input(b"hi")
    assert u.irq.history == [True]
    assert u.inb(LSR) & 0x01
    assert u.inb(IIR) == 0x04
    assert u.inb(RBR) == ord("h")
    assert u.irq.level is True
    assert u.inb(RBR) == ord("i")
    assert u.irq.history == [True, False]
    assert u.inb(LSR) & 0x01 == 0
    assert u.inb(IIR) == 0x01


def test_fifo_trigger_level_gives_timeout_then_rda(u):
    u.outb(FCR, 0x01 | 0x80)  # FIFO on, trigger 8
    u.outb(IER, 0x01)
    u.dev.feed_input(b"abc")
    assert u.inb(IIR) == 0xCC  # character timeout below the trigger level
    u.dev.feed_input(b"defgh")
    assert u.inb(IIR) == 0xC4  # 8 bytes: at the trigger level


def test_host_input_is_not_lost_beyond_the_fifo(u):
    u.outb(FCR, 0x01)
    data = bytes(range(256)) * 4
    u.dev.feed_input(data)
    got = bytearray()
    while u.inb(LSR) & 0x01:
        got.append(u.inb(RBR))
    assert bytes(got) == data
    assert u.inb(LSR) & 0x02 == 0  # no overrun for host input


def test_loopback_overrun_sets_oe_and_rls_interrupt(u):
    u.outb(FCR, 0x07)
    u.outb(MCR, 0x10)
    u.outb(IER, 0x04)  # ELSI only
    for i in range(FIFO_SIZE):
        u.outb(THR, i)
    assert u.irq.level is False
    u.outb(THR, 0xEE)  # 17th byte: lost
    assert u.irq.level is True
    assert u.inb(IIR) == 0xC6
    lsr = u.inb(LSR)
    assert lsr & 0x03 == 0x03  # DR | OE
    assert u.inb(LSR) & 0x02 == 0  # OE cleared by the read
    assert u.irq.level is False
    assert bytes(u.inb(RBR) for _ in range(FIFO_SIZE)) == bytes(range(FIFO_SIZE))


def test_loopback_keeps_host_input_waiting(u):
    u.outb(MCR, 0x10)
    u.dev.feed_input(b"k")
    assert u.inb(LSR) & 0x01 == 0
    u.outb(MCR, 0x0B)
    assert u.inb(LSR) & 0x01
    assert u.inb(RBR) == ord("k")


def test_msr_connected_and_loopback_mirror(u):
    assert u.inb(MSR) & 0xF0 == 0xB0  # DCD | DSR | CTS
    u.outb(MCR, 0x10 | 0x01)  # loop + DTR -> DSR only
    assert u.inb(MSR) == 0x20 | 0x01 | 0x08  # DSR, and deltas: CTS and DCD dropped
    assert u.inb(MSR) == 0x20  # deltas cleared by the read
    u.outb(MCR, 0x10 | 0x04)  # OUT1 -> RI
    assert u.inb(MSR) & 0xF0 == 0x40
    u.outb(MCR, 0x10)
    assert u.inb(MSR) & 0x04  # trailing edge of RI


def test_mcr_reads_back_five_bits(u):
    u.outb(MCR, 0xFF)
    assert u.inb(MCR) == 0x1F


def test_interrupt_priority_order(u):
    u.outb(FCR, 0x01)
    u.outb(IER, 0x0F)
    # THRE pending at once (ETBEI enabled); create MSR, RX and line-status sources too.
    u.outb(MCR, 0x10 | 0x02)  # loopback: CTS change -> modem status delta
    for i in range(FIFO_SIZE + 1):
        u.outb(THR, i)  # fills the FIFO and overruns
    order = []
    order.append(u.inb(IIR) & 0x0F)  # RLS
    u.inb(LSR)
    order.append(u.inb(IIR) & 0x0F)  # RX data (16 >= trigger 1)
    for _ in range(FIFO_SIZE):
        u.inb(RBR)
    order.append(u.inb(IIR) & 0x0F)  # THRE, cleared by this read
    order.append(u.inb(IIR) & 0x0F)  # modem status
    u.inb(MSR)
    order.append(u.inb(IIR) & 0x0F)
    assert order == [0x06, 0x04, 0x02, 0x00, 0x01]
    assert u.irq.level is False
    assert u.irq.redundant_calls == 0


def test_rx_outranks_thre(u):
    u.outb(IER, 0x03)
    u.dev.feed_input(b"z")
    assert u.inb(IIR) == 0x04
    u.inb(RBR)
    assert u.inb(IIR) == 0x02


def test_irq_level_transitions_exactly(u):
    u.outb(IER, 0x01)
    u.dev.feed_input(b"a")
    u.dev.feed_input(b"b")  # already high: no call
    u.inb(RBR)
    u.inb(RBR)
    u.outb(IER, 0x03)
    u.inb(IIR)
    u.outb(IER, 0x00)
    assert u.irq.history == [True, False, True, False]
    assert u.irq.redundant_calls == 0


def test_ier_disable_lowers_the_line(u):
    u.outb(IER, 0x02)
    assert u.irq.level
    u.outb(IER, 0x00)
    assert u.irq.history == [True, False]


def test_output_buffered_until_newline():
    u = Uart()
    u.outb(THR, ord("a"))
    u.outb(THR, ord("b"))
    assert u.out.getvalue() == b""
    u.outb(THR, ord("\n"))
    assert u.out.getvalue() == b"ab\n"


def test_repeated_lsr_poll_flushes_a_prompt():
    u = Uart()
    for c in b"# ":
        u.inb(LSR)
        u.outb(THR, c)
    assert u.out.getvalue() == b""
    u.inb(LSR)
    u.inb(LSR)  # polling without transmitting: the guest waits (for input)
    assert u.out.getvalue() == b"# "


def test_output_to_callable():
    chunks: list[bytes] = []
    dev = Serial16550(FakeIrqLine(), chunks.append)
    for c in b"x\ny":
        dev.write(0, 1, c)
    dev.flush()
    assert chunks == [b"x\n", b"y"]


def test_recent_lines_ring():
    u = Uart(history_lines=40)
    for i in range(100):
        for c in f"line {i}\r\n".encode():
            u.outb(THR, c)
    for c in b"tail":
        u.outb(THR, c)
    lines = u.dev.recent_lines()
    assert len(lines) == 41
    assert lines[0] == "line 60"
    assert lines[-2] == "line 99"
    assert lines[-1] == "tail"
    assert u.dev.recent_lines(3) == ["line 98", "line 99", "tail"]
    assert u.out.getvalue().endswith(b"line 99\r\ntail")


def test_line_observer_sees_every_completed_line_once_in_order():
    seen: list[bytes] = []
    u = Uart(history_lines=5, line_observer=seen.extend)
    for i in range(30):
        for c in f"line {i}\r\n".encode():
            u.outb(THR, c)
    for c in b"unfinished":
        u.outb(THR, c)
    u.dev.flush()
    assert seen == [f"line {i}\r".encode() for i in range(30)]  # the unfinished line is not a line yet


def test_feed_input_from_another_thread():
    u = Uart()
    u.outb(FCR, 0x01)
    u.outb(IER, 0x01)
    payload = bytes(i % 251 for i in range(20000))
    t = threading.Thread(target=lambda: [u.dev.feed_input(payload[i:i + 100]) for i in range(0, len(payload), 100)])
    t.start()
    got = bytearray()
    while len(got) < len(payload):
        if u.inb(LSR) & 0x01:
            got.append(u.inb(RBR))
    t.join()
    assert bytes(got) == payload
    assert u.irq.redundant_calls == 0


def test_mmio_register_stride():
    irq = FakeIrqLine()
    dev = Serial16550(irq, io.BytesIO(), reg_shift=2)
    dev.write(7 * 4, 4, 0x42)
    assert dev.read(7 * 4, 4) == 0x42
    assert dev.read(5 * 4, 4) == 0x60
