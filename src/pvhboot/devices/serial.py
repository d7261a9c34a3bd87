"""A 16550A UART as Linux's 8250 driver sees it (drivers/tty/serial/8250/8250_port.c).

Register map (offset from the base, 0x3F8 for COM1; DLAB is LCR bit 7):

    0  RBR (read) / THR (write)        DLL when DLAB=1
    1  IER (bits 0-3 only)              DLM when DLAB=1
    2  IIR (read) / FCR (write)
    3  LCR        4  MCR (bits 0-4)     5  LSR        6  MSR        7  SCR

What autoconfig() checks and this model answers (the data-sheet behaviour of the NS16550A):
- IER keeps only bits 0-3 (the driver writes 0 and 0x0F and reads them back; bit 6 must not stick,
  or it would be taken for an XScale UART);
- loopback (MCR bit 4): MSR's top nibble mirrors MCR (DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD), so
  MCR=0x1A reads back MSR & 0xF0 == 0x90, and transmitted bytes come back on the receive side;
- FCR bit 0 turns the FIFOs on and IIR then reads with bits 7:6 = 11, which makes it a 16550A;
- the receive FIFO holds 16 bytes: in loopback the 17th byte is lost and LSR.OE set, which is how
  size_fifo() tells a 16550A (16) from a U6_16550A (64);
- SCR keeps any byte written.

Interrupts (IIR identification, highest priority first): receiver line status 0x6 (overrun, when
IER.ELSI), received data 0x4 (FIFO at its trigger level, IER.ERBFI), character timeout 0xC (data
below the trigger level; reported at once since time is not modelled), transmitter holding register
empty 0x2 (IER.ETBEI), modem status 0x0 (IER.EDSSI).  THRE becomes pending when ETBEI goes 0->1
while THR is empty (Linux's THRE test in serial8250_do_startup relies on it) and after every THR
write (transmission is instantaneous); it is cleared by an IIR read that reports it or by a THR
write.  The IRQ line is level-driven and set only when the level changes.

Host input (:meth:`Serial16550.feed_input`, from any thread) waits in an unbounded backlog and
enters the 16-byte FIFO as the guest drains it, so pasted text is never lost while the FIFO the
guest sees behaves like the real one.

Output is buffered and written on a newline, at 4 KiB, when the guest writes IER (interrupt-driven
transmit starting/stopping), when it polls LSR twice without transmitting (waiting for input, e.g.
after a prompt), and on :meth:`Serial16550.flush`.  The last lines are kept for crash reports.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import BinaryIO

from .irq import IrqLine

#: Bytes of I/O space the UART decodes (registers 0-7).
PIO_LENGTH = 8
#: Receive FIFO depth of a 16550A.
FIFO_SIZE = 16

# IER bits
IER_ERBFI = 0x01  # received data available
IER_ETBEI = 0x02  # transmitter holding register empty
IER_ELSI = 0x04  # receiver line status
IER_EDSSI = 0x08  # modem status
# IIR interrupt identifications
IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_RX_TIMEOUT = 0x0C
IIR_FIFO_ENABLED = 0xC0
# FCR bits
FCR_ENABLE_FIFO = 0x01
FCR_CLEAR_RCVR = 0x02
FCR_CLEAR_XMIT = 0x04
# LCR
LCR_DLAB = 0x80
# MCR bits
MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
# LSR bits
LSR_DR = 0x01
LSR_OE = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40
# MSR bits
MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80

# FCR bits 7:6 -> receive trigger level (16550A data sheet)
_RX_TRIGGER = (1, 4, 8, 14)
# Out of loopback the "cable" is connected: carrier, data set ready and clear to send asserted.
_MSR_CONNECTED = MSR_DCD | MSR_DSR | MSR_CTS
# Divisor 12 = 9600 baud from the 1.8432 MHz clock: what QEMU and Firecracker reset to.
_DEFAULT_DIVISOR = 12
_FLUSH_THRESHOLD = 4096
_MAX_PARTIAL_LINE = 4096


def _output_function(output: BinaryIO | Callable[[bytes], None] | None) -> Callable[[bytes], None]:
    if output is None:
        return lambda data: None
    write = getattr(output, "write", None)
    if write is None:
        return output  # type: ignore[return-value]
    flush = getattr(output, "flush", None)

    def emit(data: bytes) -> None:
        write(data)
        if flush is not None:
            flush()

    return emit


class Serial16550:
    """COM-port UART.  ``output`` is a binary stream (``sys.stdout.buffer``, a file, BytesIO) or a
    callable taking bytes; ``irq`` is the line for its ISA IRQ (4 for COM1).  ``reg_shift`` spaces
    the registers ``1 << reg_shift`` bytes apart for an MMIO-mapped UART (0 for port I/O)."""

    PIO_LENGTH = PIO_LENGTH

    def __init__(
        self,
        irq: IrqLine,
        output: BinaryIO | Callable[[bytes], None] | None = None,
        *,
        history_lines: int = 100,
        reg_shift: int = 0,
        line_observer: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self._irq = irq
        self._emit = _output_function(output)
        self._shift = reg_shift
        self._lock = threading.Lock()
        self._irq_level = False
        # registers
        self._ier = 0
        self._lcr = 0x03  # 8N1
        self._mcr = MCR_OUT2  # as QEMU resets it
        self._scr = 0
        self._dll = _DEFAULT_DIVISOR & 0xFF
        self._dlm = _DEFAULT_DIVISOR >> 8
        self._fifo_enabled = False
        self._rx_trigger = 1
        self._overrun = False
        self._msr = _MSR_CONNECTED
        self._msr_delta = 0
        self._thr_pending = False  # THRE interrupt pending (THR is always empty: TX is instantaneous)
        self._lsr_polled = False  # last access was an LSR read with no THR write since
        # receive side
        self._fifo = bytearray()  # what the guest can read (<= FIFO_SIZE, or 1 with the FIFO off)
        self._backlog = bytearray()  # host input waiting for room in the FIFO
        self._last_rx = 0
        # transmit side
        self._out = bytearray()
        self._lines: deque[bytes] = deque(maxlen=history_lines)
        # Called (under the device lock, so cheap) with each batch of completed lines, before the
        # history forgets them: the VMM keeps the first sign of a dying guest (vmm/crash.FirstTrouble).
        self._line_observer = line_observer
        self._partial = bytearray()
        self._broken_pipe = False
        self.bytes_out = 0  # bytes the guest transmitted (loopback excluded)

    # ----------------------------------------------------------------- bus device interface
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            reg = offset >> self._shift
            if reg == 5:  # LSR: the register a polling guest reads most
                value = LSR_THRE | LSR_TEMT
                if self._fifo:
                    value |= LSR_DR
                if self._overrun:
                    value |= LSR_OE
                    self._overrun = False  # OE clears on LSR read
                    self._update_irq()
                if self._lsr_polled and self._out:
                    self._flush_locked()
                self._lsr_polled = True
                return value
            self._lsr_polled = False
            if reg == 0:
                if self._lcr & LCR_DLAB:
                    return self._dll
                return self._receive()
            if reg == 1:
                return self._dlm if self._lcr & LCR_DLAB else self._ier
            if reg == 2:
                ident = self._interrupt_id()
                if ident == IIR_THRI:
                    self._thr_pending = False  # reading IIR clears a THRE interrupt it reports
                    self._update_irq()
                return ident | (IIR_FIFO_ENABLED if self._fifo_enabled else 0)
            if reg == 3:
                return self._lcr
            if reg == 4:
                return self._mcr
            if reg == 6:
                value = self._msr | self._msr_delta
                if self._msr_delta:
                    self._msr_delta = 0
                    self._update_irq()
                return value
            if reg == 7:
                return self._scr
            return 0xFF  # beyond register 7 (only with a larger registration)

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            reg = offset >> self._shift
            if reg == 0 and not self._lcr & LCR_DLAB:
                self._transmit(value)
                return
            self._lsr_polled = False
            if reg == 0:
                self._dll = value
            elif reg == 1:
                if self._lcr & LCR_DLAB:
                    self._dlm = value
                else:
                    self._write_ier(value)
            elif reg == 2:
                self._write_fcr(value)
            elif reg == 3:
                self._lcr = value
            elif reg == 4:
                self._write_mcr(value)
            elif reg == 7:
                self._scr = value
            # LSR and MSR writes (factory test on some parts) are ignored, as QEMU does.

    # ----------------------------------------------------------------- host side
    def feed_input(self, data: bytes) -> None:
        """Queue host bytes for the guest to receive (thread-safe)."""
        if not data:
            return
        with self._lock:
            self._backlog += data
            self._refill()
            self._update_irq()

    def flush(self) -> None:
        """Write any buffered guest output now."""
        with self._lock:
            if self._out:
                self._flush_locked()

    def recent_lines(self, count: int | None = None) -> list[str]:
        """The last console lines (output flushed first), oldest first; the unfinished line last."""
        with self._lock:
            if self._out:
                self._flush_locked()
            lines = list(self._lines)
            if self._partial:
                lines.append(bytes(self._partial))
        text = [line.decode("utf-8", "replace").rstrip("\r") for line in lines]
        return text if count is None else text[-count:]

    @property
    def pending_input(self) -> int:
        """Host bytes not yet read by the guest."""
        with self._lock:
            return len(self._fifo) + len(self._backlog)

    @property
    def irq_level(self) -> bool:
        return self._irq_level

    # ----------------------------------------------------------------- internals (lock held)
    def _interrupt_id(self) -> int:
        ier = self._ier
        if ier & IER_ELSI and self._overrun:
            return IIR_RLSI
        if ier & IER_ERBFI and self._fifo:
            if self._fifo_enabled and len(self._fifo) < self._rx_trigger:
                return IIR_RX_TIMEOUT
            return IIR_RDI
        if ier & IER_ETBEI and self._thr_pending:
            return IIR_THRI
        if ier & IER_EDSSI and self._msr_delta:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        level = self._interrupt_id() != IIR_NO_INT
        if level != self._irq_level:
            self._irq_level = level
            self._irq.set_level(level)

    def _transmit(self, value: int) -> None:
        self._lsr_polled = False
        if self._mcr & MCR_LOOP:
            self._enqueue_rx(value)  # loopback: the shift register feeds the receiver
        else:
            out = self._out
            out.append(value)
            # 0x0A: end of a line, the natural unit for a console reader
            if value == 0x0A or len(out) >= _FLUSH_THRESHOLD:
                self._flush_locked()
        # THR was emptied by this write (clearing a THRE interrupt) and is empty again at once.
        self._thr_pending = True
        if self._ier:
            self._update_irq()

    def _write_ier(self, value: int) -> None:
        value &= 0x0F  # bits 4-7 read as zero on a 16550A
        if value & IER_ETBEI and not self._ier & IER_ETBEI:
            self._thr_pending = True  # THR is empty: enabling ETBEI raises THRE at once
        self._ier = value
        if self._out:
            self._flush_locked()  # interrupt-driven transmit starting or stopping
        self._update_irq()

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE_FIFO)
        if enable != self._fifo_enabled:
            self._fifo.clear()  # changing FCR bit 0 resets both FIFOs
            self._fifo_enabled = enable
        if enable and value & FCR_CLEAR_RCVR:
            self._fifo.clear()
        # FCR_CLEAR_XMIT: the transmit FIFO is always empty here (transmission is instantaneous).
        self._rx_trigger = _RX_TRIGGER[value >> 6]
        self._refill()
        self._update_irq()

    def _write_mcr(self, value: int) -> None:
        was_loop = self._mcr & MCR_LOOP
        self._mcr = value & 0x1F
        if self._mcr & MCR_LOOP:
            m = self._mcr
            # DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD
            status = ((m & MCR_DTR) << 5) | ((m & MCR_RTS) << 3) | ((m & MCR_OUT1) << 4) | ((m & MCR_OUT2) << 4)
        else:
            status = _MSR_CONNECTED
        changed = status ^ self._msr
        delta = (changed >> 4) & (MSR_DCTS | MSR_DDSR | MSR_DDCD)
        if self._msr & MSR_RI and not status & MSR_RI:
            delta |= MSR_TERI  # trailing edge of ring indicator
        self._msr = status
        self._msr_delta |= delta
        if was_loop and not self._mcr & MCR_LOOP:
            self._refill()  # the host side is connected again
        self._update_irq()

    def _capacity(self) -> int:
        return FIFO_SIZE if self._fifo_enabled else 1

    def _enqueue_rx(self, value: int) -> None:
        if len(self._fifo) >= self._capacity():
            self._overrun = True  # the byte is lost
        else:
            self._fifo.append(value)

    def _refill(self) -> None:
        if self._backlog and not self._mcr & MCR_LOOP:
            room = self._capacity() - len(self._fifo)
            if room > 0:
                self._fifo += self._backlog[:room]
                del self._backlog[:room]

    def _receive(self) -> int:
        if self._fifo:
            self._last_rx = self._fifo[0]
            del self._fifo[0]
            self._refill()
            self._update_irq()
        return self._last_rx  # an empty RBR reads the last byte again, as hardware does

    def _flush_locked(self) -> None:
        data = bytes(self._out)
        self._out.clear()
        self.bytes_out += len(data)
        self._record_lines(data)
        if self._broken_pipe:
            return
        try:
            self._emit(data)
        except BrokenPipeError:
            self._broken_pipe = True  # the reader went away (`pvhboot boot | head`): keep the guest running

    def _record_lines(self, data: bytes) -> None:
        partial = self._partial
        if b"\n" not in data:
            partial += data
        else:
            pieces = data.split(b"\n")
            pieces[0] = bytes(partial) + pieces[0]
            partial.clear()
            partial += pieces.pop()
            self._lines.extend(pieces)
            if self._line_observer is not None:
                self._line_observer(pieces)
        if len(partial) > _MAX_PARTIAL_LINE:
            self._lines.append(bytes(partial))
            if self._line_observer is not None:
                self._line_observer([bytes(partial)])
            partial.clear()
