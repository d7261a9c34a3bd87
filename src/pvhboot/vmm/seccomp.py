"""A seccomp allow-list for the vCPU threads, as Firecracker filters each of its threads.

Once the VM is built, each vCPU thread loads the same filter on itself (seccomp filters are per
thread: the main thread, which reads files and writes the exit record, stays unfiltered).  The filter
allows only what the run loop, the devices and the Python runtime under them do on a vCPU thread
(:data:`ALLOWED`, found with ``strace -f`` of probe boots and of the kvm tier, then minimised), and
``ioctl`` only with the KVM requests a vCPU thread issues (:data:`VCPU_IOCTLS`).

What happens to anything else.  The filter's default action is SECCOMP_RET_USER_NOTIF (libseccomp's
``NOTIFY``): the offending thread blocks in the syscall and a supervisor reads the notification (the
thread id, the syscall number and its six arguments), reports it to the VMM, which stops the VM with a
crash report naming the syscall and the vCPU, and then answers EPERM, so the call fails and the
device code sees an ordinary ``PermissionError``.  Chosen over the alternatives because the report is
exact and cannot be lost or swallowed:

- SECCOMP_RET_TRAP raises SIGSYS in the offending thread, but a Python handler runs later on the main
  thread and never sees the siginfo (si_syscall), and the trapped call "returns" its own syscall number
  (syscall_rollback), which Python would take for a file descriptor;
- SECCOMP_RET_ERRNO tells the calling code only an errno, which a device may swallow, and names nothing;
- SECCOMP_RET_KILL_THREAD would end a thread the VMM still kicks and joins.

The supervisor is a forked child process, not a thread: a syscall that CPython makes without releasing
the GIL (``os.execv`` does) blocks the offending thread with the GIL held, and a Python thread of the
same process could never run to answer it.  The child has no filter and needs no lock of ours: it
polls the listeners, sends one report line per refused call back over a socketpair, answers EPERM, and
exits when the VMM shuts the socket after joining the vCPU threads.  A per-thread listener needs a
per-thread load (libseccomp keeps one listener fd per process), so the program is compiled with
libseccomp's Python bindings (Debian's ``python3-seccomp`` ``seccomp`` module, else PyPI's
``pyseccomp``, the same API over ctypes), exported as BPF, and each vCPU thread loads it with
seccomp(2) and SECCOMP_FILTER_FLAG_NEW_LISTENER and passes the listener to the child (SCM_RIGHTS, the
one ``sendmsg`` the filter allows, on that socket only).  The crash path of a vCPU thread must not
itself trip the filter: :func:`preload` imports what it uses first, and vmm_error formats tracebacks
without reading sources.
"""
from __future__ import annotations

import array
import ctypes
import errno
import functools
import mmap
import os
import select
import signal
import socket
import struct
import threading

from ..abi import kvm as kabi
from ..abi import seccomp as sabi
from ..errors import ConfigError

# syscall -> why a vCPU thread makes it.  Seen in ``strace -f`` of the whole kvm tier (98 tests, 860
# filtered vCPU threads): ioctl, futex, write, rt_sigprocmask, rt_sigreturn, munmap, madvise, close,
# sendmsg, exit, getpid, tgkill.  The allocator's calls are data-dependent (a burst of console output
# on a vCPU thread grows a buffer), so they are allowed too, without PROT_EXEC; clock_gettime and
# restart_syscall are what the vDSO and a kicked wait fall back to on other hosts.
ALLOWED = {
    "ioctl": "KVM_RUN and the requests in VCPU_IOCTLS only (argument 1 checked)",
    "futex": "the GIL, threading locks and events (VmControl, devices)",
    "write": "guest console output to the user's stream",
    "close": "the thread's listener fd once passed on; a finalizer run by the garbage collector",
    "mmap": "the allocator: pymalloc arenas and glibc heaps (never PROT_EXEC)",
    "mprotect": "glibc grows a thread's malloc heap (never PROT_EXEC)",
    "munmap": "the allocator; glibc frees an exited thread's stack",
    "mremap": "realloc of a large buffer (console capture)",
    "madvise": "glibc returns an exited thread's stack and free heap pages",
    "brk": "the allocator",
    "rt_sigreturn": "return from the kick signal's handler",
    "rt_sigprocmask": "glibc blocks signals while a thread exits",
    "rt_sigaction": "of a fatal signal only (FATAL_SIGNALS): Python's faulthandler (`compare` runs its cells "
                    "under -X faulthandler) restores the default action to re-raise the signal the thread "
                    "took, after writing every thread's traceback; refused, the thread took the signal "
                    "again and again holding the GIL, and the VMM hung",
    "tgkill": "signal.pthread_kill: a vCPU that stops the VM kicks the others (VmControl)",
    "getpid": "glibc's pthread_kill passes the process id to tgkill",
    "clock_gettime": "time.monotonic_ns for device events where the vDSO falls back to the syscall",
    "restart_syscall": "a wait interrupted by the kick signal is restarted",
    "exit": "the thread ends",
    "sendmsg": "once, to pass the thread's listener fd to the supervisor (on that socket only)",
}
_PROT_EXEC = 0x4  # asm-generic/mman-common.h
# The signals faulthandler handles (CPython Modules/faulthandler.c faulthandler_handlers).
FATAL_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT)
# The KVM requests a vCPU thread issues: its own KVM_RUN; KVM_IRQ_LINE from a device raising an
# interrupt (the VM fd); GET_REGS/GET_SREGS/TRANSLATE when it captures its state for a crash report.
VCPU_IOCTLS = {
    "KVM_RUN": kabi.KVM_RUN,
    "KVM_IRQ_LINE": kabi.KVM_IRQ_LINE,
    "KVM_GET_REGS": kabi.KVM_GET_REGS,
    "KVM_GET_SREGS": kabi.KVM_GET_SREGS,
    "KVM_TRANSLATE": kabi.KVM_TRANSLATE,
}
# Checked first, in this order: the run loop's per-exit calls (libseccomp tests by priority).
_HOT = ("ioctl", "futex", "write")


