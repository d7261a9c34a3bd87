"""The tree is lint-clean under the [tool.ruff] config in pyproject.toml (src, tests and bench).

Runs ruff as a subprocess from the repository root so it reads that config; needs the ``ruff``
package (the ``test`` extra), and is skipped with the reason when it is absent."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PATHS = ["src", "tests", "bench"]


def test_ruff_check_is_clean():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *PATHS],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    findings = [line for line in r.stdout.splitlines() if line.strip()]
    if r.returncode != 0:
        pytest.fail(f"ruff check {' '.join(PATHS)} exited {r.returncode}:\n" + "\n".join(findings) + r.stderr,
                    pytrace=False)
