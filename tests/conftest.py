"""Shared fixtures and tier gating.

Tiers: unit/property/differential (pure Python), ``kvm`` (needs /dev/kvm), ``rig`` (nested QEMU with a
real Linux).  A test whose needs are absent is *skipped with the reason*, never passed silently.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support import require_tool

ROOT = Path(__file__).resolve().parent.parent
KERNEL_CACHE = ROOT / ".cache" / "debian-kernel" / "current"
# Child processes (`sys.executable -m pvhboot ...`) import this checkout's pvhboot, as the tests do
# (pyproject's pythonpath), not whichever copy is installed (an editable install of another tree).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))


def kvm_unavailable_reason() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    return None


def pytest_collection_modifyitems(config, items):
    reason = kvm_unavailable_reason()
    if reason:
        skip = pytest.mark.skip(reason=f"kvm tier: {reason}")
        for item in items:
            if "kvm" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def debian_kernel_dir() -> Path:
    if not (KERNEL_CACHE / "boot").is_dir():
        pytest.skip("Debian cloud kernel not cached (run scripts/fetch-debian-kernel.sh)")
    return KERNEL_CACHE


@pytest.fixture(scope="session")
def debian_bzimage(debian_kernel_dir: Path) -> Path:
    return next((debian_kernel_dir / "boot").glob("vmlinuz-*"))


@pytest.fixture(scope="session")
def debian_system_map(debian_kernel_dir: Path) -> Path:
    return next((debian_kernel_dir / "boot").glob("System.map-*"))


@pytest.fixture(scope="session")
def debian_vmlinux(debian_bzimage: Path, tmp_path_factory) -> Path:
    """The vmlinux decompressed by the independent oracle (the lz4 tool), not by pvhboot.

    The payload is lz4 legacy; the kernel build appends the uncompressed size (u32) after it, which
    the lz4 tool rejects, so the oracle is fed the payload without those 4 bytes (pvh-abi.md).
    """
    require_tool("lz4")
    out = ROOT / ".cache" / "debian-kernel" / (debian_bzimage.name + ".vmlinux")
    if out.exists():
        return out
    data = debian_bzimage.read_bytes()
    setup_sects = data[0x1F1] or 4
    pm_start = (setup_sects + 1) * 512
    payload_offset = int.from_bytes(data[0x248:0x24C], "little")
    payload_length = int.from_bytes(data[0x24C:0x250], "little")
    payload = data[pm_start + payload_offset : pm_start + payload_offset + payload_length - 4]
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        subprocess.run(["lz4", "-dc"], input=payload, stdout=f, check=True)
    tmp.rename(out)
    return out
