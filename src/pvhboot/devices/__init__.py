"""Emulated devices, knowing nothing of KVM: each sits on a :class:`~pvhboot.devices.bus.Bus`,
drives an :class:`~pvhboot.devices.irq.IrqLine` and reports VM events through an ``EventSink``.

Where each one goes (the VMM registers them; port numbers are the defaults named in the issue):

    PIO 0x3f8 +8   Serial16550(irq4, output)      COM1, IRQ 4
    PIO 0x060 +5   I8042(events)                  reset (0xFE on 0x64)
    PIO 0x070 +2   CmosRtc()                      CMOS RTC
    PIO 0x3c0 +2   AcpiSleepControl(events)       FADT sleep control (0x3c0) / status (0x3c1)
    PIO 0x0f4 +4   DebugExit(events)              probe/test exit value
    PIO 0x080 +1   DebugPort80(events)            cloud-hypervisor boot markers
    PIO 0x3f0 +1   FirecrackerBootTimer(events)   Firecracker's old boot-timer port
    MMIO 0xd0000000 +0x1000  FirecrackerBootTimer(events)
"""
from .acpi_pm import AcpiSleepControl
from .boot_markers import DebugPort80, FirecrackerBootTimer, debug_port_stage
from .bus import PIO_LIMIT, Bus, BusDevice
from .debug_exit import DebugExit
from .events import EventLog, EventSink, VmEvent, VmEventKind
from .i8042 import I8042
from .irq import FakeIrqLine, IrqLine, NullIrqLine
from .rtc import CmosRtc
from .serial import Serial16550


def __getattr__(name: str):
    """ConsoleInput and EscapeParser (termios, select, atexit) are imported only when asked for: the
    VMM needs them only when stdin is a terminal (PEP 562)."""
    if name in ("ConsoleInput", "EscapeParser"):
        from . import console

        return getattr(console, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AcpiSleepControl", "Bus", "BusDevice", "CmosRtc", "ConsoleInput", "DebugExit", "DebugPort80",
    "EscapeParser", "EventLog", "EventSink", "FakeIrqLine", "FirecrackerBootTimer", "I8042", "IrqLine",
    "NullIrqLine", "PIO_LIMIT", "Serial16550", "VmEvent", "VmEventKind", "debug_port_stage",
]
