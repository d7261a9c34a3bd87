"""The rig's inner harness (tests/rig/inner_checks.py) boots a case again only when the guest
triple-faulted or timed out, and says so: stand-in cases here are small Python
programs that print what pvhboot would (the report heads come from pvhboot's own crash formatter)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "inner_checks", Path(__file__).resolve().parents[1] / "rig" / "inner_checks.py")
inner_checks = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(inner_checks)

from pvhboot.vmm.crash import CrashInfo, format_crash_report  # noqa: E402


def _head(kind: str, detail: str) -> str:
    return format_crash_report(CrashInfo(kind=kind, vcpu=0, detail=detail)).splitlines()[0]


HEADS = {"fault": _head("triple fault", "KVM_EXIT_SHUTDOWN (the guest triple-faulted)"),
         "late": _head("triple fault", "KVM_EXIT_SHUTDOWN (the guest triple-faulted)"),
         "timeout": _head("timeout", "wall-clock limit of 90 s reached; vCPUs stopped"),
         "vmm": _head("vmm error", "RuntimeError in a device"),
         "other": "pvhboot: error: something else"}


def _case(tmp_path, outcomes: list[str], retries: int) -> dict:
    """A case whose Nth run behaves as outcomes[N]: 'fault' (early triple fault), 'timeout' (early
    timeout), 'late' (triple fault after the first mark), 'vmm' (a VMM error), 'other' (an error
    line) or 'ok'."""
    counter = tmp_path / "n"
    counter.write_text("0")
    prog = f"""
import sys
from pathlib import Path
p = Path({str(counter)!r}); n = int(p.read_text()); p.write_text(str(n + 1))
kind = {outcomes!r}[min(n, {len(outcomes) - 1})]
if kind == "ok":
    print("MARK-UP"); print("MARK-EXIT"); sys.exit(0)
if kind == "late":
    print("MARK-UP")
