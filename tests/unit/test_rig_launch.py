"""The rig launcher's supervision, with a stand-in for QEMU (a shell script): no QEMU, no KVM."""
from __future__ import annotations

import pytest

from pvhboot.rig import launch


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


def test_timeout_after_ready_says_where():
    with pytest.raises(launch.RigError) as e:
        launch._run_qemu(_fake("echo RIG-READY; echo RIG-BEGIN; echo last-words; exec sleep 30"), timeout=1,
                         echo=None, ready_timeout=0.5)
    assert not isinstance(e.value, launch.RigNotReady)
    assert "while running the command" in str(e.value) and "last-words" in str(e.value)
