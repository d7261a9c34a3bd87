"""Issue 10, user input: every mistake is exactly one `pvhboot: error:` line on stderr, exit 2, no
traceback, nothing blocks and nothing is read without bound.  Each case runs the real entry point in a
child process (``sys.executable -m pvhboot``), with a timeout that turns a hang into a failure.

All of these are refused before /dev/kvm is opened, so they belong to the unit tier.
"""
from __future__ import annotations

import os
import resource
import stat
import struct
import subprocess
import sys

import imagekit
import pytest
from support import require_tool

HANG = 30  # seconds: only a refusal that blocked (a fifo) would come near this

PVH_ENTRY = 0x1000010


def _bounded():
    # A regression that read /dev/zero without end must fail this test, not exhaust the shared host.
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def pvhboot(*args, timeout=HANG, preexec_fn=_bounded, env=None):
    argv = [sys.executable, "-m", "pvhboot", *[a if isinstance(a, bytes) else str(a) for a in args]]
    return subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          preexec_fn=preexec_fn, env={**os.environ, **(env or {})})


def assert_user_error(proc, needle: str = ""):
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 2, (proc.returncode, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvhboot: error: "), err
    assert "Traceback" not in err
    assert needle in lines[0], (needle, lines[0])


@pytest.fixture()
def vmlinux(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(imagekit.build_elf())
    return path


@pytest.fixture()
def bzimage(tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(imagekit.build_bzimage(imagekit.build_elf(), codec="gzip"))
    return path


def private_device(tmp_path, name: str, minor: int) -> str:
    """A character device node of our own (mem driver, major 1: 3 null, 7 full) in tmp_path: tests
    that an output device is refused never aim at the real /dev/null or /dev/full, which a
    regression running as root would replace with a regular file for the whole machine."""
    path = tmp_path / name
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD (root)")
    return str(path)


@pytest.fixture()
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


# --- special files where a regular file is expected -------------------------------------------------

@pytest.mark.parametrize("command, special", [
    ("inspect", "fifo"), ("inspect", "/dev/zero"), ("inspect", "/dev/urandom"), ("inspect", "directory"),
    ("plan", "fifo"), ("extract", "fifo"), ("extract", "/dev/urandom"), ("boot", "fifo"), ("boot", "/dev/zero")])
def test_special_file_as_kernel(command, special, fifo, tmp_path):
    path = {"fifo": fifo, "directory": tmp_path}.get(special, special)
    extra = ["-o", tmp_path / "out"] if command == "extract" else []
    kind = {"fifo": "a fifo", "directory": "a directory"}.get(special, "a character device")
    assert_user_error(pvhboot(command, path, *extra), f"{path}: {kind}, not a regular file")


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("option", [("boot", "--initrd"), ("boot", "--symbols"), ("plan", "--initrd"),
                                    ("conformance", "--initrd"), ("conformance", "--report")])
def test_special_file_as_option(option, special, fifo, tmp_path, vmlinux):
    command, flag = option
    path = {"fifo": fifo, "directory": tmp_path}.get(special, special)
    args = [command] + ([vmlinux] if command in ("boot", "plan") else []) + [flag, path]
    assert_user_error(pvhboot(*args), "not a regular file")


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_special_file_for_run_file(special, fifo):
    path = fifo if special == "fifo" else special
    assert_user_error(pvhboot("run", "--file", f"{path}:/x", "--", "true"), "--file")


def test_oversized_symbol_map_is_refused(tmp_path, vmlinux):
    from pvhboot.errors import ImageError
    from pvhboot.files import SYMBOL_MAP_LIMIT
    from pvhboot.image.symbols import load_symbols

    big = tmp_path / "System.map"
    with open(big, "wb") as f:  # sparse: no disk, no time
        f.truncate(SYMBOL_MAP_LIMIT + 1)
    with pytest.raises(ImageError, match="larger than the 256 MiB a symbol file can be"):
        load_symbols(big)


def test_oversized_kernel_is_refused(tmp_path):
    big = tmp_path / "vmlinux"
    with open(big, "wb") as f:  # sparse: no disk, no time
        f.truncate((2 << 30) + 1)
    assert_user_error(pvhboot("inspect", big), "larger than the 2 GiB a kernel can be")


def test_oversized_report_is_refused(tmp_path):
    big = tmp_path / "console.log"
    with open(big, "wb") as f:
        f.truncate((64 << 20) + 1)
    assert_user_error(pvhboot("conformance", "--report", big), "larger than the 64 MiB")


# --- numbers, text -------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, value", [("boot", v) for v in ("nan", "inf", "-inf", "-1", "0")]
                         + [("conformance", "nan"), ("run", "inf")])
def test_bad_timeout(command, value):
    args = [command, f"--timeout={value}"] + (["--", "true"] if command == "run" else [])
    assert_user_error(pvhboot(*args), "invalid timeout")


@pytest.mark.parametrize("cpus", ["0", "-3", "256"])
def test_bad_cpus(cpus, vmlinux):
    assert_user_error(pvhboot("boot", "--cpus", cpus), "invalid vCPU count")
    assert_user_error(pvhboot("plan", vmlinux, "--cpus", cpus), "invalid vCPU count")


@pytest.mark.parametrize("command", ["boot", "plan", "conformance"])
def test_non_utf8_cmdline(command, vmlinux):
    args = [command] + ([vmlinux] if command == "plan" else []) + ["--cmdline", b"a\xffb"]
    assert_user_error(pvhboot(*args), "the command line is not UTF-8 text (byte 0xff at offset 1)")


def test_overlong_cmdline(vmlinux):
    assert_user_error(pvhboot("plan", vmlinux, "--cmdline", "x" * 70000), "longer than")


@pytest.mark.parametrize("size", ["2T", "0", "4097K", "lots"])
def test_bad_memory_sizes(size, vmlinux):
    assert_user_error(pvhboot("plan", vmlinux, "--memory", size))


def test_large_sparse_memory_is_planned(vmlinux):
    p = pvhboot("plan", vmlinux, "--memory", "1T", "--json")
    assert p.returncode == 0, p.stderr


def _limit_address_space():
    # The host "cannot back" the guest: 2 GiB of address space for the whole process.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_memory_the_host_cannot_map_is_one_line():
    # Refused when GuestMemory maps it, before /dev/kvm is opened.
    p = pvhboot("boot", "--memory", "4G", preexec_fn=_limit_address_space)
    assert_user_error(p, "the host cannot map")


def test_memory_mapping_is_lazy():
    """MAP_NORESERVE: a mapping far larger than this host's RAM + swap is accepted."""
    from pvhboot.memory import GuestMemory

    with GuestMemory([(0, 1 << 40)]) as mem:
        mem.write(0x1000, b"x")
        assert mem.read(0x1000, 1) == b"x" and mem.size == 1 << 40


# --- empty initrd ----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["boot", "plan", "conformance"])
def test_empty_initrd(command, tmp_path, vmlinux):
    empty = tmp_path / "empty.cpio"
    empty.write_bytes(b"")
    args = [command] + ([vmlinux] if command == "plan" else []) + ["--initrd", empty]
    assert_user_error(pvhboot(*args), "file is empty")


# --- outputs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["missing-dir", "directory", "full", "null"])
def test_events_json_unwritable_before_the_guest_runs(target, tmp_path):
    if target in ("full", "null"):
        path = private_device(tmp_path, target, {"null": 3, "full": 7}[target])
    else:
        path = {"missing-dir": tmp_path / "no" / "such" / "events.json", "directory": tmp_path}[target]
    p = pvhboot("boot", "--events-json", path)  # refused before /dev/kvm: no guest runs
    assert_user_error(p, "events-json")
    assert p.stdout == b""
    if target in ("full", "null"):
        assert stat.S_ISCHR(os.stat(path).st_mode)


def _file_size_limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # a "full disk" after 4 KiB (EFBIG)


def test_output_on_full_disk_leaves_nothing(tmp_path, bzimage):
    out = tmp_path / "vmlinux"
    p = pvhboot("extract", bzimage, "-o", out, preexec_fn=_file_size_limit)
    assert_user_error(p, "cannot write output")
    assert os.listdir(tmp_path) == ["bzImage"]  # no partial file, no temporary left behind


def test_write_output_disk_full(tmp_path, monkeypatch):
    """The same for --events-json's writer, with ENOSPC itself."""
    from pvhboot.errors import ConfigError
    from pvhboot.files import write_output

    def chunks():
        yield b"{"
        raise OSError(28, os.strerror(28))

    with pytest.raises(ConfigError, match="cannot write --events-json .*No space left on device"):
        write_output(tmp_path / "e.json", chunks(), "--events-json")
    assert os.listdir(tmp_path) == []


def test_extract_refuses_devices_directories_and_the_input(tmp_path, bzimage):
    null = private_device(tmp_path, "null", 3)
    assert_user_error(pvhboot("extract", bzimage, "-o", null), "a character device")
    assert stat.S_ISCHR(os.stat(null).st_mode)
    assert_user_error(pvhboot("extract", bzimage, "-o", tmp_path), "a directory")
    before = bzimage.read_bytes()
    assert_user_error(pvhboot("extract", bzimage, "-o", bzimage), "it is the input")
    link = tmp_path / "link-to-input"
    link.symlink_to(bzimage)
    assert_user_error(pvhboot("extract", bzimage, "-o", link), "it is the input")
    assert bzimage.read_bytes() == before
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert_user_error(pvhboot("extract", bzimage, "-o", dangling), "symlink to the missing")
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    assert_user_error(pvhboot("extract", bzimage, "-o", fifo), "a fifo")


def test_extract_follows_a_symlink(tmp_path, bzimage):
    target = tmp_path / "real-vmlinux"
    target.write_bytes(b"old")
    link = tmp_path / "vmlinux"
    link.symlink_to(target)
    p = pvhboot("extract", bzimage, "-o", link)
    assert p.returncode == 0, p.stderr
    assert link.is_symlink() and target.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_extract_mode_follows_umask(tmp_path, bzimage, umask, mode):
    out = tmp_path / "vmlinux"
    p = pvhboot("extract", bzimage, "-o", out, preexec_fn=lambda: os.umask(umask))
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == mode


# --- image text is never markup ----------------------------------------------------------------------

def test_markup_in_notes_and_paths_prints_literally(tmp_path):
    notes = [("Xen", 18, struct.pack("<I", PVH_ENTRY)), ("Xen", 6, b"Linux [/x] [bold]\0")]
    (tmp_path / "k[").mkdir()
    path = tmp_path / "k[" / "x][red]"  # the path contains "[/x]", rich's closing tag for nothing
    path.write_bytes(imagekit.build_elf(notes=notes))
    p = pvhboot("inspect", path, env={"COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "Linux [/x] [bold]" in out and "k[/x][red]" in out
    p = pvhboot("plan", path, env={"COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    assert "k[/x][red]" in p.stdout.decode()


def test_markup_from_a_guest_report_prints_literally(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("probe.version=1\nrule.entry.cr0=fail [/x] seen\nPROBE FAIL: entry.cr0\n")
    p = pvhboot("conformance", "--report", log, env={"COLUMNS": "200"})
    assert p.returncode == 1, p.stderr
    assert "[/x] seen" in p.stdout.decode()


# --- a closed pipe ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("inspect", "K"), ("inspect", "--json", "K"), ("plan", "K"),
                                  ("plan", "--json", "K"), ("conformance", "--report", "LOG"),
                                  ("conformance", "--json", "--report", "LOG")])
def test_closed_pipe_is_not_an_error(args, tmp_path, vmlinux):
    log = tmp_path / "console.log"
    log.write_text("probe.version=1\nrule.entry.cr0=pass cr0=0x1\nPROBE PASS\n")
    argv = [{"K": str(vmlinux), "LOG": str(log)}.get(a, a) for a in args]
    r, w = os.pipe()
    os.close(r)  # the reader (`head`) is already gone when the first byte is written
    proc = subprocess.run([sys.executable, "-m", "pvhboot", *argv], stdout=w, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, timeout=HANG)
    os.close(w)
    assert proc.returncode == 0 and proc.stderr == b"", proc


# --- conformance ----------------------------------------------------------------------------------------

def test_conformance_dashdash_alone():
    assert_user_error(pvhboot("conformance", "--"), "empty VMM command after --")


def test_conformance_shows_a_failing_vmm_s_own_error():
    qemu = require_tool("qemu-system-x86_64")
    p = pvhboot("conformance", "--", qemu, "-M", "microvm", "-bogus", "-kernel", "{probe}")
    assert_user_error(p, "exit status 1")
    assert "-bogus: invalid option" in p.stderr.decode()


def test_debug_exit_status_mapping():
    from pvhboot.devices.debug_exit import exit_status

    assert [exit_status(v) for v in (0, 1, 42, 0xFF, 0x100, 0x101, 0x1FF, 0x200, 0xFFFFFFFF)] == \
        [0, 1, 42, 0xFF, 1, 1, 0xFF, 1, 0xFF]


def test_console_output_keeps_a_bounded_tail():
    from pvhboot.vmm.builder import ConsoleOutput

    c = ConsoleOutput(None, tail=1024)
    stream = [bytes([i % 256]) * 100 for i in range(5000)]
    for chunk in stream:
        c(chunk)
        assert len(c._buf) <= 2 * 1024
    assert c.total == 500000 and c.captured == b"".join(stream[-11:])[-1024:]


def test_run_console_filter_keeps_a_bounded_hidden_log():
    """`run` hides the kernel log before its marker; a guest that floods it (with or without
    newlines) must not grow the VMM: only a tail is kept for the failure report."""
    import io

    from pvhboot.commands.run import HIDDEN_TAIL, ConsoleFilter

    out = io.BytesIO()
    f = ConsoleFilter(out)
    for _ in range(200):
        f.write(b"x" * 50000)  # 10 MB, no newline
    for _ in range(200):
        f.write(b"kernel log line\n" * 3000)
    assert len(f.hidden) <= 2 * HIDDEN_TAIL and len(f._line) <= HIDDEN_TAIL + 50000
    f.write(b"PVHBOOT-BEGIN\nhello\nPVHBOOT-EXIT=3\n")
    assert out.getvalue() == b"hello\n" and f.exit_status == 3
