"""The run loop's kick (runloop.VmControl): a signal goes only to threads that are registered, and a
thread unregisters before it can finish, so a finished thread is never signalled (issue 10)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

from pvhboot.vmm.runloop import VmControl

# Hundreds of short-lived threads register, unregister and exit while the main thread kicks as fast
# as it can; glibc frees the stacks of finished detached threads beyond its cache, so a kick sent to
# a finished thread's ident crashes the process (the old code's SIGSEGV).  A child process, so that a
# crash fails this test instead of ending pytest.
CHURN = textwrap.dedent("""
    import signal, threading
    from pvhboot.vmm.runloop import VmControl, install_kick_handler, KICK_SIGNAL
    install_kick_handler()
    kicks = []
    signal.signal(KICK_SIGNAL, lambda *a: kicks.append(1))
    ctl = VmControl()
    def body(i):
        ctl.register(i)
        try:
            x = bytearray(1 << 16)  # touch some stack/heap
        finally:
            ctl.unregister(i)
    for wave in range(20):
        ts = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(32)]
        for t in ts:
            t.start()
        while any(t.is_alive() for t in ts):
            ctl.kick_all()
        for t in ts:
            t.join()
        ctl.kick_all()  # nobody registered: no signal at all
    assert ctl.threads == {}, ctl.threads
    print("ok")
""")


def test_kick_never_reaches_a_finished_thread():
    p = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, timeout=120)
    assert (p.returncode, p.stdout) == (0, b"ok\n"), p.stderr.decode(errors="replace")[-2000:]


def test_registration_is_the_liveness():
    ctl = VmControl()
    started, release = threading.Event(), threading.Event()

    def body():
        ctl.register(7)
        try:
            started.set()
            release.wait(10)
        finally:
            ctl.unregister(7)

    t = threading.Thread(target=body)
    t.start()
    started.wait(10)
    assert ctl.threads == {7: t.ident}
    release.set()
    t.join(10)
    assert ctl.threads == {}


def test_stop_first_request_wins_and_sets_stopping():
    ctl = VmControl()
    assert ctl.stop("debug_exit", 3) is True
    assert ctl.stop("timeout", 1) is False
    assert ctl.stopping and ctl.done.is_set()
    assert (ctl.request.reason, ctl.request.exit_code) == ("debug_exit", 3)
