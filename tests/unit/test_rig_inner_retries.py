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


def test_a_case_that_provokes_a_crash_is_retried_only_before_its_sign(tmp_path):
    # The panic cases end in a triple fault or a timeout by design: with "expect" (the console sign of
    # the crash they provoke) that stop is their result, and only a stop before the sign is booted again.
    case = _case(tmp_path, ["fault", "late"], 2)
    case["expect"] = "MARK-UP"  # 'late' prints it, then stops like the panic cases do
    result = inner_checks.run_with_retries(case)
    assert (result["rc"], result["attempts"]) == (1, 2) and HEADS["fault"] in result["flaky"]
    case = _case(tmp_path, ["late", "ok"], 2)
    case["expect"] = "MARK-UP"
    result = inner_checks.run_with_retries(case)
    assert (result["rc"], result["attempts"]) == (1, 1) and "flaky" not in result


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


# Rig scripts that boot the guest themselves (the virtio group's shell, the gdb group's sessions) ask
# `inner_checks.py --retried` whether to boot again: the same rule, through a file and an exit status.
INNER_CHECKS = Path(__file__).resolve().parents[1] / "rig" / "inner_checks.py"


@pytest.mark.parametrize("kind,retried", [("fault", True), ("timeout", True), ("vmm", False), ("other", False)])
def test_the_retried_command_applies_the_rule_to_a_saved_stderr(tmp_path, kind, retried):
    import json
    import subprocess

    err = tmp_path / "err"
    err.write_text("pvhboot run: the guest stopped before the command finished; its console:\n  [ 0.6] x\n"
                   + HEADS[kind] + "\n" + "  RIP=0x0\n" * 2000)
    p = subprocess.run([sys.executable, str(INNER_CHECKS), "--retried", "disk", "2", str(err)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == (0 if retried else 1), p.stderr
    if not retried:
        assert p.stdout == ""
        return
    line, = p.stdout.splitlines()
    record = json.loads(line.removeprefix("INNER-RETRIED "))
    assert (record["name"], record["attempt"]) == ("disk", 2)
    assert HEADS[kind] in record["report"] and len(record["report"]) < 5000  # shortened, head kept


def test_the_host_side_warns_once_per_retried_boot(recwarn):
    sys.path.insert(0, str(INNER_CHECKS.parent))
    try:
        from rigrun import warn_about_inner_retries
    finally:
        sys.path.remove(str(INNER_CHECKS.parent))
    good = inner_checks.retried_line("fs", 1, HEADS["timeout"] + "\nregisters")
    out = "== fs\r\n" + good + "\r\nFS-RC=0\r\nINNER-RETRIED {\"name\": [   7.1] kvm: interleaved\r\n"
    records = warn_about_inner_retries(out)
    assert [r["name"] for r in records] == ["fs", "?"]
    texts = [str(w.message) for w in recwarn]
    assert len(texts) == 2 and texts[0].startswith("rig case fs: triple fault or timeout, booted again "
                                                   "(failed attempt 1 of at most 3)")
    assert HEADS["timeout"] in texts[0] and "interleaved" in texts[1]
    assert warn_about_inner_retries("== fs\nFS-RC=0\n") == []


def test_the_virtio_scripts_boot_loop_retries_only_random_stops(tmp_path):
    # The shell function of tests/rig/test_virtio_linux.py, run by the host's sh with a stand-in boot
    # command: a triple fault, then success -> one INNER-RETRIED line and the successful attempt's
    # output only; a VMM error is never booted again; three random stops end with the last one.
    import re
    import subprocess

    sys.path.insert(0, str(INNER_CHECKS.parent))
    try:
        import test_virtio_linux
    finally:
        sys.path.remove(str(INNER_CHECKS.parent))
    func = re.search(r"^retrying\(\) \{.*?^\}$", test_virtio_linux.SCRIPT, re.M | re.S).group(0)
    (tmp_path / "inner_checks.py").write_bytes(INNER_CHECKS.read_bytes())

    def run(outcomes):
        case = _case(tmp_path, outcomes, 0)
        script = f"W={tmp_path}\n{func}\nretrying disk {' '.join(map(_sh_quote, case['argv']))}\necho RC=$?\n"
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)

    p = run(["fault", "ok"])
    assert p.stdout.count("INNER-RETRIED ") == 1 and '"name": "disk", "attempt": 1' in p.stdout
    assert p.stdout.count("MARK-UP") == 1 and p.stdout.rstrip().endswith("RC=0") and p.stderr == ""
    p = run(["vmm", "ok"])
    assert "INNER-RETRIED" not in p.stdout and p.stdout.rstrip().endswith("RC=1") and HEADS["vmm"] in p.stderr
    p = run(["timeout", "fault", "timeout", "ok"])
    assert p.stdout.count("INNER-RETRIED ") == 2 and p.stdout.rstrip().endswith("RC=1")
    assert HEADS["timeout"] in p.stderr  # the last attempt's own report


def _sh_quote(s: str) -> str:
    import shlex
    return shlex.quote(s)


def test_the_gdb_groups_sessions_boot_again_only_on_random_stops(capsys):
    # The `retrying` of tests/rig/test_gdb_linux.py's in-rig script, run here on stand-in boots.
    import re

    sys.path.insert(0, str(INNER_CHECKS.parent))
    try:
        import test_gdb_linux
    finally:
        sys.path.remove(str(INNER_CHECKS.parent))
    compile(test_gdb_linux.INNER, "gdb-inner.py", "exec")  # the whole script at least parses
    src = re.search(r"^def retrying\(.*?(?=^\S)", test_gdb_linux.INNER, re.M | re.S).group(0)
    ns = {"case": {"retries": 2}, "retried_line": inner_checks.retried_line}
    exec(src, ns)

    def boots(*outcomes):
        it = iter(outcomes)
        calls = []

        def boot():
            calls.append(1)
            rc, kind = next(it)
            return rc, HEADS.get(kind, "") + "\nmore"
        return boot, calls

    boot, calls = boots((1, "fault"), (0, "ok"))
    ns["retrying"]("gdb-run", boot)
    assert len(calls) == 2 and capsys.readouterr().out.count("INNER-RETRIED ") == 1
    boot, calls = boots((1, "vmm"), (0, "ok"))
    ns["retrying"]("gdb-run", boot)
    assert len(calls) == 1 and capsys.readouterr().out == ""
    boot, calls = boots((1, "timeout"), (1, "fault"), (1, "timeout"), (0, "ok"))
    ns["retrying"]("gdb-kallsyms", boot)
    assert len(calls) == 3 and capsys.readouterr().out.count("INNER-RETRIED ") == 2