print({HEADS!r}[kind], file=sys.stderr)
sys.exit(1)
"""
    return {"name": "c", "argv": [sys.executable, "-c", prog], "timeout": 30,
            "marks": ["MARK-UP", "MARK-EXIT"], "retries": retries}


@pytest.mark.parametrize("outcomes,retries,rc,attempts,flaky", [
    (["ok"], 1, 0, 1, False),
    (["fault", "ok"], 1, 0, 2, True),        # booted when tried again: passes, and says so
    (["timeout", "ok"], 1, 0, 2, True),
    (["timeout", "fault", "ok"], 2, 0, 3, True),
    (["fault", "fault"], 1, 1, 2, False),    # twice: the fault stands
    (["fault", "ok"], 0, 1, 1, False),       # a case that expects crashes is never retried
    (["late", "ok"], 1, 0, 2, True),         # after user space ran too (the rig showed one)
    (["vmm", "ok"], 1, 1, 1, False),         # a VMM bug: never retried
    (["other", "ok"], 1, 1, 1, False),       # another failure: not retried
])
def test_only_an_early_triple_fault_is_retried(tmp_path, outcomes, retries, rc, attempts, flaky):
    result = inner_checks.run_with_retries(_case(tmp_path, outcomes, retries))
    assert (result["rc"], result["attempts"], "flaky" in result) == (rc, attempts, flaky), result
    if flaky:
        assert result["flaky"].startswith("attempt 1 (wall ") and HEADS[outcomes[0]] in result["flaky"]


def test_every_failed_attempt_is_kept(tmp_path):
    # With two retries a case can fail twice: both show, in order, whether it then passed or not.
    result = inner_checks.run_with_retries(_case(tmp_path, ["timeout", "fault", "ok"], 2))
    text = result["flaky"]
    assert text.index("attempt 1 (wall ") < text.index(HEADS["timeout"]) < text.index("attempt 2 (wall ")
    assert text.index("attempt 2 (wall ") < text.rindex(HEADS["fault"])
    result = inner_checks.run_with_retries(_case(tmp_path, ["timeout", "late", "fault"], 2))
    assert result["rc"] == 1 and result["attempts"] == 3 and "flaky" not in result
    assert HEADS["fault"] in result["stderr"]  # the last attempt's own
    earlier = result["earlier_attempts"]
    assert earlier.startswith("attempt 1 (wall ") and HEADS["timeout"] in earlier and "attempt 2 (wall " in earlier
    assert "attempt 3" not in earlier


def test_a_shutdown_exit_traced_by_the_outer_kernel_is_added_to_the_report(tmp_path, monkeypatch):
    # A stand-in tracefs: arming writes the SVM_EXIT_SHUTDOWN filter; what the kernel recorded during
    # the case lands in its stderr (and "shutdown_trace"), and the trace is cleared for the next case.
    kvm_exit = tmp_path / "events" / "kvm" / "kvm_exit"
    kvm_exit.mkdir(parents=True)
    (tmp_path / "trace").write_text("")
    monkeypatch.setattr(inner_checks, "TRACING", str(tmp_path))
    assert inner_checks.arm_shutdown_trace() == ""
    assert (kvm_exit / "filter").read_text() == "exit_reason == 127" and (kvm_exit / "enable").read_text() == "1"
    line = ("python3-118 [000] ..... 10.848618: kvm_exit: vcpu 0 reason shutdown rip 0xffffffff810606f9 "
            "info1 0x0 info2 0x0 intr_info 0x80000403 error_code 0x00000000")
    case = _case(tmp_path, ["fault"], 0)
    case["argv"][-1] = (f"open({str(tmp_path / 'trace')!r}, 'w').write('# tracer: nop\\n' + {line!r} + '\\n')\n"
                        + case["argv"][-1])
    result = inner_checks.run_with_retries(case)
    assert result["shutdown_trace"] == [line]
    assert result["stderr"].endswith(f"outer kvm_exit (SHUTDOWN): {line}\n")
    assert (tmp_path / "trace").read_text() == ""


def test_no_tracefs_leaves_the_cases_running(tmp_path, monkeypatch):
    monkeypatch.setattr(inner_checks, "TRACING", str(tmp_path / "absent"))
    assert inner_checks.arm_shutdown_trace().startswith(("FileNotFoundError", "OSError"))
    result = inner_checks.run_with_retries(_case(tmp_path, ["ok"], 0))
    assert result["rc"] == 0 and "shutdown_trace" not in result


def test_a_shortened_report_keeps_the_first_sign_of_trouble_pvhboot_printed():
    # The rig's harnesses shorten crash reports to head + tail; the first oops (vmm/crash.FirstTrouble)
    # sits between them and must survive, whatever the report's length.
    from pvhboot.vmm.crash import FirstTrouble

    console = [b"[    1.0] boot"] * 30 + [b"[    7.4] traps: PANIC: double fault, error_code: 0x0",
                                         b"[    7.4] RIP: 0010:first_culprit+0x10/0x20"]
    console += [b"[    7.5]  ? asm_exc_page_fault+0x9/0x30"] * 200 + [b"[    9.6] Kernel panic - not syncing: x"]
    ft = FirstTrouble()
    ft(console)
    report = format_crash_report(CrashInfo("timeout", 0, "wall-clock limit of 60 s reached"),
                                 [ln.decode() for ln in console[-100:]], first_trouble=ft)
    short = inner_checks.shorten(report, 1000)
    assert len(short) < len(report)
    assert short.startswith("pvhboot: guest stopped: timeout on vCPU 0")
    assert "first sign of trouble (console line 31):" in short and "first_culprit+0x10/0x20" in short
    assert short.endswith(report[-500:])
    assert inner_checks.shorten(report, len(report)) == report
    assert inner_checks.first_trouble("pvhboot: guest stopped: timeout\nlast 3 console lines:\n") == ""
