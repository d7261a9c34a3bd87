"""`pvhboot extract` gives byte for byte what the lz4 tool decompresses from the Debian bzImage."""
import hashlib

from pvhboot.cli import main


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_extract_equals_lz4_tool(debian_bzimage, debian_vmlinux, tmp_path):
    out = tmp_path / "vmlinux"
    assert main(["extract", str(debian_bzimage), "-o", str(out)]) == 0
    assert out.stat().st_size == debian_vmlinux.stat().st_size
    assert _sha256(out) == _sha256(debian_vmlinux)
    assert [p.name for p in tmp_path.iterdir()] == ["vmlinux"]  # no temporary file left behind
