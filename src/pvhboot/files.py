"""The files a user names, opened and written safely: the one place that decides what pvhboot reads
and writes.

Inputs (a kernel, an initrd, a symbol file, a console log) must be *regular files* no larger than a
limit that says what such a file can sensibly be.  They are opened with O_NONBLOCK, so a fifo
(which would block open(2) until a writer appears, open(2) "FIFOs") is opened at once and then
refused by fstat, as are a directory, /dev/zero or /dev/urandom (which would be read without end).
The check is made on the opened descriptor (fstat), never on the path before opening, so a file
swapped after the check cannot slip through.

Outputs (``extract -o``, ``--events-json``) are written to a temporary file beside the target and
renamed onto it, so a failure (ENOSPC, EFBIG, ...) leaves no partial file.  The target must be a new
path or an existing regular file; a device node, a fifo, a socket or a directory is refused (renaming
over /dev/null would replace the device with a file), and so is the input being read (same device
and inode).  A symlink is *followed*: the file it points at is replaced and the link stays, as a
shell redirection or ``cp`` would; a dangling symlink is refused rather than guessed at.  The new
file gets mode 0666 minus the umask, like any file a program creates (an existing file keeps its
permission bits).
"""
from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable

from .errors import ConfigError, PvhbootError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# Why each limit (all are far above any real file of that kind, far below what would hurt):
KERNEL_LIMIT = 2 * GiB
"""A kernel file is mapped, never read whole: this only bounds the address space and the work of
parsing.  The largest real vmlinux (allyesconfig with full DWARF) is around 1 GiB; a bootable kernel
must also fit below the 3 GiB MMIO hole."""
INITRD_LIMIT = 3 * GiB
"""An initrd is copied into guest RAM below the 32-bit MMIO hole (memory/layout.py, 3 GiB): a larger
one can never be placed."""
SYMBOL_MAP_LIMIT = 256 * MiB
"""A System.map is parsed into a list of symbols; a distro kernel's is ~5 MB, allyesconfig's ~20 MB."""
CONSOLE_LOG_LIMIT = 64 * MiB
"""A saved probe console (`conformance --report`) is ~10 KB; a VMM's whole boot log is a few MB."""

_KIND = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a fifo"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    for test, name in _KIND:
        if test(mode):
            return name
    return "not a regular file"


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def _check(st: os.stat_result, name: str, what: str, limit: int, error: type[PvhbootError]) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {name}: {_kind(st.st_mode)}, not a regular file")
    if st.st_size > limit:
        raise error(f"{what} {name}: {st.st_size} bytes is larger than the {_size(limit)} a "
                    f"{what} can be")


def open_regular(path: str | os.PathLike, what: str, limit: int, *,
                 error: type[PvhbootError] = ConfigError) -> int:
    """A read-only file descriptor (O_CLOEXEC) on the regular file ``path`` of at most ``limit``
    bytes; otherwise ``error`` naming ``what`` ("kernel", "--initrd", ...) and ``path``.
    Never blocks: a fifo is opened non-blocking and refused.  The caller closes the fd."""
    name = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise error(f"cannot read {what} {name}: {e.strerror or e}") from None
    try:
        _check(os.fstat(fd), name, what, limit, error)
        os.set_blocking(fd, True)  # a regular file: reads never block anyway; keep plain semantics
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path: str | os.PathLike, what: str, limit: int, *,
                  error: type[PvhbootError] = ConfigError) -> int:
    """Validate ``path`` as :func:`open_regular` would (without keeping it open); its size."""
    fd = open_regular(path, what, limit, error=error)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def read_regular(path: str | os.PathLike, what: str, limit: int, *,
                 error: type[PvhbootError] = ConfigError) -> bytes:
    """The whole content of a small regular file (at most ``limit`` bytes, even if it grows)."""
    fd = open_regular(path, what, limit, error=error)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"cannot read {what} {os.fspath(path)}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise error(f"{what} {os.fspath(path)}: grew beyond {_size(limit)} while being read")
    return data


def check_output(path: str | os.PathLike, what: str, *, inputs: Iterable[str | os.PathLike] = (),
                 error: type[PvhbootError] = ConfigError) -> str:
    """Check that ``path`` can be written as an output (see the module docstring) *before* any
    work is done; returns the path to write (a symlink resolved).  ``inputs``: files being read,
    which the output must not be."""
    name = os.fspath(path)
    if not name:
        raise error(f"{what}: empty path")
    target = os.path.realpath(name)  # a symlink is followed (to its final target)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        if os.path.islink(name):
            raise error(f"{what} {name}: a symlink to the missing {target}; not followed") from None
        st = None
    except OSError as e:
        raise error(f"cannot write {what} {name}: {e.strerror or e}") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise error(f"refusing to write {what} {name}: {_kind(st.st_mode)}, not a regular file")
        for source in inputs:
            try:
                ist = os.stat(source)
            except OSError:
                continue
            if (ist.st_dev, ist.st_ino) == (st.st_dev, st.st_ino):
                raise error(f"refusing to write {what} {name}: it is the input {os.fspath(source)}")
    directory = os.path.dirname(target) or "."
    if not os.path.isdir(directory):
        raise error(f"cannot write {what} {name}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise error(f"cannot write {what} {name}: directory {directory} is not writable")
    return target


def _new_file_mode() -> int:
    """0666 minus the process umask: what open(O_CREAT, 0666) would give (mkstemp gives 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_output(path: str | os.PathLike, chunks: Iterable[bytes], what: str, *,
                 inputs: Iterable[str | os.PathLike] = (),
                 error: type[PvhbootError] = ConfigError) -> None:
    """Write ``chunks`` to ``path`` all or nothing: a temporary file beside the target, renamed onto
    it.  Any failure (a full disk, a file size limit) is ``error`` naming ``what``; no partial file
    is left behind."""
    target = check_output(path, what, inputs=inputs, error=error)
    name = os.fspath(path)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = _new_file_mode()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pvhboot-", dir=os.path.dirname(target) or ".")
    except OSError as e:
        raise error(f"cannot write {what} {name}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise error(f"cannot write {what} {name}: {e.strerror or e}") from None
        raise
