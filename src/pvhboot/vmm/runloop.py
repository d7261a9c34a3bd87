"""The vCPU run loop: KVM_RUN, decode the exit, dispatch it, repeat (the hot path).

Per exit the loop does one ``unpack_from`` over the mapped kvm_run page (exit_reason and the io union in
one go, with :data:`pvhboot.kvm.exits.EXIT_IO`: every kvm_run layout is decoded by pvhboot.kvm, this
module only dispatches), one bus dispatch (a dict lookup inside :class:`pvhboot.devices.bus.Bus`) and,
for an IN, one ``pack_into``.  Every other exit is decoded by :func:`pvhboot.kvm.exits.decode_exit`
and handed to the VMM's ``on_exit`` (a table keyed by exit reason in :class:`pvhboot.vmm.Machine`).

Coalesced writes (KVM_REGISTER_COALESCED_MMIO, api.rst; COM1's THR by default): KVM queues writes to
a coalesced zone in one ring page per VM instead of exiting.  :class:`CoalescedWrites` delivers them to
the buses, oldest first, (1) after every KVM_RUN of every vCPU, before the exit is handled, so any
register access that exits sees all earlier queued writes in order (the UART's LSR/IIR/IER/LCR after
THR bytes; a DLL byte queued while DLAB=1 reaches the UART before the LCR write that clears DLAB, and
is decoded with the DLAB state it was written under), and (2) every ``TICK_S`` from the VMM's waiting
thread, so a guest that fills THR and then halts until the THRE interrupt (which only the UART model
raises, on delivery) is not stalled.

Stopping (api.rst "immediate_exit", platform.md): :meth:`VmControl.stop` sets ``immediate_exit`` in
every vCPU's kvm_run and sends SIGUSR1 (a no-op Python handler) to every vCPU thread still registered
as running (never to one that may have exited: :class:`VmControl`), so a thread inside
KVM_RUN (HLT with the in-kernel irqchip, an AP waiting for SIPI) returns with EINTR and one about to
enter returns at once.  Unmapped port reads return all ones and unmapped writes are ignored, as on a PC.
"""
from __future__ import annotations

import errno
import signal
import threading
import time

from ..abi import kvm as abi
from ..kvm.exits import EXIT_IO, EXIT_MMIO, IO_VALUE, MMIO_DATA, MMIO_DATA_LEN, decode_exit

KICK_SIGNAL = signal.SIGUSR1

# A read nobody answers floats high, as on a PC's bus.
_ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}

_EXIT_IO_CODE = int(abi.KvmExit.IO)
_EXIT_MMIO_CODE = int(abi.KvmExit.MMIO)
_EXIT_INTR_CODE = int(abi.KvmExit.INTR)
_OUT = abi.KVM_EXIT_IO_OUT


def _noop_handler(signum, frame) -> None:  # the kick only needs to interrupt KVM_RUN
    pass


def install_kick_handler() -> None:
    """Install the no-op SIGUSR1 handler (main thread only) unless a Python handler is already there."""
    current = signal.getsignal(KICK_SIGNAL)
    if callable(current):
        return
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the first VM must be run from the main thread (it installs a SIGUSR1 handler "
                           "that stops vCPU threads), or call pvhboot.vmm.runloop.install_kick_handler() there")
    signal.signal(KICK_SIGNAL, _noop_handler)


class StopRequest:
    """Why the VM stopped: reason in ("poweroff", "reset", "debug_exit", "crash", "timeout", "quit").
    (Plain classes here, not dataclasses: internal records, and each dataclass costs start-up time.)"""

    __slots__ = ("reason", "exit_code", "crash")

    def __init__(self, reason: str, exit_code: int = 0, crash: object | None = None) -> None:
        self.reason = reason
        self.exit_code = exit_code
        self.crash = crash  # pvhboot.vmm.crash.CrashInfo for "crash"

    def __repr__(self) -> str:
        return f"StopRequest(reason={self.reason!r}, exit_code={self.exit_code!r}, crash={self.crash!r})"


