"""The device thread: waits on every queue's kick eventfd (and any extra fds a device watches) with a
selector and runs the queue work there, off the vCPU threads.  A device error that is not a driver
error (a bug, a host I/O failure) ends the VM through ``on_crash(exception)``, never the thread silently.
"""
from __future__ import annotations

import os
import selectors
import threading


class DeviceWorker:
    def __init__(self, transport, name: str, on_crash=None) -> None:
        self.transport = transport
        self.name = name
        self.on_crash = on_crash
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._stop_fd, selectors.EVENT_READ, None)
        for i, fd in enumerate(transport.notify_fds):
            self._sel.register(fd, selectors.EVENT_READ, ("queue", i))
        self._thread: threading.Thread | None = None
        self.kicks = 0  # kicks handled (tests and benchmarks read it)

    def watch(self, fd: int, callback) -> None:
        """Call ``callback()`` on this thread whenever ``fd`` is readable (a device's host side)."""
        self._sel.register(fd, selectors.EVENT_READ, ("fd", callback))

    def start(self) -> DeviceWorker:
        self._thread = threading.Thread(target=self._main, name=f"pvhboot-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _main(self) -> None:
        import signal

        # Device threads take no signals: SIGINT/SIGCHLD go to the main thread, SIGUSR1 to vCPUs.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - {
            signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL})
        try:
            while True:
                for key, _ in self._sel.select():
                    if key.data is None:
                        self._drain()
                        return
                    kind, arg = key.data
                    if kind == "queue":
                        try:
                            os.eventfd_read(key.fd)
                        except BlockingIOError:
                            continue
                        self.kicks += 1
                        self.transport.process(arg)
                    else:
                        arg()
        except BaseException as e:  # noqa: BLE001 - reported, then the VM stops
            if self.on_crash is not None:
                self.on_crash(e)
            else:
                raise

    def _drain(self) -> None:
        """On stop: serve what the guest queued before the VM stopped (a console's last line, the
        kick for which may still sit in its eventfd when the guest powers off right after)."""
        for i in range(len(self.transport.notify_fds)):
            self.transport.process(i)

    def stop(self) -> None:
        if self._thread is not None:
            os.eventfd_write(self._stop_fd, 1)
            self._thread.join(5)
            self._thread = None
        self._sel.close()
        if self._stop_fd >= 0:
            os.close(self._stop_fd)
            self._stop_fd = -1
