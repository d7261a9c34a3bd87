"""`pvhboot inspect` and `pvhboot extract` as a user sees them: output, one-line errors, exit 2, no partial file."""
import json
import subprocess
import sys

import imagekit
import pytest

from pvhboot.cli import main

VMLINUX = imagekit.build_elf()


def _cli(*args):
    """Run the real entry point in a child, as a user would."""
    return subprocess.run([sys.executable, "-m", "pvhboot", *map(str, args)], capture_output=True, text=True)


def _assert_user_error(proc, needle: str):
    assert proc.returncode == 2, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvhboot: error: "), proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_inspect_json_bzimage(tmp_path, capsys):
    path = tmp_path / "bzImage"
    path.write_bytes(imagekit.build_bzimage(VMLINUX, codec="zstd"))
    assert main(["inspect", "--json", str(path)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["format"] == "bzimage" and r["compression"] == "zstd" and r["boot_protocol"] == "2.15"
    assert r["entries"] == {"pvh": 0x1000010, "linux32": 0x100000, "linux64": 0x100200, "xen_pv": 0xFFFFFFFF81000040}
    assert r["segments"][0] == {"paddr": 0x1000000, "vaddr": 0xFFFFFFFF81000000, "offset": 0x1000,
                                "filesz": 0x344, "memsz": 0x344, "flags": 5, "align": 0x200000}
    assert {"type": 18, "name": "PHYS32_ENTRY", "value": 0x1000010, "descsz": 4, "desc": "10000001"} in r["xen_notes"]
    assert r["phys32_reloc"] == {"align": 0x200000, "min": 0x1000000, "max": 0x3FFFFFFF}
    assert r["linux_version"].startswith("Linux version 6.9.0-synthetic")
    assert r["setup_header"]["payload_offset"] == 0x100 and r["startup_64_offset"] == 0x200
    assert r["build_id"] == imagekit.DEFAULT_BUILD_ID.hex()


def test_inspect_json_vmlinux(tmp_path, capsys):
    path = tmp_path / "vmlinux"
    path.write_bytes(VMLINUX)
    assert main(["inspect", "--json", str(path)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["format"] == "elf" and r["boot_protocol"] is None and r["compression"] is None
    assert r["entries"]["linux32"] is None and r["entries"]["linux64"] == 0x1000000


def test_inspect_human(tmp_path, capsys):
    path = tmp_path / "bzImage"
    path.write_bytes(imagekit.build_bzimage(VMLINUX, codec="lz4"))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for needle in ("bzimage", "lz4", "2.15", "0x1000010", "PHYS32_ENTRY", "PHYS32_RELOC", "PT_LOAD"):
        assert needle in out


def test_inspect_bad_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "notakernel"
    bad.write_bytes(b"hello world" * 100)
    _assert_user_error(_cli("inspect", bad), "neither an ELF vmlinux")
    _assert_user_error(_cli("inspect", "--json", tmp_path / "missing"), "No such file")


def test_inspect_lzo_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bz.lzo"
    payload = imagekit.with_size(imagekit.compress("lzo", VMLINUX), len(VMLINUX))
    path.write_bytes(imagekit.build_bzimage(payload=payload))
    _assert_user_error(_cli("inspect", path), "lzo-compressed")


@pytest.mark.parametrize("codec", ["gzip", "lz4"])
def test_extract_writes_the_elf(tmp_path, codec):
    src, out = tmp_path / "bzImage", tmp_path / "vmlinux"
    src.write_bytes(imagekit.build_bzimage(VMLINUX, codec=codec))
    assert main(["extract", str(src), "-o", str(out)]) == 0
    assert out.read_bytes() == VMLINUX


def test_extract_errors_leave_no_output(tmp_path):
    out = tmp_path / "vmlinux"
    corrupt = tmp_path / "bz.bad"
    payload = imagekit.with_size(imagekit.compress("xz", VMLINUX), len(VMLINUX) + 8)  # wrong size trailer
    corrupt.write_bytes(imagekit.build_bzimage(payload=payload))
    _assert_user_error(_cli("extract", corrupt, "-o", out), "size trailer says")
    elf = tmp_path / "already.elf"
    elf.write_bytes(VMLINUX)
    _assert_user_error(_cli("extract", elf, "-o", out), "already an ELF vmlinux")
    _assert_user_error(_cli("extract", tmp_path / "missing", "-o", out), "No such file")
    good = tmp_path / "bz.good"
    good.write_bytes(imagekit.build_bzimage(VMLINUX))
    _assert_user_error(_cli("extract", good, "-o", tmp_path / "no-such-dir" / "vmlinux"), "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["already.elf", "bz.bad", "bz.good"]