class VmControl:
    """State shared by the vCPU threads and the thread that waits for them.

    Kicking a thread safely.  ``signal.pthread_kill(ident)`` dereferences the thread's ``pthread_t``,
    which glibc keeps in the thread's own stack mapping; CPython detaches its threads, so once a vCPU
    thread has returned its stack may be unmapped (glibc caches only ~40 MiB of stacks: with 5+ vCPUs
    of 8 MiB each some are freed) or reused by a new thread, and a signal sent to the old ident is a
    SIGSEGV in the kicker or a kick to the wrong thread (issue 10: ``--cpus 16`` died at teardown with
    exit 139).  ``Thread.is_alive()`` cannot guard it: a thread can finish between the check and the
    kill.  So liveness is a registration under :attr:`lock`:

    - a vCPU thread registers itself (:meth:`register`) first thing and unregisters
      (:meth:`unregister`) as the last statement of its body (a ``finally``), both under the lock;
    - :meth:`kick_all` sends signals only while holding the lock, and only to registered threads.

    While the kicker holds the lock, a registered thread cannot pass its ``unregister`` (it would block
    on the lock), so it is still inside its body, its stack is mapped and ``pthread_kill`` reaches it.
    A thread that has unregistered is never signalled again, whatever happens to its stack after.
    Stopping is also decided under the lock, and a thread checks ``stopping`` after registering, so a
    thread that registers after a kick sees the stop instead (``immediate_exit`` also covers it).
    """

    def __init__(self, vcpus: list | None = None) -> None:
        self.vcpus: list = vcpus if vcpus is not None else []
        self.threads: dict[int, int] = {}  # vcpu index -> ident, of threads registered (alive) only
        self.stopping = False
        self.request: StopRequest | None = None
        self.done = threading.Event()
        self.lock = threading.Lock()

    def register(self, index: int) -> None:
        """Called by a vCPU thread on itself, before it can be kicked."""
        with self.lock:
            self.threads[index] = threading.get_ident()

    def unregister(self, index: int) -> None:
        """Called by a vCPU thread on itself as its body's last action: it is never signalled after."""
        with self.lock:
            self.threads.pop(index, None)

    def stop(self, reason: str, exit_code: int = 0, crash: object | None = None) -> bool:
        """Ask every vCPU to stop.  The first request wins (True); later ones are ignored (False)."""
        with self.lock:
            first = self.request is None
            if first:
                self.request = StopRequest(reason, exit_code, crash)
            self.stopping = True
            self._kick_registered()
        self.done.set()
        return first

    def kick_all(self) -> None:
        """Make every running vCPU leave KVM_RUN (it then sees ``stopping``)."""
        with self.lock:
            self._kick_registered()

    def _kick_registered(self) -> None:  # caller holds self.lock: see the class docstring
        me = threading.get_ident()
        for v in self.vcpus:
            if v.fd >= 0:
                v.set_immediate_exit(True)
        for ident in self.threads.values():
            if ident != me:
                signal.pthread_kill(ident, KICK_SIGNAL)  # registered: alive until it takes the lock


def _block_async_signals() -> None:
    """vCPU threads take only the kick signal; SIGINT, SIGTERM, SIGCHLD... go to the main thread."""
    keep = {KICK_SIGNAL, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - keep)


class CoalescedWrites:
    """The VM's coalesced ring and the buses its entries go to.  One lock around drain + delivery
    keeps the guest's order when several threads (vCPUs, the tick) deliver."""

    TICK_S = 0.01  # the host-side drain period while the VMM waits (a guest stalled on THRE waits <= this)

    def __init__(self, ring, pio_bus, mmio_bus) -> None:
        self._ring = ring
        self._pio, self._mmio = pio_bus, mmio_bus
        self._lock = threading.Lock()
        self.delivered = 0  # writes delivered so far (tests and benchmarks read it)

    def deliver(self) -> int:
        """Deliver every queued write; returns how many."""
        ring = self._ring
        if not ring.pending():
            return 0
        with self._lock:
            entries = ring.drain()
            deliver_coalesced(entries, self._pio, self._mmio)
            self.delivered += len(entries)
        return len(entries)


