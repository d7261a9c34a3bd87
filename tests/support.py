"""Helpers shared by test modules (import as `from support import ...`; not a conftest, so that
tests/rig/conftest.py cannot shadow it)."""
from __future__ import annotations

import shutil

import pytest


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (scripts/setup-tests.sh installs it)")
    return path