class SeccompUnavailable(ConfigError):
    """The filter cannot be built or loaded here (no libseccomp, no bindings, an old kernel)."""


def _bindings():
    """libseccomp's Python API: Debian's compiled ``seccomp`` module or PyPI's ``pyseccomp``."""
    try:
        import seccomp
    except ImportError:
        try:
            import pyseccomp as seccomp
        except ImportError:
            raise SeccompUnavailable("neither libseccomp's Python bindings (python3-seccomp) nor pyseccomp "
                                     "is installed") from None
        except (OSError, RuntimeError) as e:  # pyseccomp raises RuntimeError when libseccomp.so is absent
            raise SeccompUnavailable(f"libseccomp cannot be loaded: {e}") from None
    return seccomp


@functools.cache
def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """(libc, libseccomp): seccomp(2) and prctl(2) through libc's syscall wrappers; the listener's
    receive/respond through the libseccomp the bindings use (its state knows USER_NOTIF is supported):
    Debian's ``seccomp`` extension links libseccomp statically and exports its API, pyseccomp loads
    the shared libseccomp.so.2."""
    module = getattr(_bindings(), "__file__", "") or ""
    name = module if module.endswith(".so") else "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise SeccompUnavailable(f"libseccomp cannot be loaded: {e}") from None
    for name in ("seccomp_notify_receive", "seccomp_notify_respond"):
        if not hasattr(lib, name):
            raise SeccompUnavailable(f"libseccomp is older than 2.5 (no {name})")
    lib.seccomp_notify_receive.argtypes = (ctypes.c_int, ctypes.POINTER(sabi.seccomp_notif))
    lib.seccomp_notify_respond.argtypes = (ctypes.c_int, ctypes.POINTER(sabi.seccomp_notif_resp))
    lib.seccomp_syscall_resolve_num_arch.argtypes = (ctypes.c_uint32, ctypes.c_int)
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
    libc = ctypes.CDLL(None, use_errno=True)
    libc.free.argtypes = (ctypes.c_void_p,)
    return libc, lib


