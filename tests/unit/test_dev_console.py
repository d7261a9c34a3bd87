"""devices/console.py: the Ctrl-A escape parser (pure) and the stdin reader on a pipe and a pty."""
from __future__ import annotations

import os
import termios
import threading

from pvhboot.devices.console import ConsoleInput, EscapeParser
from pvhboot.devices.events import EventLog, VmEventKind


def test_plain_bytes_pass_through():
    assert EscapeParser().feed(b"ls -l\r") == (b"ls -l\r", [])


def test_ctrl_a_x_quits_and_drops_the_rest():
    assert EscapeParser().feed(b"ab\x01xcd") == (b"ab", ["quit"])
    assert EscapeParser().feed(b"\x01X") == (b"", ["quit"])


def test_ctrl_a_ctrl_a_sends_one_ctrl_a():
    assert EscapeParser().feed(b"a\x01\x01b") == (b"a\x01b", [])


def test_escape_state_survives_across_reads():
    p = EscapeParser()
    assert p.feed(b"abc\x01") == (b"abc", [])
    assert p.feed(b"x") == (b"", ["quit"])
    p = EscapeParser()
    p.feed(b"\x01")
    assert p.feed(b"\x01z") == (b"\x01z", [])


def test_help_and_unknown_commands_are_swallowed():
    assert EscapeParser().feed(b"\x01h1\x01q2") == (b"12", ["help"])


def test_ctrl_c_goes_to_the_guest():
    assert EscapeParser().feed(b"\x03") == (b"\x03", [])


class Collector:
    def __init__(self) -> None:
        self.data = bytearray()
        self.changed = threading.Condition()

    def feed(self, data: bytes) -> None:
        with self.changed:
            self.data += data
            self.changed.notify_all()

    def wait_for(self, n: int) -> bytes:
        with self.changed:
            self.changed.wait_for(lambda: len(self.data) >= n, timeout=10)
            return bytes(self.data)


def test_pipe_stdin_passes_everything_and_stops_at_eof():
    r, w = os.pipe()
    got, log = Collector(), EventLog()
    con = ConsoleInput(got.feed, log, stdin_fd=r)
    con.start()
    os.write(w, b"echo \x01x hi\n")
    os.close(w)
    con._thread.join(timeout=10)  # EOF ends the thread on its own
    assert bytes(got.data) == b"echo \x01x hi\n"  # not a TTY: no escape handling
    assert con.eof and log.events == []
    con.stop()
    os.close(r)


def test_tty_raw_mode_quit_and_restore():
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        assert before[3] & termios.ICANON
        got, log = Collector(), EventLog()
        quit_seen = threading.Event()

        def sink(event):
            log(event)
            quit_seen.set()

        with ConsoleInput(got.feed, sink, stdin_fd=slave, help_out=lambda t: None):
            during = termios.tcgetattr(slave)
            assert not during[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
            assert not during[0] & termios.ICRNL
            os.write(master, b"a\x03\x01\x01b")
            assert got.wait_for(4) == b"a\x03\x01b"
            os.write(master, b"\x01x")
            assert quit_seen.wait(10)
        assert [(e.kind, e.source) for e in log.events] == [(VmEventKind.QUIT, "console")]
        after = termios.tcgetattr(slave)
        assert after[3] == before[3] and after[0] == before[0]
    finally:
        os.close(master)
        os.close(slave)


def test_stop_restores_terminal_even_if_never_typed():
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        con = ConsoleInput(lambda d: None, lambda e: None, stdin_fd=slave).start()
        con.stop()
        con.stop()  # idempotent
        assert termios.tcgetattr(slave)[3] == before[3]
    finally:
        os.close(master)
        os.close(slave)
