"""Rig tier gating: every test here needs QEMU and the cached Debian cloud kernel; without them it
is skipped with the reason (scripts/setup-tests.sh installs both)."""
from __future__ import annotations

import shutil

import pytest

from pvhboot.rig import RigBuildError, build_rig, outer_kernel


@pytest.fixture(scope="session")
def rig_available() -> None:
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("rig: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    if not shutil.which("cpio"):
        pytest.skip("rig: cpio is not installed")
    try:
        build_rig()
        outer_kernel()
    except RigBuildError as e:
        pytest.skip(f"rig: {e}")
