"""The i8042 keyboard controller, only as far as a guest needs it to reboot and to probe quietly.

Ports: data 0x60 (offset 0) and command/status 0x64 (offset 4); register the device at 0x60 with
:data:`PIO_LENGTH` 5.  (Port 0x61, inside that range, is the PC speaker gate, which KVM's in-kernel
PIT decodes before it reaches user space.)

- Command 0xFE (pulse the output port's reset line) -> ``VmEvent(RESET, source="i8042")``: what
  Linux's ``reboot=k`` does (arch/x86/kernel/reboot.c, after kb_wait() sees the input buffer empty).
  Writing the output port (0xD1) with bit 0 clear resets too, as on a PC.
- Status never shows the input buffer full, so kb_wait() returns at once; the output buffer is
  empty unless a command answered, so i8042_flush() does not find a "stuck" controller.
- Commands with an answer, so drivers/input/serio/i8042.c's probe gets replies instead of waiting
  out its timeouts: 0x20 read the command byte, 0x60 write it, 0xAA self-test -> 0x55, 0xAB/0xA9
  interface tests -> 0x00, 0xD0 read the output port, 0xD1 write it; the rest are accepted silently.
No keyboard and no interrupts (IRQ 1/12 are never raised).
"""
from __future__ import annotations

from .events import EventSink, VmEvent, VmEventKind

PIO_LENGTH = 5
DATA_OFFSET = 0  # port 0x60
COMMAND_OFFSET = 4  # port 0x64

# Status register bits (i8042.h)
STR_OBF = 0x01  # output buffer full: a byte waits on port 0x60
STR_IBF = 0x02  # input buffer full: never, commands are taken at once
STR_SYSFLAG = 0x04  # set after a successful power-on self-test
STR_CMDDAT = 0x08  # last write was to the command port
# Controller commands
CMD_READ_CTR = 0x20
CMD_WRITE_CTR = 0x60
CMD_AUX_TEST = 0xA9
CMD_SELF_TEST = 0xAA
CMD_KBD_TEST = 0xAB
CMD_READ_OUTPUT_PORT = 0xD0
CMD_WRITE_OUTPUT_PORT = 0xD1
CMD_PULSE_RESET = 0xFE
SELF_TEST_OK = 0x55
# The command byte after BIOS POST: keyboard interrupt enabled, system flag, translation on.
_DEFAULT_CTR = 0x45
# Output port: bit 0 = system reset line (active low), bit 1 = A20 gate.
_DEFAULT_OUTPUT_PORT = 0x03


class I8042:
    PIO_LENGTH = PIO_LENGTH

    def __init__(self, events: EventSink) -> None:
        self._events = events
        self._status = STR_SYSFLAG
        self._ctr = _DEFAULT_CTR
        self._output_port = _DEFAULT_OUTPUT_PORT
        self._out_byte = 0
        self._pending_write: int | None = None  # command waiting for its data byte

    def _answer(self, value: int) -> None:
        self._out_byte = value & 0xFF
        self._status |= STR_OBF

    def read(self, offset: int, size: int) -> int:
        if offset == COMMAND_OFFSET:
            return self._status
        if offset == DATA_OFFSET:
            self._status &= ~STR_OBF
            return self._out_byte
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == COMMAND_OFFSET:
            self._status |= STR_CMDDAT
            self._pending_write = None
            if value == CMD_PULSE_RESET:
                self._events(VmEvent(VmEventKind.RESET, value=value, source="i8042"))
            elif value == CMD_READ_CTR:
                self._answer(self._ctr)
            elif value in (CMD_WRITE_CTR, CMD_WRITE_OUTPUT_PORT):
                self._pending_write = value
            elif value == CMD_SELF_TEST:
                self._status |= STR_SYSFLAG
                self._answer(SELF_TEST_OK)
            elif value in (CMD_KBD_TEST, CMD_AUX_TEST):
                self._answer(0x00)  # interface test: no error
            elif value == CMD_READ_OUTPUT_PORT:
                self._answer(self._output_port)
        elif offset == DATA_OFFSET:
            self._status &= ~STR_CMDDAT
            pending, self._pending_write = self._pending_write, None
            if pending == CMD_WRITE_CTR:
                self._ctr = value
            elif pending == CMD_WRITE_OUTPUT_PORT:
                self._output_port = value
                if not value & 0x01:  # reset line pulled low
                    self._events(VmEvent(VmEventKind.RESET, value=value, source="i8042"))
            # Bytes for the keyboard itself are dropped: there is no keyboard.