@functools.lru_cache(maxsize=8)
def vcpu_filter_program(supervisor_fd: int = -1, extra_ioctls: tuple[int, ...] = ()) -> bytes:
    """The vCPU threads' filter as a BPF program (struct sock_filter[]); ``sendmsg`` only on
    ``supervisor_fd``; ``extra_ioctls``: requests allowed beside VCPU_IOCTLS (VcpuSandbox.allow_ioctls)."""
    sc = _bindings()
    _libs()
    try:
        f = sc.SyscallFilter(sc.NOTIFY)
        f.set_attr(sc.Attr.ACT_BADARCH, sc.NOTIFY)  # an int 0x80 (i386) syscall is reported too
        for name in ALLOWED:
            if name not in ("ioctl", "sendmsg", "mmap", "mprotect", "rt_sigaction"):
                f.add_rule(sc.ALLOW, name)
        for signum in FATAL_SIGNALS:
            f.add_rule(sc.ALLOW, "rt_sigaction", sc.Arg(0, sc.EQ, int(signum)))
        for request in sorted({*VCPU_IOCTLS.values(), *extra_ioctls}):  # an unsigned int: compare 32 bits
            f.add_rule(sc.ALLOW, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
        f.add_rule(sc.ALLOW, "sendmsg", sc.Arg(0, sc.EQ, supervisor_fd & 0xFFFFFFFF))
        for name in ("mmap", "mprotect"):  # prot is argument 2 of both
            f.add_rule(sc.ALLOW, name, sc.Arg(2, sc.MASKED_EQ, _PROT_EXEC, 0))
        for rank, name in enumerate(_HOT):
            f.syscall_priority(name, 255 - rank)
        fd = os.memfd_create("pvhboot-vcpu-seccomp", os.MFD_CLOEXEC)
        with os.fdopen(fd, "w+b") as out:
            f.export_bpf(out)
            out.seek(0)
            program = out.read()
    except (OSError, ValueError, RuntimeError) as e:
        raise SeccompUnavailable(f"libseccomp cannot build the vCPU filter: {e}") from None
    if not program or len(program) % sabi.SOCK_FILTER_SIZE:
        raise SeccompUnavailable(f"libseccomp exported a {len(program)}-byte BPF program")
    return program


def syscall_name(nr: int, arch: int = 0) -> str:
    """libseccomp's name for syscall ``nr`` (arch 0: this machine's), else 'syscall N'."""
    _, lib = _libs()
    ptr = lib.seccomp_syscall_resolve_num_arch(arch, nr)
    if not ptr:
        return f"syscall {nr}"
    try:
        return ctypes.string_at(ptr).decode()
    finally:
        _libs()[0].free(ptr)


def preload() -> None:
    """Do, before any vCPU thread is filtered, what one would otherwise do later and trip the filter:
    import every module a vCPU thread may need (an import opens files): the crash path and the
    rare-exit records; and settle glibc malloc's one file read (:func:`_settle_malloc`)."""
    import traceback  # noqa: F401 - vmm_error

    from ..kvm import _exit_records  # noqa: F401 - decode_exit's records
    from . import crash  # noqa: F401 - vmm_error, CrashInfo, capture_vcpu

    _settle_malloc()


@functools.cache
def _settle_malloc() -> None:
    """glibc opens /proc/sys/vm/overcommit_memory the first time a thread's malloc heap shrinks
    (malloc/arena.c check_may_shrink_heap, cached in a static for the process).  Seen in the kvm tier:
    a console flood freed enough on a vCPU thread to shrink its heap, and the filter stopped the VM on
    that openat.  So shrink one here, on a short-lived unfiltered thread: 64 frees of 64 KiB (below
    the mmap threshold, so in the thread's own heap) leave a top chunk above the trim threshold."""
    def churn() -> None:
        buffers = [bytearray((64 << 10) - 64) for _ in range(64)]
        del buffers

    t = threading.Thread(target=churn, name="pvhboot-malloc-settle")
    t.start()
    t.join()


class Violation:
    """One refused syscall: the vCPU whose thread made it, that thread's id, ``name(args)``."""

    __slots__ = ("vcpu", "tid", "call")

    def __init__(self, vcpu: int, tid: int, call: str) -> None:
        self.vcpu, self.tid, self.call = vcpu, tid, call

    def __repr__(self) -> str:
        return f"Violation(vcpu={self.vcpu}, tid={self.tid}, call={self.call!r})"


_INDEX = struct.Struct("<I")


class VcpuSandbox:
    """The filter for one VM's vCPU threads and the supervisor process that answers their listeners.

    ``on_violation(Violation)`` is called on a reader thread of the VMM for every refused syscall (the
    call itself fails with EPERM); :attr:`violations` keeps them all, in order, once :meth:`stop` returned.
    """

    def __init__(self, on_violation) -> None:
        vcpu_filter_program()  # SeccompUnavailable here, before anything is built or any guest code runs
        preload()
        self._on_violation = on_violation
        self.violations: list[Violation] = []
        self._sock: socket.socket | None = None
        self._program = b""
        self._extra_ioctls: set[int] = set()
        self._child = 0
        self._reader: threading.Thread | None = None

    # --- on the VMM's thread, before and after the vCPU threads ---
    def allow_ioctls(self, *requests: int) -> None:
        """Before :meth:`start`: let the vCPU threads also issue these ioctl requests (a feature that
        runs KVM calls on the vCPU's own thread, e.g. a debugger's KVM_SET_GUEST_DEBUG)."""
        self._extra_ioctls.update(int(r) for r in requests)

    def start(self, keep_out: list[tuple[int, int]] = ()) -> None:
        """Fork the supervisor (before the vCPU threads start) and compile the filter for its socket.
        ``keep_out``: (host address, size) of guest RAM, marked MADV_DONTFORK so that the child shares
        none of it (a private mapping shared with a child would make every later guest write to an
        already touched page a copy-on-write fault in the VMM)."""
        libc, _ = _libs()
        for addr, size in keep_out:
            if libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(size), ctypes.c_int(mmap.MADV_DONTFORK)):
                e = ctypes.get_errno()
                raise OSError(e, f"madvise(MADV_DONTFORK) of guest RAM at {addr:#x}: {os.strerror(e)}")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._program = vcpu_filter_program(parent.fileno(), tuple(sorted(self._extra_ioctls)))
        pid = os.fork()
        if pid == 0:  # the supervisor: nothing of the VMM but the socket and libseccomp
            code = 0
            try:
                # Ctrl-C reaches the whole process group: the VMM handles it, the supervisor goes on
                # answering until the VMM shuts the socket.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                parent.close()
                _supervisor_main(child)
            except BaseException:  # noqa: BLE001 - never return into the VMM's code in the child
                code = 1
            os._exit(code)
        child.close()
        self._sock, self._child = parent, pid
        self._reader = threading.Thread(target=self._read_reports, name="pvhboot-seccomp", daemon=True)
        self._reader.start()

    def stop(self) -> None:
        """After the vCPU threads are joined: the supervisor answers what is pending, reports and exits."""
        if self._sock is None:
            return
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._reader.join(10)
        self._sock.close()
        self._sock = None
        try:
            os.waitpid(self._child, 0)
        except ChildProcessError:
            pass

    def _read_reports(self) -> None:
        sock = self._sock
        while True:
            try:
                line = sock.recv(4096)
            except OSError:
                return
            if not line:
                return
            index, tid, call = line.decode(errors="replace").split("\t", 2)
            v = Violation(int(index), int(tid), call)
            self.violations.append(v)
            self._on_violation(v)

    # --- on each vCPU thread ---
    def enter(self, index: int) -> None:
        """Load the filter on the calling thread (irreversible) and hand its listener to the supervisor."""
        libc, _ = _libs()
        buf = ctypes.create_string_buffer(self._program, len(self._program))
        prog = sabi.sock_fprog(len(self._program) // sabi.SOCK_FILTER_SIZE, ctypes.addressof(buf))
        if libc.prctl(ctypes.c_int(sabi.PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), ctypes.c_ulong(0),
                      ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(e)}")
        fd = libc.syscall(ctypes.c_long(sabi.NR_seccomp), ctypes.c_long(sabi.SECCOMP_SET_MODE_FILTER),
                          ctypes.c_long(sabi.SECCOMP_FILTER_FLAG_NEW_LISTENER), ctypes.byref(prog))
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"seccomp(SECCOMP_SET_MODE_FILTER, NEW_LISTENER): {os.strerror(e)}")
        try:  # from here on only ALLOWED syscalls
            self._sock.sendmsg([_INDEX.pack(index)],
                               [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        finally:
            os.close(fd)


def _supervisor_main(sock: socket.socket) -> None:
    """The forked supervisor: receive listeners, answer every notification EPERM after reporting it."""
    _, lib = _libs()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    listeners: dict[int, int] = {}  # listener fd -> vCPU index
    while True:
        for fd, events in poller.poll():
            if fd == sock.fileno():
                msg, anc, _, _ = sock.recvmsg(_INDEX.size, socket.CMSG_SPACE(array.array("i").itemsize))
                if not msg:
                    return  # the VMM has joined its vCPU threads
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        lfd = array.array("i", data[:array.array("i").itemsize])[0]
                        listeners[lfd] = _INDEX.unpack(msg)[0]
                        poller.register(lfd, select.POLLIN)
            elif events & select.POLLIN:
                req = sabi.seccomp_notif()
                if lib.seccomp_notify_receive(fd, ctypes.byref(req)) < 0:
                    continue  # the call was interrupted (a kick) before it was read; it is retried
                call = f"{syscall_name(req.data.nr, req.data.arch)}({', '.join(f'{a:#x}' for a in req.data.args)})"
                try:
                    sock.send(f"{listeners[fd]}\t{req.pid}\t{call}".encode())
                finally:
                    resp = sabi.seccomp_notif_resp(id=req.id, val=0, error=-errno.EPERM, flags=0)
                    lib.seccomp_notify_respond(fd, ctypes.byref(resp))  # fails harmlessly if interrupted
            elif events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                poller.unregister(fd)  # its thread has exited
                del listeners[fd]
                os.close(fd)
