"""The one recipe that assembles and runs a microVM (Firecracker's builder.rs, in Python).

:class:`Machine` is the KVM half: guest memory -> memory slots, in-kernel irqchip + PIT + TSS, the PC
devices on a port bus and an MMIO bus, one thread per vCPU, the wait for a stop, the exit record.
:class:`MicroVM` is the user's API: kernel file -> :func:`pvhboot.image.load_kernel` ->
:func:`pvhboot.boot.plan_guest` / :func:`pvhboot.boot.load_guest` -> :class:`Machine`.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from ..abi import kvm as abi
from ..boot.config import resolve_protocol
from ..boot.cpu_state import CpuState
from ..errors import ConfigError, KvmError
from ..memory import layout
from .config import VmConfig, check_cpus, check_timeout
from .cpu import setup_boot_vcpu, setup_vcpu_common
from .crash import FirstTrouble
from .runloop import CoalescedWrites, VmControl, install_kick_handler, join_vcpu_threads, vcpu_thread_main


@dataclass
class VmExit:
    """The exit record of one run."""

    reason: str  # why the VM stopped: runloop.StopRequest.reason
    exit_code: int  # the guest's: 0 for poweroff, the debug-exit value, 1 for a crash or timeout
    wall_time_s: float  # first KVM_RUN to the stop
    boot_markers: list[tuple[int, float]] = field(default_factory=list)  # (code, seconds since start)
    console: bytes = b""  # the last CONSOLE_TAIL bytes the guest printed (all of a shorter output)
    crash_report: str | None = None
    events: list[dict] = field(default_factory=list)  # every device event, in order
    console_total: int = 0  # bytes the guest printed in all (more than len(console) when cut)
    events_dropped: int = 0  # device events after the first EVENTS_KEPT, counted only

    def to_json(self) -> dict:
        d = asdict(self)
        d["console"] = self.console.decode("utf-8", "replace")
        d["boot_markers"] = [{"code": c, "seconds": s} for c, s in self.boot_markers]
        return d

    def to_json_bytes(self) -> bytes:
        import json

        return json.dumps(self.to_json(), indent=2).encode() + b"\n"


CONSOLE_TAIL = 64 << 10
"""Bytes of guest console kept in memory for the exit record (VmExit.console): the end of the output,
where a crash or the probe's verdict is.  Whatever the guest prints, the VMM holds no more than this
(the rest is streamed out, or dropped when the console is silent)."""


EVENTS_KEPT = 4096
"""Device events (and boot markers) kept for the exit record; later ones are only counted."""


class ConsoleOutput:
    """Guest console bytes to a stream (stdout by default, None for silence), and the last ``tail``
    bytes kept in memory (``capture``) for the exit record."""

    def __init__(self, stream=None, capture: bool = True, tail: int = CONSOLE_TAIL):
        self._stream = stream
        self._tail = tail
        self._buf = bytearray() if capture else None
        self.total = 0  # bytes the guest printed
        self._broken = False

    def __call__(self, data: bytes) -> None:
        self.total += len(data)
        buf = self._buf
        if buf is not None:
            buf += data[-self._tail:]
            if len(buf) > 2 * self._tail:  # trim in bulk: amortized O(1) per byte
                del buf[:-self._tail]
        if self._stream is not None and not self._broken:
            try:
                self._stream.write(data)
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                self._broken = True  # a closed pipe must not stop the guest

    @property
    def captured(self) -> bytes:
        """The last ``tail`` bytes of the console (all of it when it was shorter)."""
        return bytes(self._buf or b"")[-self._tail:]


def _default_stream():
    return getattr(sys.stdout, "buffer", sys.stdout)


class Machine:
    """A KVM VM with ``mem`` as its RAM and the boot vCPU at ``boot_state``.  Context manager.

    ``irqchip=False`` builds a bare VM (no PIC/IOAPIC/LAPIC, HLT exits to user space, one vCPU): for
    hand-assembled test guests.  ``console``: a binary stream, a callable, or None (captured only).
    ``coalesced_uart`` (default on when KVM has KVM_CAP_COALESCED_PIO): COM1's THR (port 0x3f8) is a
    coalesced PIO zone, so a transmitted byte costs no exit (bench 4); the run loop delivers the queued
    bytes before any other exit and a 10 ms tick delivers them when there is none (runloop.py).
    ``self.coalesced_uart`` says whether it is in effect.
    ``seccomp`` (default on): every vCPU thread runs under the allow-list of :mod:`pvhboot.vmm.seccomp`;
    a syscall outside it stops the VM with a crash report naming it.  ``exit_handlers`` maps a KVM exit
    reason to ``handler(vcpu, record) -> keep running?`` for the exits the run loop does not handle.
    """

    def __init__(self, mem, boot_state: CpuState, *, cpus: int = 1, console="stdout",
                 timeout: float | None = None, symbols=None, irqchip: bool = True, stdin: bool = False,
                 phys_to_virt: int = 0, kvm_path: str = "/dev/kvm",
                 coalesced: tuple[tuple[int, int, bool], ...] = (), coalesced_uart: bool = True,
                 seccomp: bool = True, virtio=(), gdb: str | None = None, gdb_wait: bool = False):
        from ..kvm import Kvm, is_kvm_pvm

        self.cpus = check_cpus(cpus)
        if cpus > 1 and not irqchip:
            raise ConfigError("more than one vCPU needs the in-kernel irqchip (INIT/SIPI)")
        self.timeout = check_timeout(timeout)
        self.mem = mem
        self.symbols = symbols
        self.phys_to_virt = phys_to_virt
        self.on_kvm_pvm = is_kvm_pvm()
        if console == "stdout":
            console = _default_stream()
        self.console = console if isinstance(console, ConsoleOutput) else (
            ConsoleOutput(None) if console is None else
            _CallableConsole(console) if callable(console) and not hasattr(console, "write") else
            ConsoleOutput(console))
        self._want_stdin = stdin
        # (addr, size, pio) zones whose writes KVM queues in the coalesced ring instead of exiting;
        # the run loop delivers them, in order, before handling the next exit.
        self._coalesced = tuple(coalesced)
        self._want_coalesced_uart = coalesced_uart
        self.coalesced_uart = False
        self.coalesced_writes = None  # the run's CoalescedWrites (its ``delivered`` count), once run
        self.ctl = VmControl()
        self.exit_handlers = self._exit_handlers()
        self._events: list = []
        self._events_dropped = 0
        self._start_ns = 0
        self._markers: list[tuple[int, float]] = []
        self._event_lock = threading.Lock()
        self.kvm = self.vm = None
        self.serial = None
        self.first_trouble: FirstTrouble | None = None  # the first oops on the console (crash reports)
        self._console_input = None
        self._ran = False
        self.gdb = None  # the GDB stub (gdbstub.GdbStub) when ``gdb`` names [HOST:]PORT
        self._virtio_devices = tuple(virtio)  # VirtioDevice objects, transport i at layout.virtio_mmio_slot(i)
        self.virtio = None
        self.sandbox = None
        if seccomp:  # vCPU threads load it in run(); an unusable filter is refused before anything is built
            from .seccomp import VcpuSandbox

            self.sandbox = VcpuSandbox(self._on_seccomp_violation)
        try:
            self.kvm = Kvm(kvm_path)
            self.vm = self.kvm.create_vm()
            self._setup_vm(irqchip)
            self._setup_devices(irqchip)
            self._setup_vcpus(boot_state)
            if gdb is not None:
                from .gdbstub import GdbStub

                self.gdb = GdbStub(self, gdb, wait=gdb_wait)
                if self.sandbox is not None:  # the stub's register and debug calls run on vCPU threads
                    self.sandbox.allow_ioctls(*GdbStub.VCPU_IOCTLS)
        except BaseException:
            self.close()
            raise

    # --- assembly ---
    def _setup_vm(self, irqchip: bool) -> None:
        vm = self.vm
        # Memory slots first, as Firecracker's builder does (memory_init before setup_irqchip): once
        # the in-kernel irqchip and PIT exist, each KVM_SET_USER_MEMORY_REGION took ~7 ms on kvm_pvm
        # (measured; inside the kernel), against ~0.2 ms before them (bench 3).
        vm.add_guest_memory(self.mem)
        # On VMX KVM needs these pages for real mode; placed in the MMIO hole, never in RAM (layout.py).
        vm.set_tss_addr(layout.KVM_TSS_ADDR)
        vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP_ADDR)
        if irqchip:
            vm.create_irqchip()
            vm.create_pit2()
        if self._want_coalesced_uart and self.kvm.check_extension(abi.KvmCap.COALESCED_PIO) > 0 and not any(
                pio and addr <= layout.COM1_PORT < addr + size for addr, size, pio in self._coalesced):
            # THR/DLL only: every other UART register access exits (and is answered after the ring).
            self._coalesced += ((layout.COM1_PORT, 1, True),)
            self.coalesced_uart = True
        for addr, size, pio in self._coalesced:
            vm.register_coalesced_zone(addr, size, pio=pio)

    def _setup_devices(self, irqchip: bool) -> None:
        from .. import devices as d

        self.pio_bus = d.Bus("pio", limit=d.PIO_LIMIT)
        self.mmio_bus = d.Bus("mmio")
        sink = self._on_event
        irq4 = self.vm.irq_line(layout.COM1_IRQ) if irqchip else d.NullIrqLine()
        self.first_trouble = FirstTrouble()
        self.serial = d.Serial16550(irq4, self.console, line_observer=self.first_trouble)
        self.pio_bus.insert(self.serial, layout.COM1_PORT, d.Serial16550.PIO_LENGTH, "com1")
        self.pio_bus.insert(d.I8042(sink), layout.I8042_DATA_PORT, d.I8042.PIO_LENGTH, "i8042")
        self.pio_bus.insert(d.CmosRtc(), layout.RTC_PORT, d.CmosRtc.PIO_LENGTH, "rtc")
        self.pio_bus.insert(d.AcpiSleepControl(sink), layout.ACPI_SLEEP_CONTROL_PORT,
                            d.AcpiSleepControl.PIO_LENGTH, "acpi-sleep")
        self.pio_bus.insert(d.DebugExit(sink), layout.DEBUG_EXIT_PORT, d.DebugExit.PIO_LENGTH, "debug-exit")
        self.pio_bus.insert(d.DebugPort80(sink), layout.POST_CODE_PORT, d.DebugPort80.PIO_LENGTH, "port80")
        self.pio_bus.insert(d.FirecrackerBootTimer(sink), layout.BOOT_TIMER_PORT,
                            d.FirecrackerBootTimer.PIO_LENGTH, "boot-timer-pio")
        self.mmio_bus.insert(d.FirecrackerBootTimer(sink), layout.BOOT_TIMER_MMIO,
                             d.FirecrackerBootTimer.MMIO_LENGTH, "boot-timer-mmio")
        if self._virtio_devices:
            from .virtio import VirtioSet

            self.virtio = VirtioSet(self.vm, self.kvm, self.mem, self.mmio_bus, self._virtio_devices,
                                    self._on_device_error, self._on_device_crash, irqchip=irqchip)

    def _on_device_error(self, message: str) -> None:
        from ..devices import VmEvent, VmEventKind
        from .virtio import report_driver_error

        report_driver_error(message)
        self._on_event(VmEvent(VmEventKind.DEVICE_ERROR, source=message))

    def _on_device_crash(self, exc: BaseException) -> None:
        from .crash import vmm_error

        self.ctl.stop("crash", 1, crash=vmm_error(0, exc))

    def _setup_vcpus(self, boot_state: CpuState) -> None:
        supported = self.kvm.supported_cpuid()
        for i in range(self.cpus):
            vcpu = self.vm.create_vcpu(i)
            setup_vcpu_common(vcpu, supported, self.cpus, pv_clock=not self.on_kvm_pvm)
        setup_boot_vcpu(self.vm.vcpus[0], boot_state)
        self.ctl.vcpus = list(self.vm.vcpus)

    # --- events from devices (called on vCPU threads and the console thread) ---
    def _on_event(self, ev) -> None:
        from ..devices import VmEventKind as K

        with self._event_lock:
            # A guest may write port 0x80 for ever: the record keeps the first EVENTS_KEPT (the
            # boot's timeline) and counts the rest, so VMM memory stays bounded.
            if len(self._events) < EVENTS_KEPT:
                self._events.append(ev)
            else:
                self._events_dropped += 1
            if ev.kind is K.BOOT_MARKER:
                if len(self._markers) < EVENTS_KEPT:
                    t = (ev.time_ns - self._start_ns) / 1e9 if self._start_ns else 0.0
                    self._markers.append((ev.value, t))
                return
        if ev.kind is K.POWEROFF:
            self.ctl.stop("poweroff", 0)
        elif ev.kind is K.RESET:
            self.ctl.stop("reset", 0)
        elif ev.kind is K.DEBUG_EXIT:
            self.ctl.stop("debug_exit", ev.value)
        elif ev.kind is K.QUIT:
            self.ctl.stop("quit", 0)

    # --- rare exits (the run loop handles I/O itself) ---
    def _exit_handlers(self) -> dict:
        """exit_reason -> handler(vcpu, record) -> keep running?  Anything else is an unexpected exit.
        A feature that needs another exit (e.g. KVM_EXIT_DEBUG) adds its handler to
        ``machine.exit_handlers`` before :meth:`run`."""
        K = abi.KvmExit
        return {K.HLT: self._on_hlt, K.SYSTEM_EVENT: self._on_system_event, K.SHUTDOWN: self._on_shutdown,
                K.INTERNAL_ERROR: self._on_internal_error, K.FAIL_ENTRY: self._on_fail_entry}

    def _on_exit(self, vcpu, reason: int, record) -> bool:
        handler = self.exit_handlers.get(reason)
        if handler is not None:
            return handler(vcpu, record)
        name = getattr(record, "name", None) or f"exit {reason}"
        self._crash(vcpu, "unexpected exit", f"KVM_EXIT_{name} {record}")
        return False

    def _on_hlt(self, vcpu, record) -> bool:  # only without the irqchip: nothing can wake the vCPU again
        self.ctl.stop("poweroff", 0)
        return False

    def _on_system_event(self, vcpu, record) -> bool:
        if record.type == abi.KvmSystemEvent.SHUTDOWN:
            self.ctl.stop("poweroff", 0)
        elif record.type == abi.KvmSystemEvent.RESET:
            self.ctl.stop("reset", 0)
        else:
            self._crash(vcpu, "system event", f"KVM_SYSTEM_EVENT {record.type_name}")
        return False

    def _on_shutdown(self, vcpu, record) -> bool:
        self._crash(vcpu, "triple fault", "KVM_EXIT_SHUTDOWN (the guest triple-faulted)")
        return False

    def _on_internal_error(self, vcpu, record) -> bool:
        if self.gdb is not None and self.gdb.on_exec_trap(vcpu, record):
            return True  # a gdb page trap (vmm/gdbstub.py), not a failure
        self._crash(vcpu, "internal error", f"KVM_EXIT_INTERNAL_ERROR {record.suberror_name}", internal=record)
        return False

    def _on_fail_entry(self, vcpu, record) -> bool:
        self._crash(vcpu, "fail entry", f"KVM_EXIT_FAIL_ENTRY hardware_entry_failure_reason="
                    f"{record.hardware_entry_failure_reason:#x} cpu={record.cpu}")
        return False

    def _on_seccomp_violation(self, v) -> None:
        # On the seccomp reader thread (vmm/seccomp.py); the refused call has returned EPERM or will.
        self.ctl.stop("crash", 1, crash=_seccomp_crash(v))

    def _crash(self, vcpu, kind: str, detail: str, internal=None) -> None:
        # This thread owns the vCPU and is outside KVM_RUN: its state can be read now.
        from .crash import CrashInfo, capture_vcpu  # crash reports (and capstone) only when one is made

        info = CrashInfo(kind=kind, vcpu=vcpu.index, detail=detail, internal=internal,
                         snapshots=[capture_vcpu(vcpu, self.mem)])
        self.ctl.stop("crash", 1, crash=info)

    # --- running ---
    def run(self) -> VmExit:
        if self._ran:
            raise KvmError("a Machine runs once; build a new one")
        self._ran = True
        install_kick_handler()
        ctl = self.ctl
        ring = self.vm.vcpus[0].coalesced_ring() if self._coalesced else None
        coalesced = self.coalesced_writes = (CoalescedWrites(ring, self.pio_bus, self.mmio_bus)
                                              if ring is not None else None)
        sandbox = self.sandbox
        threads = [threading.Thread(target=vcpu_thread_main, name=f"pvhboot-vcpu{v.index}", daemon=True,
                                    args=(v, self.pio_bus, self.mmio_bus, ctl, self._on_exit, coalesced, sandbox))
                   for v in self.vm.vcpus]
        if self._want_stdin:
            from ..devices import ConsoleInput

            self._console_input = ConsoleInput(self.serial.feed_input, self._on_event).start()
        if self.virtio is not None:
            self.virtio.start()
        self._start_ns = time.monotonic_ns()
        t0 = time.monotonic()
        interrupted = False
        try:
            if sandbox is not None:
                sandbox.start(keep_out=[(r.host_addr, r.size) for r in self.mem.regions])
            if self.gdb is not None:
                self.gdb.start()  # before the vCPUs: with --gdb-wait they park before any instruction
            for t in threads:
                t.start()
            if coalesced is None:
                if not ctl.done.wait(self.timeout):
                    ctl.stop("timeout", 1)
            else:
                self._wait_delivering(coalesced)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            ctl.stop("quit", 130)  # no-op when already stopped; makes every path stop the vCPUs
            stuck = join_vcpu_threads(threads, ctl)
            if self.gdb is not None:
                self.gdb.close()
            if self.virtio is not None:
                self.virtio.stop()
            if sandbox is not None:
                sandbox.stop()
            if coalesced is not None:  # writes queued after the last exit
                coalesced.deliver()
            wall = time.monotonic() - t0
            if self._console_input is not None:
                self._console_input.stop()
        record = self._exit_record(wall, stuck)
        if interrupted:
            raise KeyboardInterrupt
        return record

    def _wait_delivering(self, coalesced) -> None:
        """Wait for a stop (or the timeout), delivering queued coalesced writes every TICK_S."""
        ctl = self.ctl
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        tick = coalesced.TICK_S
        while True:
            wait = tick
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    ctl.stop("timeout", 1)
                    return
                wait = min(tick, left)
            if ctl.done.wait(wait):
                return
            try:
                coalesced.deliver()
            except Exception as e:  # a device bug ends the VM with a report, as on a vCPU thread
                from .crash import vmm_error

                ctl.stop("crash", crash=vmm_error(0, e))
                return

    def _exit_record(self, wall: float, stuck: list[int]) -> VmExit:
        req = self.ctl.request
        reason, code = req.reason, req.exit_code
        crash = req.crash
        violations = self.sandbox.violations if self.sandbox is not None else []
        if violations and getattr(crash, "kind", None) != "seccomp violation":
            # The refused call came first even when its EPERM ended the VM (as a vmm error) before the
            # report reached the VMM: name the syscall, keep the rest as a consequence.
            first = _seccomp_crash(violations[0])
            if crash is not None:
                first.detail += f"\nthen: {crash.kind}: {crash.detail.splitlines()[0] if crash.detail else ''}"
            reason, code, crash = "crash", 1, first
        report = None
        if reason in ("crash", "timeout"):
            from .crash import CrashInfo, capture_vcpu, format_crash_report

            info = crash if reason == "crash" else CrashInfo(
                kind="timeout", vcpu=0, detail=f"wall-clock limit of {self.timeout:g} s reached; vCPUs stopped")
            have = {s.index for s in info.snapshots}
            for v in self.vm.vcpus:
                if v.index not in have and v.index not in stuck:
                    info.snapshots.append(capture_vcpu(v, self.mem))
            if stuck:
                info.detail += f"\n(vCPU(s) {stuck} did not leave KVM_RUN)"
            lines = self.serial.recent_lines() if self.serial is not None else []
            symbols = self.symbols() if callable(self.symbols) else self.symbols
            report = format_crash_report(info, lines, symbols, self.on_kvm_pvm, self.phys_to_virt,
                                         self.first_trouble)
            code = code or 1
        if self.serial is not None:
            self.serial.flush()
        events = [{"kind": e.kind.value, "value": e.value, "source": e.source,
                   "seconds": (e.time_ns - self._start_ns) / 1e9} for e in self._events]
        return VmExit(reason=reason, exit_code=code, wall_time_s=wall, boot_markers=list(self._markers),
                      console=self.console.captured, crash_report=report, events=events,
                      console_total=self.console.total, events_dropped=self._events_dropped)

    # --- teardown ---
    def close(self) -> None:
        if self.gdb is not None:
            self.gdb.close()
            self.gdb = None
        if self._console_input is not None:
            self._console_input.stop()
            self._console_input = None
        if self.virtio is not None:
            self.virtio.stop()
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        if self.virtio is not None:
            self.virtio.close()
            self.virtio = None
        if self.kvm is not None:
            self.kvm.close()
            self.kvm = None

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _seccomp_crash(v):
    from .crash import CrashInfo

    return CrashInfo(kind="seccomp violation", vcpu=v.vcpu,
                     detail=f"the thread of vCPU {v.vcpu} (tid {v.tid}) called {v.call}, which is not in the vCPU "
                            "threads' seccomp allow-list (pvhboot.vmm.seccomp); the call failed with EPERM and the "
                            "VM was stopped (--no-seccomp turns the filter off)")


class _CallableConsole(ConsoleOutput):
    def __init__(self, fn):
        super().__init__(None)
        self._fn = fn

    def __call__(self, data: bytes) -> None:
        super().__call__(data)
        self._fn(data)


class MicroVM:
    """Boot a kernel file the PVH or Linux way.  Context manager; ``run()`` once.

    ``mutate(loaded_guest, mem) -> LoadedGuest`` is a test hook called after the boot structures are
    written and before the first KVM_RUN (mutation tests break one ABI rule with it).
    """

    def __init__(self, kernel: str | None = None, *, config: VmConfig | None = None, console="stdout",
                 mutate=None, stdin: bool = False, **options):
        # ``config``: the validated options (what the commands pass).  Without one, the keyword
        # options (memory=, cpus=, ...: VmConfig's fields) make one, for the Python API and tests.
        if config is None:
            config = VmConfig(kernel=kernel, **options)
        elif kernel is not None or options:
            raise TypeError("MicroVM takes either a VmConfig or keyword options, not both")
        if config.kernel is None:
            # The runtime boots the kernel it is given; which one (the probe, for `pvhboot boot`
            # without KERNEL) is the caller's choice (commands/_util.py builtin_probe).
            raise ConfigError("no kernel given")
        self.config = config
        self.kernel_path = config.kernel
        self.console, self.mutate, self.stdin = console, mutate, stdin
        self._daemons: list = []  # virtiofsd processes for config.shares, stopped by close()
        self._console_lock = threading.Lock()
        self.image = None
        self.loaded = None
        self.mem = None
        self.machine: Machine | None = None

    def __enter__(self) -> MicroVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.machine is not None:
            self.machine.close()
            self.machine = None
        for daemon in self._daemons:
            daemon.stop()
        self._daemons = []
        if self.mem is not None:
            self.mem.close()
            self.mem = None
        if self.image is not None:  # the kernel file's read-only mapping(s)
            for holder in (self.image.elf, self.image.bzimage):
                data = getattr(holder, "data", None)
                if hasattr(data, "close"):
                    try:
                        data.close()
                    except BufferError:  # a parsed view still refers to it; freed when collected
                        pass
            self.image = None

    resolve_protocol = staticmethod(resolve_protocol)  # the boot layer's rule (bench calls it here)

    def build(self) -> Machine:
        """Load the kernel and boot structures and assemble the Machine (no guest code runs yet)."""
        from ..boot import load_guest, plan_guest
        from ..image import load_kernel
        from ..memory import GuestMemory

        try:
            self.image = load_kernel(self.kernel_path)
            vm = self.config
            self.protocol = self.resolve_protocol(self.image, vm.protocol)
            config = vm.boot_config(self.protocol)
            # --symbols is loaded now (a bad file is the user's error, before the guest runs); the
            # kernel's own .symtab only when a report needs it (seconds for a distro vmlinux).
            if vm.symbols:
                from .crash import load_symbol_table

                symbols = load_symbol_table(vm.symbols)
            else:
                symbols = _LazySymbols(self.image.elf)
            plan = plan_guest(self.image, config)
            devices = []
            if vm.virtio_devices:
                from .virtio import build_virtio_devices

                devices, self._daemons = build_virtio_devices(
                    vm.disks, vm.shares, self._virtio_console_output if vm.virtio_console else None)
            # A vhost-user back end (virtiofsd) maps guest RAM itself: memfd-backed, shared.
            self.mem = GuestMemory(list(plan.ram_ranges), shared=bool(vm.shares))
            loaded = load_guest(plan, self.mem)
            if self.mutate is not None:
                loaded = self.mutate(loaded, self.mem) or loaded
            self.loaded = loaded
            self.machine = Machine(self.mem, loaded.cpu, cpus=vm.cpus, console=self.console,
                                   timeout=vm.timeout, symbols=symbols, stdin=self.stdin,
                                   phys_to_virt=_phys_to_virt(self.image) - plan.kernel_placement.offset,
                                   coalesced_uart=vm.coalesced_uart, seccomp=vm.seccomp, virtio=devices,
                                   gdb=vm.gdb, gdb_wait=vm.gdb_wait)
            for daemon in self._daemons:
                daemon.watch(self._daemon_died)
        except BaseException:
            self.close()  # no guest memory or fd outlives a failed build
            raise
        return self.machine

    def run(self) -> VmExit:
        machine = self.machine or self.build()
        return machine.run()

    def _virtio_console_output(self, data: bytes) -> None:
        """hvc0's bytes (device thread) go where COM1's go: the Machine's console."""
        with self._console_lock:
            self.machine.console(data)

    def _daemon_died(self, message: str) -> None:
        from .crash import CrashInfo

        machine = self.machine
        if machine is not None:
            machine.ctl.stop("crash", 1, crash=CrashInfo(kind="device back end died", vcpu=0, detail=message))


class _LazySymbols:
    """The kernel ELF's own symbol table, read (with the crash module) only when a report asks."""

    def __init__(self, elf) -> None:
        self._elf = elf

    def __call__(self):
        from .crash import load_symbol_table

        return load_symbol_table(None, self._elf)


def _phys_to_virt(image) -> int:
    """Link (virtual) minus load (physical) address of the kernel's first segment, to symbolize a
    physical RIP (a kernel still running at its physical address, e.g. the PVH entry)."""
    segs = getattr(image, "segments", ()) or ()
    for s in segs:
        if s.memsz:
            return s.vaddr - s.paddr
    return 0
