"""Host stdin -> the guest's UART, with QEMU's ``Ctrl-A`` escape when stdin is a terminal.

:class:`ConsoleInput` runs one reader thread.  On a TTY it switches the terminal to raw input (no
echo, no line editing, no signals: Ctrl-C goes to the guest; output processing stays on so host
messages still render, as QEMU's stdio backend does) and restores it on every exit path: ``stop()``,
the context manager, and an atexit hook.  Keys: ``Ctrl-A x`` quits (``VmEvent(QUIT,
source="console")``), ``Ctrl-A Ctrl-A`` sends one Ctrl-A, ``Ctrl-A h`` prints help; any other key
after Ctrl-A is swallowed, as in QEMU.  A non-TTY stdin is passed through untouched; at EOF the
thread stops feeding and the guest keeps running.

:class:`EscapeParser` is the pure part, testable without a terminal.
"""
from __future__ import annotations

import atexit
import os
import select
import sys
import termios
import threading
from collections.abc import Callable

from .events import EventSink, VmEvent, VmEventKind

CTRL_A = 0x01
HELP_TEXT = (
    "\r\nC-a h    print this help\r\n"
    "C-a x    exit pvhboot\r\n"
    "C-a C-a  send C-a to the guest\r\n"
)


class EscapeParser:
    """Splits raw console bytes into guest input and escape commands; keeps state across reads."""

    def __init__(self, escape: int = CTRL_A) -> None:
        self.escape = escape
        self._armed = False  # the previous byte was the escape key

    def feed(self, data: bytes) -> tuple[bytes, list[str]]:
        """Returns (bytes for the guest, commands) where commands are "quit" and "help".

        Bytes after a quit are dropped: the session is over."""
        out = bytearray()
        commands: list[str] = []
        esc = self.escape
        for b in data:
            if self._armed:
                self._armed = False
                if b == esc:
                    out.append(esc)
                elif b in (0x78, 0x58):  # 'x', 'X'
                    commands.append("quit")
                    return bytes(out), commands
                elif b in (0x68, 0x48, 0x3F):  # 'h', 'H', '?'
                    commands.append("help")
                # anything else after the escape is swallowed
            elif b == esc:
                self._armed = True
            else:
                out.append(b)
        return bytes(out), commands


def set_raw_input(fd: int) -> list:
    """Put a terminal in raw input mode; returns the old attributes for :func:`restore_terminal`."""
    old = termios.tcgetattr(fd)
    new = termios.tcgetattr(fd)
    new[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
                | termios.IGNCR | termios.ICRNL | termios.IXON)
    new[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    new[6] = list(new[6])
    new[6][termios.VMIN] = 1
    new[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSAFLUSH, new)
    return old


def restore_terminal(fd: int, attrs: list) -> None:
    try:
        termios.tcsetattr(fd, termios.TCSADRAIN, attrs)
    except (termios.error, OSError):
        pass  # the terminal is gone; nothing left to restore


class ConsoleInput:
    """Feeds ``stdin_fd`` to ``feed`` (normally ``Serial16550.feed_input``) from a thread.

    ``events`` receives QUIT on Ctrl-A x.  ``escape`` forces escape handling on or off (default:
    on exactly when stdin is a TTY); ``raw`` likewise for raw mode."""

    def __init__(
        self,
        feed: Callable[[bytes], None],
        events: EventSink,
        stdin_fd: int | None = None,
        *,
        escape: bool | None = None,
        raw: bool | None = None,
        help_out: Callable[[str], None] | None = None,
    ) -> None:
        self._feed = feed
        self._events = events
        self._fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
        is_tty = os.isatty(self._fd)
        self._parser = EscapeParser() if (is_tty if escape is None else escape) else None
        self._raw = is_tty if raw is None else raw
        self._help_out = help_out or (lambda text: (sys.stderr.write(text), sys.stderr.flush()))
        self._saved_attrs: list | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False
        self.eof = False

    def start(self) -> ConsoleInput:
        if self._thread is not None:
            return self
        if self._raw:
            self._saved_attrs = set_raw_input(self._fd)
            atexit.register(self._restore)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="pvhboot-console", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the reader and restore the terminal (idempotent)."""
        self._stopping = True
        try:
            if self._thread is not None:
                if self._wake_w >= 0:
                    os.write(self._wake_w, b"x")
                self._thread.join(timeout=2.0)
                self._thread = None
        finally:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
            self._restore()

    def _restore(self) -> None:
        if self._saved_attrs is not None:
            restore_terminal(self._fd, self._saved_attrs)
            self._saved_attrs = None
            atexit.unregister(self._restore)

    def __enter__(self) -> ConsoleInput:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        fd, wake = self._fd, self._wake_r
        while not self._stopping:
            try:
                ready, _, _ = select.select([fd, wake], [], [])
            except (OSError, ValueError):
                return
            if wake in ready:
                return
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                self.eof = True  # EOF: stop feeding; the guest runs on
                return
            if self._parser is None:
                self._feed(data)
                continue
            data, commands = self._parser.feed(data)
            if data:
                self._feed(data)
            for command in commands:
                if command == "help":
                    self._help_out(HELP_TEXT)
                elif command == "quit":
                    self._events(VmEvent(VmEventKind.QUIT, source="console"))
                    return