def vcpu_thread_main(vcpu, pio_bus, mmio_bus, ctl: VmControl, on_exit, coalesced=None, sandbox=None) -> None:
    """Thread body: run ``vcpu`` until the VM stops.  ``on_exit(vcpu, reason, record)`` handles every
    exit that is not port I/O, MMIO or INTR, and returns True to keep running.  ``sandbox``: a
    :class:`pvhboot.vmm.seccomp.VcpuSandbox` whose filter this thread loads before its first KVM_RUN."""
    ctl.register(vcpu.index)
    try:
        _block_async_signals()
        if sandbox is not None:
            sandbox.enter(vcpu.index)
        if ctl.stopping:
            return
        run_vcpu(vcpu, pio_bus, mmio_bus, ctl, on_exit, coalesced)
    except BaseException as e:  # a device or VMM bug must not hang the VMM: end the VM with a report
        from .crash import vmm_error

        ctl.stop("crash", crash=vmm_error(vcpu.index, e))
    finally:
        ctl.unregister(vcpu.index)  # last: from here on nobody signals this thread (VmControl)


def run_vcpu(vcpu, pio_bus, mmio_bus, ctl: VmControl, on_exit, coalesced: CoalescedWrites | None = None) -> None:
    """The loop itself (also used directly by benchmarks).  ``coalesced``: delivered before each exit."""
    view = vcpu.run_view
    run = vcpu.run
    unpack_exit = EXIT_IO.unpack_from
    pio_read, pio_write = pio_bus.read, pio_bus.write
    values = IO_VALUE
    io_code, out = _EXIT_IO_CODE, _OUT  # locals: read on every exit
    deliver = coalesced.deliver if coalesced is not None else None
    # The ring's {first, last} through this vCPU's own mapping of the VM's ring page (kvm/vcpu.py).
    head = vcpu.coalesced_ring_head() if coalesced is not None else None
    try:
        while True:
            try:
                run()
            except OSError as e:
                if e.errno == errno.EINTR or e.errno == errno.EAGAIN:
                    # EINTR: kicked (or immediate_exit); EAGAIN: an AP woken by INIT (platform.md).
                    if ctl.stopping:
                        return
                    continue
                raise vcpu.run_failed(e) from None
            if head is not None and head[0] != head[1]:
                deliver()  # queued writes first: the exit below must see them (e.g. LSR after THR bytes)
            reason, direction, size, port, count, off = unpack_exit(view)
            if reason == io_code:
                fmt = values[size]
                if direction == out:
                    if count == 1:
                        # a byte (UART THR, POST codes: the common case) is read straight from the page;
                        # bench/exit_roundtrip.py measured -0.14 us per exit against unpack_from
                        pio_write(port, size, view[off] if size == 1 else fmt.unpack_from(view, off)[0])
                    else:  # rep outs: count items of size bytes, back to back
                        for i in range(count):
                            pio_write(port, size, fmt.unpack_from(view, off + i * size)[0])
                else:
                    for i in range(count):
                        value = pio_read(port, size)
                        fmt.pack_into(view, off + i * size, _ALL_ONES[size] if value is None else value)
            elif reason == _EXIT_MMIO_CODE:
                addr, data, length, is_write = EXIT_MMIO.unpack_from(view)
                if is_write:
                    mmio_bus.write(addr, length, int.from_bytes(data[:length], "little"))
                else:
                    value = mmio_bus.read(addr, length)
                    if value is None:
                        value = (1 << (8 * length)) - 1
                    MMIO_DATA.pack_into(view, 0, value.to_bytes(MMIO_DATA_LEN, "little"))
            elif reason == _EXIT_INTR_CODE:
                if ctl.stopping:
                    return
            else:
                code, record = decode_exit(view)
                if not on_exit(vcpu, code, record):
                    return
    finally:
        if head is not None:
            head.release()  # the vCPU mapping must have no exported views left when it is closed


def deliver_coalesced(entries, pio_bus, mmio_bus) -> None:
    for addr, length, pio, data in entries:
        (pio_bus if pio else mmio_bus).write(addr, length, int.from_bytes(data, "little"))


def join_vcpu_threads(threads: list[threading.Thread], ctl: VmControl, grace_s: float = 5.0) -> list[int]:
    """Join every vCPU thread, re-kicking until they are gone.  Returns indices still alive after
    ``grace_s`` (a kernel that never returns from KVM_RUN; they are daemon threads)."""
    deadline = time.monotonic() + grace_s
    for t in threads:
        while t.is_alive() and time.monotonic() < deadline:
            ctl.kick_all()
            t.join(0.05)
    return [i for i, t in enumerate(threads) if t.is_alive()]
