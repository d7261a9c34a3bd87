"""pvhboot.initramfs against GNU cpio (the independent oracle): `cpio -i -t -v` lists what we
wrote with the right types, modes, owners, sizes, link targets and device numbers, and `cpio -idm`
extracts the same bytes."""
from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest
from support import require_tool

from pvhboot.initramfs import CpioWriter


@pytest.fixture()
def archive(tmp_path):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "sub" / "deeper" / "odd size.bin").write_bytes(bytes(range(256)) * 3 + b"xyz")
    (src / "exe").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(src / "exe", 0o755)
    os.symlink("exe", src / "link")
    path = tmp_path / "a.cpio"
    with open(path, "wb") as f, CpioWriter(f, mtime=1_700_000_000) as cpio:
        cpio.add_dir("etc", 0o700)
        cpio.add_file("etc/empty", b"")
        cpio.add_file("etc/one", b"1", 0o600)
        cpio.add_file("a-name-of-odd-length", b"abc")
        cpio.add_symlink("bin/sh", "../usr/bin/busybox")
        cpio.add_device("dev/console", "c", 5, 1, 0o600)
        cpio.add_device("dev/loop7", "b", 7, 7, 0o660)
        cpio.add_tree("tree", src)
    return path, src


def _listing(path) -> dict[str, str]:
    require_tool("cpio")
    with open(path, "rb") as f:
        out = subprocess.run(["cpio", "-i", "-t", "-v", "--quiet"], stdin=f,
                             capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        # "<mode> <nlink> <owner> <group> <size or maj, min> <month> <day> <year> <name>[ -> target]"
        m = re.match(r"\S+\s+\d+\s+\S+\s+\S+\s+(?:\d+,\s+)?\d+\s+\S+\s+\d+\s+\S+\s(.*)$", line)
        assert m, line
        rows[m.group(1).split(" -> ")[0]] = line
    return rows


def test_gnu_cpio_lists_every_member(archive):
    path, _ = archive
    rows = _listing(path)
    assert re.match(r"drwx------\s+2 root\s+root\s+0 ", rows["etc"])
    assert re.match(r"-rw-------\s+1 root\s+root\s+1 ", rows["etc/one"])
    assert re.match(r"-rw-r--r--\s+1 root\s+root\s+3 ", rows["a-name-of-odd-length"])
    assert rows["bin/sh"].startswith("lrwxrwxrwx") and rows["bin/sh"].endswith("bin/sh -> ../usr/bin/busybox")
    assert re.match(r"crw-------\s+1 root\s+root\s+5,\s+1 ", rows["dev/console"])
    assert re.match(r"brw-rw----\s+1 root\s+root\s+7,\s+7 ", rows["dev/loop7"])
    assert re.match(r"-rwxr-xr-x\s+1 root\s+root\s+18 ", rows["tree/exe"])
    assert rows["tree/link"].endswith("tree/link -> exe")
    assert " 771 " in rows["tree/sub/deeper/odd size.bin"]
    assert "2023" in rows["etc/one"]  # mtime 1_700_000_000 = Nov 2023
    expected = {"etc", "etc/empty", "etc/one", "a-name-of-odd-length", "bin", "bin/sh", "dev",
                "dev/console", "dev/loop7", "tree", "tree/exe", "tree/link", "tree/sub",
                "tree/sub/deeper", "tree/sub/deeper/odd size.bin"}
    assert set(rows) == expected


def test_gnu_cpio_extracts_same_bytes(archive, tmp_path):
    require_tool("cpio")
    path, src = archive
    out = tmp_path / "out"
    out.mkdir()
    # Device nodes need CAP_MKNOD; leave them out of the extraction when not root.
    pattern = [] if os.geteuid() == 0 else ["--nonmatching", "dev/*"]
    with open(path, "rb") as f:
        r = subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames", *pattern],
                           stdin=f, cwd=out, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "tree" / "sub" / "deeper" / "odd size.bin").read_bytes() == \
        (src / "sub" / "deeper" / "odd size.bin").read_bytes()
    assert (out / "tree" / "exe").read_bytes() == (src / "exe").read_bytes()
    assert os.readlink(out / "tree" / "link") == "exe"
    assert os.readlink(out / "bin" / "sh") == "../usr/bin/busybox"
    assert (out / "etc" / "empty").read_bytes() == b""
    assert (out / "a-name-of-odd-length").read_bytes() == b"abc"
    st = os.stat(out / "etc" / "one")
    assert stat.S_IMODE(st.st_mode) == 0o600 and int(st.st_mtime) == 1_700_000_000
    if os.geteuid() == 0:
        st = os.lstat(out / "dev" / "loop7")
        assert stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (7, 7)
