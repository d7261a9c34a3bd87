"""compare/engine.py run_cells: a cell that crashed or timed out is booted again (``--retries``); one
that then boots is flaky, not a failed path, and the report says so (a stand-in for the cell runner)."""
from __future__ import annotations

import io

from rich.console import Console

from pvhboot.compare import engine
from pvhboot.compare.cells import Cell
from pvhboot.compare.report import print_flaky

TRIPLE = "pvhboot: guest stopped: triple fault on vCPU 0: KVM_EXIT_SHUTDOWN\nvCPU 0:\n  RIP=0xfff0\nmore\nmore"


def cells(*paths: str) -> list[Cell]:
    return [Cell(path=p, protocol="pvh", cpus=2, memory=256 << 20, kernel="k", cmdline="", collector="linux",
                 timeout=60) for p in paths]


def fake_runner(monkeypatch, script: dict[str, list[dict]]):
    """Each path's results, attempt after attempt; records how often each path was booted."""
    booted: dict[str, int] = {}

    def run_local(batch, jobs, progress=None):
        out = []
        for c in batch:
            n = booted.get(c.path, 0)
            booted[c.path] = n + 1
            out.append(dict(script[c.path][min(n, len(script[c.path]) - 1)]))
        return out
    monkeypatch.setattr("pvhboot.compare.runner.run_cells", run_local)
    return booted


OK = {"status": "ok", "fingerprint": {"a": "1"}}
CRASH = {"status": "crash", "crash_report": TRIPLE}


def test_a_crash_that_does_not_repeat_is_flaky(monkeypatch):
    booted = fake_runner(monkeypatch, {"pvh": [OK], "linux64": [CRASH, OK]})
    recs = engine.run_cells(cells("pvh", "linux64"), jobs=1, retries=1)
    assert booted == {"pvh": 1, "linux64": 2}  # only the crashed cell again
    assert recs[0]["status"] == "ok" and "flaky" not in recs[0]
    assert recs[1]["status"] == "ok" and recs[1]["flaky"] == "\n".join(TRIPLE.splitlines()[:4])
    out = io.StringIO()
    print_flaky(recs, Console(file=out, width=200))
    assert "linux64 (2 vCPU, 256 MiB) failed once and booted when tried again" in out.getvalue()
    assert "triple fault on vCPU 0" in out.getvalue()


def test_a_crash_every_time_stays_a_failure_with_its_attempts(monkeypatch):
    booted = fake_runner(monkeypatch, {"linux64": [CRASH]})
    recs = engine.run_cells(cells("linux64"), jobs=1, retries=2)
    assert booted == {"linux64": 3}
    assert recs[0]["status"] == "crash" and recs[0]["attempts"] == 3 and "flaky" not in recs[0]
    assert recs[0]["failures"] == ["\n".join(TRIPLE.splitlines()[:4])] * 3


TIMEOUT = {"status": "timeout", "crash_report": "pvhboot: guest stopped: timeout on vCPU 1: wall-clock limit\nvCPU 1:"}


