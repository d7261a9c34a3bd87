"""The rig launcher's supervision, with a stand-in for QEMU (a shell script): no QEMU, no KVM."""
from __future__ import annotations

import pytest

from pvhboot.rig import launch


@pytest.fixture(autouse=True)
def _private_console_logs(monkeypatch, tmp_path):
    # The stand-ins' consoles go to this test's folder, never over the real rig's logs (which
    # .ci/run shows when a run fails).
    monkeypatch.setattr(launch, "CONSOLE_LOG", tmp_path / "last-console.log")
    monkeypatch.setattr(launch, "FAILED_CONSOLE_LOG", tmp_path / "last-console-failed.log")


def _fake(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_result_and_output_are_parsed():
    res = launch._run_qemu(_fake("echo boot; echo RIG-READY kvm=/dev/kvm; echo RIG-BEGIN; echo hi; "
                                 "echo 'RIG-RESULT rc=3'"), timeout=30, echo=None, ready_timeout=10)
    assert (res.rc, res.output) == (3, "hi\n")
    assert launch.CONSOLE_LOG.read_text().splitlines()[-1] == "RIG-RESULT rc=3"


def test_no_sign_of_life_is_not_ready_and_kept_short():
    with pytest.raises(launch.RigNotReady) as e:
        launch._run_qemu(_fake("echo booting; exec sleep 30"), timeout=60, echo=None, ready_timeout=0.5)
    assert "no RIG-READY" in str(e.value) and "booting" in str(e.value)
    assert e.value.waited < 10


def test_a_panic_before_ready_is_diagnosed_not_retried():
    with pytest.raises(launch.RigError) as e:
        launch._run_qemu(_fake("echo 'Kernel panic - not syncing: VFS'; exec sleep 30"), timeout=60, echo=None,
                         ready_timeout=0.5)
    assert not isinstance(e.value, launch.RigNotReady)
    assert "outer kernel panicked" in str(e.value)


def test_a_panic_while_the_command_runs_is_the_rigs_failure():
    # After RIG-BEGIN a panic (not out of memory) is the outer kernel's failure: run_in_rig boots again.
    with pytest.raises(launch.RigOuterCrash) as e:
        launch._run_qemu(_fake("echo RIG-READY; echo RIG-BEGIN; echo inner-boot; "
                               "echo '[ 108.2] Kernel panic - not syncing: corrupted stack end detected inside "
                               "scheduler'"), timeout=60, echo=None, ready_timeout=10)
    assert "outer kernel panicked: [ 108.2] Kernel panic" in str(e.value) and "inner-boot" in str(e.value)


@pytest.mark.parametrize("reset_log_text,retried", [("CPU Reset (CPU 0)\nTriple fault\n", True),
                                                    ("CPU Reset (CPU 0)\n", False), (None, False)])
def test_an_outer_triple_fault_while_the_command_runs_is_the_rigs_failure(tmp_path, reset_log_text, retried):
    # QEMU exits on the guest reset (-no-reboot) with nothing on the console; its -d cpu_reset log
    # says whether the outer guest triple-faulted.  Without that word it stays a plain RigError.
    reset_log = tmp_path / "qemu-reset.log"
    if reset_log_text is not None:
        reset_log.write_text(reset_log_text)
    with pytest.raises(launch.RigError) as e:
        launch._run_qemu(_fake("echo RIG-READY; echo RIG-BEGIN; echo inner-boot"), timeout=60, echo=None,
                         ready_timeout=10, reset_log=reset_log)
    assert isinstance(e.value, launch.RigOuterCrash) == retried
    assert ("the outer guest triple-faulted" in str(e.value)) == retried and "inner-boot" in str(e.value)


def test_out_of_memory_while_the_command_runs_is_not_retried():
    with pytest.raises(launch.RigError) as e:
        launch._run_qemu(_fake("echo RIG-READY; echo RIG-BEGIN; echo 'Out of memory: Killed process 99'; "
                               "echo 'Kernel panic - not syncing: System is deadlocked on memory'"),
                         timeout=60, echo=None, ready_timeout=10)
    assert not isinstance(e.value, (launch.RigOuterCrash, launch.RigStalled, launch.RigNotReady))
    assert "ran out of memory" in str(e.value)


def test_timeout_after_ready_says_where():
    with pytest.raises(launch.RigError) as e:
        launch._run_qemu(_fake("echo RIG-READY; echo RIG-BEGIN; echo last-words; exec sleep 30"), timeout=1,
                         echo=None, ready_timeout=0.5)
    assert not isinstance(e.value, launch.RigNotReady)
    assert "while running the command" in str(e.value) and "last-words" in str(e.value)


def test_heartbeats_are_not_command_output():
    res = launch._run_qemu(_fake("echo RIG-READY; echo RIG-BEGIN; echo a; echo 'RIG-HEARTBEAT t=10 uptime=1';"
                                 " echo b; echo 'RIG-RESULT rc=0'"), timeout=30, echo=None, ready_timeout=10)
    assert res.output == "a\nb\n"


def test_a_silent_outer_guest_is_a_stall_not_a_timeout():
    # Ready, began, then nothing: no heartbeat for stall_timeout -> RigStalled long before the timeout.
    with pytest.raises(launch.RigStalled) as e:
        launch._run_qemu(_fake("echo RIG-READY; echo RIG-BEGIN; echo last-words; exec sleep 60"), timeout=60,
                         echo=None, ready_timeout=10, stall_timeout=1)
    msg = str(e.value)
    assert "rig stalled" in msg and "last-words" in msg
    assert "QEMU monitor" in msg


def test_a_stall_dump_is_given_the_jiffies_address_the_rig_printed(monkeypatch):
    # The rig's /init prints jiffies_64's address; the stall dump reads the outer clock there.
    seen = []
    monkeypatch.setattr(launch, "_qmp_outer_state", lambda path, jiffies=None: seen.append(jiffies) or "")
    with pytest.raises(launch.RigStalled):
        launch._run_qemu(_fake("echo 'RIG-SYMS jiffies_64=ffffffff82a05a00'; echo RIG-READY; echo RIG-BEGIN; "
                               "exec sleep 60"), timeout=60, echo=None, ready_timeout=10, stall_timeout=0.5)
    assert seen == [0xFFFFFFFF82A05A00]


def test_a_beating_heart_is_not_a_stall():
    # Heartbeats keep a slow command alive: it ends in the command's own result, not a stall.
    script = ("echo RIG-READY; echo RIG-BEGIN; for i in 1 2 3 4 5 6; do sleep 0.3; echo RIG-HEARTBEAT t=$i; done; "
              "echo 'RIG-RESULT rc=4'")
    res = launch._run_qemu(_fake(script), timeout=30, echo=None, ready_timeout=10, stall_timeout=1)
    assert (res.rc, res.output) == (4, "")


def test_run_in_rig_boots_again_after_a_stall(monkeypatch, tmp_path):
    # The first outer boot stalls, the second finishes: the result says it took two.
    calls = []

    def fake_run(argv, timeout, echo, ready_timeout, stall_timeout, qmp, reset_log):
        calls.append(argv)
        # the outer guest's resets are logged where _run_qemu looks for "Triple fault"
        assert argv[argv.index("-d") + 1] == "cpu_reset" and argv[argv.index("-D") + 1] == str(reset_log)
        if len(calls) == 1:
            launch.CONSOLE_LOG.write_text("stalled console\n")
            raise launch.RigStalled("rig stalled: test", "")
        return launch.RigResult(rc=0, output="ok\n", wall_time=1.0)

    _stand_in_for_qemu(monkeypatch, tmp_path, fake_run)
    res = launch.run_in_rig("true", timeout=30)
    assert (res.rc, res.attempts, len(calls)) == (0, 2, 2)
    assert "-smp" in calls[0] and calls[0][calls[0].index("-smp") + 1] == str(launch.OUTER_CPUS)
    assert launch.CONSOLE_LOG.with_name("last-console-attempt1.log").read_text() == "stalled console\n"


def test_run_in_rig_boots_again_after_an_outer_panic(monkeypatch, tmp_path):
    calls = []

    def fake_run(*args):
        calls.append(args)
        launch.CONSOLE_LOG.write_text(f"console {len(calls)}\n")
        if len(calls) == 1:
            raise launch.RigOuterCrash("outer kernel panicked: test", "")
        return launch.RigResult(rc=0, output="ok\n", wall_time=1.0)

    _stand_in_for_qemu(monkeypatch, tmp_path, fake_run)
    res = launch.run_in_rig("true", timeout=30)
    assert (res.rc, res.attempts) == (0, 2)
    assert launch.CONSOLE_LOG.with_name("last-console-attempt1.log").read_text() == "console 1\n"


def test_run_in_rig_gives_up_after_its_attempts(monkeypatch, tmp_path):
    def always_stalls(*args):
        launch.CONSOLE_LOG.write_text("")
        raise launch.RigStalled("rig stalled: again", "")

    _stand_in_for_qemu(monkeypatch, tmp_path, always_stalls)
    with pytest.raises(launch.RigStalled):
        launch.run_in_rig("true", timeout=30, attempts=2)
    assert launch.FAILED_CONSOLE_LOG.exists()  # kept for .ci/run, whatever later rig runs write


def test_a_failed_run_keeps_its_console(monkeypatch, tmp_path):
    def fails(*args):
        launch.CONSOLE_LOG.write_text("the failed run's console\n")
        raise launch.RigError("rig failed to come up: test")

    _stand_in_for_qemu(monkeypatch, tmp_path, fails)
    with pytest.raises(launch.RigError):
        launch.run_in_rig("true", timeout=30)
    assert launch.FAILED_CONSOLE_LOG.read_text() == "the failed run's console\n"


def _stand_in_for_qemu(monkeypatch, tmp_path, run_qemu) -> None:
    """run_in_rig with ``run_qemu`` for each outer boot, an empty rig archive and no QEMU needed."""
    monkeypatch.setattr(launch, "_run_qemu", run_qemu)
    monkeypatch.setattr(launch, "build_rig", lambda rebuild=False: _empty(tmp_path))
    monkeypatch.setattr(launch, "outer_kernel", lambda: tmp_path / "vmlinux")
    monkeypatch.setattr(launch.shutil, "which", lambda name: "/usr/bin/" + name)


def _empty(tmp_path):
    rig = tmp_path / "rig.cpio"
    rig.write_bytes(b"")
    return rig


def test_an_outer_lockup_report_is_a_stall_even_while_the_console_talks(monkeypatch):
    # The outer kernel reports a soft lockup and keeps printing (its report, heartbeats from the other
    # CPU): that is a wedged outer guest, ended after LOCKUP_GRACE_S, not at the timeout.
    monkeypatch.setattr(launch, "LOCKUP_GRACE_S", 0.5)
    script = ("echo RIG-READY; echo RIG-BEGIN; "
              "echo '[ 288.1] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [python3:123]'; "
              "while :; do echo ' on_each_cpu_cond_mask+0x20/0x40'; echo RIG-HEARTBEAT; sleep 0.1; done")
    with pytest.raises(launch.RigStalled) as e:
        launch._run_qemu(_fake(script), timeout=60, echo=None, ready_timeout=10, stall_timeout=30)
    assert "reported a lockup (" in str(e.value) and "soft lockup - CPU#0" in str(e.value)


def test_a_chatty_console_without_heartbeat_is_a_stall():
    # Lines keep coming (say, a kernel warning repeating) but the watchdog's heartbeat has stopped.
    script = "echo RIG-READY; echo RIG-BEGIN; while :; do echo kernel-noise; sleep 0.1; done"
    with pytest.raises(launch.RigStalled) as e:
        launch._run_qemu(_fake(script), timeout=60, echo=None, ready_timeout=10, stall_timeout=1)
    assert "heartbeat stopped" in str(e.value)
