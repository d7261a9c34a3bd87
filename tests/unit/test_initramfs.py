"""newc writer (pvhboot.initramfs) golden bytes, and the `pvhboot run` initramfs and console filter."""
from __future__ import annotations

import gzip
import io
import os
import stat
from pathlib import Path

import pytest

from pvhboot.commands import run as run_cmd
from pvhboot.errors import ConfigError
from pvhboot.initramfs import CpioWriter, build_header, open_compressed


def parse_newc(data: bytes) -> list[dict]:
    """A minimal independent reader (the kernel's buffer-format.rst) used to check structure."""
    members, off = [], 0
    names = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
             "rdevmajor", "rdevminor", "namesize", "check")
    while True:
        assert off % 4 == 0, f"header at unaligned offset {off}"
        assert data[off:off + 6] == b"070701", data[off:off + 16]
        fields = {n: int(data[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i, n in enumerate(names)}
        name_end = off + 110 + fields["namesize"]
        fields["name"] = data[off + 110: name_end - 1].decode()
        assert data[name_end - 1] == 0
        data_off = name_end + (-name_end % 4)
        fields["data"] = data[data_off: data_off + fields["filesize"]]
        off = data_off + fields["filesize"]
        off += -off % 4
        members.append(fields)
        if fields["name"] == "TRAILER!!!":
            assert off == len(data)
            return members


def test_header_golden_bytes():
    h = build_header(ino=1, mode=0o100644, uid=0, gid=0, nlink=1, mtime=0, filesize=2, namesize=2)
    assert h == (b"070701" b"00000001" b"000081A4" b"00000000" b"00000000" b"00000001"
                 b"00000000" b"00000002" b"00000000" b"00000000" b"00000000" b"00000000"
                 b"00000002" b"00000000")
    assert len(h) == 110


def test_single_file_archive_golden_bytes():
    buf = io.BytesIO()
    with CpioWriter(buf) as cpio:
        cpio.add_file("a", b"hi")
    expected = (
        # member "a": header, "a\0" (110 + 2 = 112: already aligned), data "hi" + 2 pad bytes
        b"070701000000010000" b"81A4" + b"0" * 16 + b"00000001" + b"00000000" + b"00000002"
        + b"0" * 32 + b"00000002" + b"00000000" + b"a\0" + b"hi\0\0"
        # the trailer: mode 0, nlink 1, namesize 11; 110 + 11 = 121 -> 3 pad bytes
        + b"070701" + b"0" * 8 * 4 + b"00000001" + b"0" * 8 * 6 + b"0000000B" + b"00000000"
        + b"TRAILER!!!\0" + b"\0\0\0"
    )
    assert buf.getvalue() == expected


def test_members_and_alignment():
    buf = io.BytesIO()
    with CpioWriter(buf, mtime=1234) as cpio:
        cpio.add_dir("etc", 0o750)
        cpio.add_file("etc/motd", b"hello\n", 0o640)
        cpio.add_symlink("bin/sh", "busybox")
        cpio.add_device("dev/console", "c", 5, 1, 0o620)
        cpio.add_device("dev/vda", "b", 254, 0)
    members = parse_newc(buf.getvalue())
    by_name = {m["name"]: m for m in members}
    assert [m["name"] for m in members] == ["etc", "etc/motd", "bin", "bin/sh", "dev",
                                            "dev/console", "dev/vda", "TRAILER!!!"]
    assert by_name["etc"]["mode"] == stat.S_IFDIR | 0o750 and by_name["etc"]["nlink"] == 2
    assert by_name["etc/motd"]["data"] == b"hello\n" and by_name["etc/motd"]["mtime"] == 1234
    assert by_name["bin"]["mode"] == stat.S_IFDIR | 0o755  # implicit parent
    assert by_name["bin/sh"]["mode"] == stat.S_IFLNK | 0o777
    assert by_name["bin/sh"]["data"] == b"busybox"
    con = by_name["dev/console"]
    assert con["mode"] == stat.S_IFCHR | 0o620 and (con["rdevmajor"], con["rdevminor"]) == (5, 1)
    assert by_name["dev/vda"]["mode"] & stat.S_IFMT(0o170000) == stat.S_IFBLK
    inos = [m["ino"] for m in members[:-1]]
    assert inos == list(range(1, len(inos) + 1))


def test_reproducible(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 5000)
    os.symlink("f", tmp_path / "d" / "l")

    def make() -> bytes:
        buf = io.BytesIO()
        with CpioWriter(buf) as cpio:
            cpio.add_tree("root", tmp_path)
        return buf.getvalue()

    a = make()
    os.utime(tmp_path / "d" / "f", (1, 1))
    assert make() == a  # host mtimes do not leak in by default
    names = [m["name"] for m in parse_newc(a)]
    assert names == ["root", "root/d", "root/d/f", "root/d/l", "TRAILER!!!"]


def test_keep_mtime(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"1")
    os.utime(f, (1_600_000_000, 1_600_000_000))
    buf = io.BytesIO()
    with CpioWriter(buf) as cpio:
        cpio.add_file_from("f", f, keep_mtime=True)
    assert parse_newc(buf.getvalue())[0]["mtime"] == 1_600_000_000


@pytest.mark.parametrize("name", ["", "/", "a/../b", ".."])
def test_bad_names(name):
    with pytest.raises(ConfigError, match="invalid archive member name"):
        CpioWriter(io.BytesIO()).add_file(name, b"")


def test_duplicate_and_closed():
    cpio = CpioWriter(io.BytesIO())
    cpio.add_file("a", b"")
    with pytest.raises(ConfigError, match="duplicate archive member 'a'"):
        cpio.add_file("/a", b"")
    cpio.add_dir("d")
    cpio.add_dir("d")  # directories may repeat
    with pytest.raises(ConfigError, match="'x'"):
        cpio.add_device("dev/x", "x", 1, 1)
    cpio.close()
    with pytest.raises(ConfigError, match="closed"):
        cpio.add_file("b", b"")


def test_gzip_compression():
    raw = io.BytesIO()
    with CpioWriter(raw) as cpio:
        cpio.add_file("a", b"data")
    out = io.BytesIO()
    z = open_compressed(out, "gzip")
    with CpioWriter(z) as cpio:
        cpio.add_file("a", b"data")
    z.close()
    assert gzip.decompress(out.getvalue()) == raw.getvalue()
    assert open_compressed(out, "none") is out
    with pytest.raises(ConfigError, match="lzo"):
        open_compressed(out, "lzo")


# -- pvhboot run: the generated initramfs and init, the console filter ---------------------------

def test_render_init_quotes_and_reports():
    init = run_cmd.render_init(["sh", "-c", "echo 'a b'; exit 3"])
    assert init.startswith("#!/bin/sh\n")
    assert "sh -c 'echo '\"'\"'a b'\"'\"'; exit 3'" in init
    for needle in ("mount -t proc proc /proc", "mount -t sysfs sysfs /sys",
                   "mount -t devtmpfs devtmpfs /dev", "echo PVHBOOT-BEGIN",
                   'echo "PVHBOOT-EXIT=$rc"', "poweroff -f"):
        assert needle in init
    assert init.index("PVHBOOT-BEGIN") < init.index("rc=$?") < init.index("poweroff -f")
    with pytest.raises(ConfigError, match="no command"):
        run_cmd.render_init([])


def test_init_closes_the_console_before_it_powers_off(tmp_path):
    # The last open file of a tty is what makes the kernel wait for the UART to send the buffered
    # output (run.POWEROFF): /init's poweroff must run with no descriptor on the console.  Here the
    # "console" is a pipe and `poweroff` a stand-in that records what its descriptors 0-2 are.
    import json
    import subprocess
    import sys

    fake = tmp_path / "poweroff"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "fds = {n: os.readlink(f'/proc/self/fd/{n}') for n in range(3)\n"
                    "       if os.path.exists(f'/proc/self/fd/{n}')}\n"
                    "open(os.environ['RECORD'], 'w').write(json.dumps([sys.argv[1:], fds]))\n")
    fake.chmod(0o755)
    record = tmp_path / "record"
    init = run_cmd.render_init(["true"])
    assert init.rstrip().endswith(run_cmd.POWEROFF)
    r, w = os.pipe()
    console = os.readlink(f"/proc/self/fd/{w}")
    try:
        subprocess.run(["sh", "-c", run_cmd.POWEROFF], stdin=w, stdout=w, stderr=w, timeout=30, check=True,
                       env={"PATH": f"{tmp_path}:/usr/bin:/bin", "RECORD": str(record)})
    finally:
        os.close(w)
        os.close(r)
    argv, fds = json.loads(record.read_text())
    assert argv == ["-f"]
    assert console not in fds.values(), fds  # the console's descriptors were closed first


def test_run_initramfs_contents(tmp_path):
    busybox = run_cmd.find_busybox() if os.path.exists("/bin/busybox") else None
    if busybox is None:
        pytest.skip("busybox-static is not installed")
    extra = tmp_path / "payload.sh"
    extra.write_text("#!/bin/sh\necho payload\n")
    buf = io.BytesIO()
    run_cmd.write_run_initramfs(buf, ["/root/payload.sh"], busybox=busybox,
                                files=[(str(extra), "root/payload.sh")])
    members = {m["name"]: m for m in parse_newc(buf.getvalue())}
    assert members["bin/busybox"]["data"] == Path(busybox).read_bytes()
    assert members["bin/sh"]["data"] == b"../bin/busybox"
    assert members["sbin/poweroff"]["data"] == b"../bin/busybox"
    assert members["dev/console"]["rdevmajor"] == 5 and members["dev/console"]["rdevminor"] == 1
    assert members["init"]["mode"] == stat.S_IFREG | 0o755
    assert b"/root/payload.sh" in members["init"]["data"]
    assert members["root/payload.sh"]["data"] == extra.read_bytes()


def test_find_busybox_rejects_dynamic(monkeypatch, tmp_path):
    monkeypatch.setattr(run_cmd, "BUSYBOX_CANDIDATES", (str(tmp_path / "none"),))
    with pytest.raises(ConfigError, match="busybox-static"):
        run_cmd.find_busybox()
    monkeypatch.setattr(run_cmd, "BUSYBOX_CANDIDATES", ("/bin/ls",))  # dynamically linked
    with pytest.raises(ConfigError, match="dynamically linked"):
        run_cmd.find_busybox()


def test_find_kernel(monkeypatch, tmp_path):
    k = tmp_path / "vmlinuz-test"
    k.write_bytes(b"x")
    monkeypatch.setenv("PVHBOOT_KERNEL", str(k))
    assert run_cmd.find_kernel() == k
    monkeypatch.setenv("PVHBOOT_KERNEL", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="missing"):
        run_cmd.find_kernel()
    monkeypatch.delenv("PVHBOOT_KERNEL")
    boot = tmp_path / "cache" / ".cache" / "debian-kernel" / "current" / "boot"
    boot.mkdir(parents=True)
    for v in ("6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64"):
        (boot / f"vmlinuz-{v}").write_bytes(b"x")
    monkeypatch.setattr(run_cmd, "REPO_ROOT", tmp_path / "cache")
    assert run_cmd.find_kernel().name == "vmlinuz-6.1.0-10-cloud-amd64"  # newest by version


def test_console_filter_hides_kernel_log_and_markers():
    out = io.BytesIO()
    f = run_cmd.ConsoleFilter(out)
    f.write(b"[    0.1] Linux version 6.1\r\n[    1.0] Run /init\r\nPVHBOOT-BE")
    f.write(b"GIN\r\nhello ")
    assert out.getvalue() == b"hello "  # a partial line that cannot be a marker streams at once
    f.write(b"world\r")
    assert out.getvalue() == b"hello world"  # a CR that may start a CR LF is held back
    f.write(b"\nPVHBOOT-EX")
    assert out.getvalue() == b"hello world\n"  # CR LF -> LF; a possible marker is held back
    f.write(b"IT-not-a-marker\r\nprogress\rdone\r\n")
    assert out.getvalue() == b"hello world\nPVHBOOT-EXIT-not-a-marker\nprogress\rdone\n"
    f.write(b"PVHBOOT-EX")
    f.write(b"IT=42\r\n[    2.0] reboot: Power down\r\n")
    assert out.getvalue() == b"hello world\nPVHBOOT-EXIT-not-a-marker\nprogress\rdone\n"
    assert f.exit_status == 42
    assert b"Run /init" in f.hidden


def test_console_filter_without_marker():
    out = io.BytesIO()
    f = run_cmd.ConsoleFilter(out)
    f.write(b"Kernel panic - not syncing: no init found\n")
    assert out.getvalue() == b"" and f.exit_status is None and b"Kernel panic" in f.hidden


def test_run_cli_user_errors(capsys, tmp_path):
    from pvhboot.cli import main

    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no command given" in err
    assert main(["run", "--cpus", "0", "--", "true"]) == 2
    assert "invalid vCPU count 0" in capsys.readouterr().err
    assert main(["run", "--file", str(tmp_path / "nope"), "--initramfs-out",
                 str(tmp_path / "x.cpio"), "--", "true"]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "x.cpio").exists()  # no half-written output


def test_run_cli_writes_initramfs(tmp_path):
    from pvhboot.cli import main

    if not os.path.exists("/bin/busybox"):
        pytest.skip("busybox-static is not installed")
    out = tmp_path / "i.cpio"
    assert main(["run", "--initramfs-out", str(out), "--", "echo", "hi there"]) == 0
    members = {m["name"]: m for m in parse_newc(out.read_bytes())}
    assert b"echo 'hi there'" in members["init"]["data"]
