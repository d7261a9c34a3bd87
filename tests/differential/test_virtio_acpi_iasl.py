"""The DSDT's virtio-mmio devices against ACPICA's disassembler (iasl -d): what Linux's
virtio_mmio ACPI probe needs (_HID LNRO0005, Memory32Fixed + Interrupt in _CRS), as QEMU's microvm."""
import re
import shutil
import subprocess

import pytest

from pvhboot.boot.acpi import build_dsdt
from pvhboot.memory import layout as L


def test_virtio_devices_decompile(tmp_path):
    iasl = shutil.which("iasl")
    if not iasl:
        pytest.skip("iasl is not installed (Debian package acpica-tools; scripts/setup-tests.sh installs it)")
    slots = tuple(L.virtio_mmio_slot(i) for i in range(3))
    (tmp_path / "dsdt.dat").write_bytes(build_dsdt(slots))
    r = subprocess.run([iasl, "-d", "dsdt.dat"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    dsl = (tmp_path / "dsdt.dsl").read_text()
    assert "Invalid" not in dsl and "**** " not in dsl, dsl
    assert 'EisaId ("PNP0501")' in dsl  # the serial port is still there
    devices = re.findall(r"Device \((VR0\d)\)", dsl)
    assert devices == ["VR00", "VR01", "VR02"]
    assert dsl.count('Name (_HID, "LNRO0005")') == 3
    for base, size, gsi in slots:
        assert re.search(rf"Memory32Fixed \(ReadWrite,\s+0x{base:08X},\s+// Address Base\s+"
                         rf"0x{size:08X},", dsl), dsl
        assert re.search(r"Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s+\{\s+"
                         rf"0x{gsi:08X},", dsl), dsl