def test_every_failed_attempt_is_kept_in_order(monkeypatch):
    # The rig lost a clean cell to two failures and kept only the first (2026-12-02): which the second
    # was, nobody could say.  Now each failed try's head is kept, and both reports show them all.
    from pvhboot.compare.diff import compare_records
    from pvhboot.compare.report import print_report
    from pvhboot.compare.rules import LINUX_RULES

    fake_runner(monkeypatch, {"pvh": [CRASH, TIMEOUT, OK], "linux64": [TIMEOUT, CRASH, CRASH], "linux32": [OK]})
    recs = engine.run_cells(cells("pvh", "linux64", "linux32"), jobs=1, retries=2)
    triple, timeout = "\n".join(TRIPLE.splitlines()[:4]), TIMEOUT["crash_report"]
    assert recs[0]["status"] == "ok" and recs[0]["flaky"] == triple and recs[0]["failures"] == [triple, timeout]
    assert recs[1]["status"] == "timeout" and recs[1]["attempts"] == 3
    assert recs[1]["failures"] == [timeout, triple, triple]
    assert "failures" not in recs[2]

    out = io.StringIO()
    print_flaky(recs, Console(file=out, width=200))
    text = out.getvalue()
    assert "pvh (2 vCPU, 256 MiB) failed 2 times and booted when tried again" in text
    assert text.index("triple fault on vCPU 0") < text.index("timeout on vCPU 1")
    out = io.StringIO()
    print_report(compare_records(recs, LINUX_RULES), Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "linux64" in text and "attempt 2 of 3:" in text and "attempt 3 of 3:" in text
    assert text.count("triple fault on vCPU 0") == 2  # attempts 2 and 3; the first was the timeout


# A whole fingerprint, then the VM crashed: status "ok", the crash only in ``exit`` (compare/cell.py).
OK_THEN_CRASH = {"status": "ok", "fingerprint": {"a": "1", "exit": "crash"}, "exit": {"reason": "crash", "code": 1},
                 "crash_report": TRIPLE}
OK_POWEROFF = {"status": "ok", "fingerprint": {"a": "1", "exit": "poweroff"}, "exit": {"reason": "poweroff", "code": 0}}
OK_RESET = {"status": "ok", "fingerprint": {"a": "1", "exit": "reset"}, "exit": {"reason": "reset", "code": 0}}


def test_a_crash_after_the_fingerprint_that_does_not_repeat_is_flaky(monkeypatch):
    booted = fake_runner(monkeypatch, {"pvh": [OK_THEN_CRASH, OK_POWEROFF], "linux32": [OK_RESET]})
    recs = engine.run_cells(cells("pvh", "linux32"), jobs=1, retries=1)
    assert booted == {"pvh": 2, "linux32": 1}  # a reset is how a path ends, not chance
    assert recs[0]["fingerprint"]["exit"] == "poweroff" and recs[0]["flaky"].startswith("pvhboot: guest stopped")
    assert "flaky" not in recs[1]


def test_a_crash_after_the_fingerprint_every_time_keeps_the_first_with_its_attempts(monkeypatch):
    # the second attempt crashed before its fingerprint: the first, whole one is kept
    booted = fake_runner(monkeypatch, {"pvh": [OK_THEN_CRASH, CRASH, OK_THEN_CRASH]})
    recs = engine.run_cells(cells("pvh"), jobs=1, retries=2)
    assert booted == {"pvh": 3}
    assert recs[0]["status"] == "ok" and recs[0]["fingerprint"]["exit"] == "crash"
    assert recs[0]["attempts"] == 3 and "flaky" not in recs[0]


def test_deterministic_failures_and_no_retries_are_not_booted_again(monkeypatch):
    booted = fake_runner(monkeypatch, {"a": [{"status": "error", "detail": "bad"}],
                                       "b": [{"status": "no fingerprint"}], "c": [CRASH, OK]})
    recs = engine.run_cells(cells("a", "b", "c"), jobs=1, retries=0)
    assert booted == {"a": 1, "b": 1, "c": 1}
    assert [r["status"] for r in recs] == ["error", "no fingerprint", "crash"]


def test_a_cell_process_that_dies_on_a_signal_leaves_its_python_traceback(tmp_path, monkeypatch):
    # A VMM child exited -11 once in the rig with nothing to say; -X faulthandler makes it say where.
    from types import SimpleNamespace

    from pvhboot.compare import runner

    (tmp_path / "segv_cell.py").write_text("import ctypes, sys\nsys.stdin.read()\n\n"
                                           "def crash():\n    ctypes.string_at(0)\n\ncrash()\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(runner, "CELL_MODULE", "segv_cell")
    result = runner.run_cell(SimpleNamespace(timeout=20, to_json=lambda: {}))
    # killed by a signal: a crash, booted again like a guest's (engine.RETRIED)
    assert result["status"] == "crash" and "killed by SIGSEGV (-11)" in result["detail"], result
    assert result["status"] in engine.RETRIED
    assert "Segmentation fault" in result["stderr"] and "in crash" in result["stderr"], result["stderr"]
