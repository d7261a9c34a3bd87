"""How a rig test runs its script in the nested rig: one call that fails the test with the rig's own
diagnosis, says when the rig needed more than one outer boot, and a pytest time limit that lets every
outer boot run_in_rig may take end in that diagnosis rather than in pytest-timeout's traceback."""
from __future__ import annotations

import json
import warnings

import pytest

from pvhboot.rig import RigError, RigResult, run_in_rig
from pvhboot.rig.launch import ATTEMPTS, CONSOLE_LOG

# How often an inner case or compare cell that triple-faulted or timed out is booted again.  The nested
# bench injects such faults (README, "The nested rig"): 0-4 per `make test-rig` run, in no fixed case.
# With one retry the same compare cell was hit twice once in 15 runs (2026-12-02, its clean pvh cell),
# which failed the run; a fault of the code under test repeats on every try and still fails.
INNER_RETRIES = 2


def time_limit(rig_timeout: float):
    """pytest's limit for a test whose fixture runs the rig once with ``rig_timeout`` per outer boot."""
    return pytest.mark.timeout(ATTEMPTS * rig_timeout + 120)


def warn_about_recoveries(res: RigResult) -> None:
    """An outer boot that stalled, never came up or crashed is retried by run_in_rig; the run still
    passes, and pytest's warnings summary (shown under -q too) says it happened."""
    if res.attempts > 1:
        warnings.warn(f"the rig took {res.attempts} outer boots: an earlier one stalled, never came up or "
                      f"crashed (its console: {CONSOLE_LOG.parent}/last-console-attempt*.log)", stacklevel=2)


def warn_about_inner_retries(output: str) -> list[dict]:
    """The ``INNER-RETRIED`` lines a rig script printed (inner_checks.py --retried: an inner boot that
    triple-faulted or timed out and was booted again), each as a pytest warning, like the cases that
    inner_checks.py runs itself; returned for the test to look at."""
    retried = []
    for line in output.splitlines():
        if line.startswith("INNER-RETRIED "):
            try:  # the rig's console can interleave a kernel message into a line
                retried.append(json.loads(line.split(" ", 1)[1]))
            except ValueError:
                retried.append({"name": "?", "attempt": "?", "report": line})
    for r in retried:
        warnings.warn(f"rig case {r['name']}: triple fault or timeout, booted again (failed attempt "
                      f"{r['attempt']} of at most {1 + INNER_RETRIES}):\n{r['report']}", stacklevel=2)
    return retried


def run_or_fail(script: str, timeout: float, files: dict[str, bytes] | None = None) -> RigResult:
    try:
        res = run_in_rig(script, timeout=timeout, files=files)
    except RigError as e:
        pytest.fail(f"the rig did not run: {e}\n(whole console: {CONSOLE_LOG})")
    warn_about_recoveries(res)
    return res
