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


def probe_elf() -> str:
    """The built-in probe's path.  It is committed in the package, so its absence is a failure."""
    from pvhboot.probe import probe_path

    path = probe_path()
    assert path.exists(), f"the built-in probe {path} is missing from the package"
    return str(path)
