"""A newc ("070701") cpio writer for Linux initramfs images.

Format: the kernel's Documentation/driver-api/early-userspace/buffer-format.rst (the "new ASCII"
format of cpio(5)).  Each member is a 110-byte ASCII header of "070701" and thirteen 8-digit hex
fields (ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
namesize, check), the NUL-terminated name, padding to a multiple of 4 bytes, the data, padding to
a multiple of 4 again.  The archive ends with a member named "TRAILER!!!".

Reproducible by construction: owner, group and mtime are fixed (0 by default), inode numbers are
assigned in order of addition, every member has one link, so the same calls give the same bytes.
Members stream to a binary file object; file contents are copied from disk in chunks.
"""
from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import ConfigError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
_CHUNK = 1 << 20
COMPRESSIONS = ("none", "gzip")


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def build_header(*, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int,
                 filesize: int, rdevmajor: int = 0, rdevminor: int = 0, namesize: int) -> bytes:
    """The 110-byte newc header.  devmajor/devminor (the archive's own file system) stay 0 and
    check is 0: the kernel only verifies it for the "070702" (crc) variant."""
    fields = (ino, mode, uid, gid, nlink, mtime, filesize, 0, 0, rdevmajor, rdevminor, namesize, 0)
    for value in fields:
        if not 0 <= value <= 0xFFFFFFFF:
            raise ConfigError(f"cpio header field out of range: {value:#x}")
    return MAGIC + b"".join(b"%08X" % v for v in fields)


class CpioWriter:
    """Write a newc archive member by member to ``fileobj`` (use as a context manager, or call
    :meth:`close`, which writes the trailer but does not close ``fileobj``).

    Names are stored relative ("usr/bin/python3"); a leading "/" is dropped.  Parent directories
    that were not added explicitly are added (mode 0755) before the first member inside them,
    because the kernel's unpacker does not create them."""

    def __init__(self, fileobj: BinaryIO, *, uid: int = 0, gid: int = 0, mtime: int = 0) -> None:
        self._out = fileobj
        self._uid, self._gid, self._mtime = uid, gid, mtime
        self._next_ino = 1
        self._names: set[str] = set()
        self._closed = False
        self.bytes_written = 0

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> CpioWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    # -- members -------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return self._norm(name) in self._names

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        name = self._norm(name)
        if name in self._names:
            return  # directories may be named more than once (parents of several files)
        self._member(name, stat.S_IFDIR | (mode & 0o7777), nlink=2)

    def add_file(self, name: str, data: bytes = b"", mode: int = 0o644) -> None:
        """A regular file with the given contents."""
        self._member(self._norm(name), stat.S_IFREG | (mode & 0o7777), data=data)

    def add_file_from(self, name: str, source: str | os.PathLike, mode: int | None = None, *,
                      keep_mtime: bool = False) -> None:
        """A regular file copied in chunks from ``source`` (a host path, symlinks followed);
        mode defaults to the source's permission bits.  ``keep_mtime`` stores the source's mtime
        instead of the fixed one (timestamp-checked .pyc files need their source's mtime)."""
        st = os.stat(source)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"not a regular file: {os.fspath(source)!r}")
        perm = stat.S_IMODE(st.st_mode) if mode is None else mode & 0o7777
        mtime = int(st.st_mtime) if keep_mtime else None
        with open(source, "rb") as f:
            self._member(self._norm(name), stat.S_IFREG | perm, stream=f, size=st.st_size,
                         mtime=mtime)

    def add_symlink(self, name: str, target: str) -> None:
        """A symbolic link; newc stores the target as the member's data."""
        self._member(self._norm(name), stat.S_IFLNK | 0o777, data=os.fsencode(target))

    def add_device(self, name: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        """A character ("c") or block ("b") device node."""
        kinds = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}
        if kind not in kinds:
            raise ConfigError(f"device kind must be 'c' or 'b', not {kind!r}")
        self._member(self._norm(name), kinds[kind] | (mode & 0o7777), rdev=(major, minor))

    def add_tree(self, name: str, source: str | os.PathLike, *, exclude=None,
                 keep_mtime: bool = False) -> None:
        """A host directory tree, walked in sorted order (reproducible).  Symlinks are kept as
        symlinks.  ``exclude(relpath)`` returning True skips a file or a whole directory."""
        source = Path(source)
        base = self._norm(name)
        self.add_dir(base)
        for dirpath, dirnames, filenames in os.walk(source):
            rel_dir = Path(dirpath).relative_to(source)
            dirnames.sort()
            filenames.sort()
            kept = []
            for d in dirnames:
                rel = (rel_dir / d).as_posix()
                if exclude and exclude(rel):
                    continue
                full = Path(dirpath) / d
                if full.is_symlink():
                    self.add_symlink(f"{base}/{rel}", os.readlink(full))
                    continue
                kept.append(d)
                self.add_dir(f"{base}/{rel}", stat.S_IMODE(full.stat().st_mode))
            dirnames[:] = kept
            for fname in filenames:
                rel = (rel_dir / fname).as_posix()
                if exclude and exclude(rel):
                    continue
                full = Path(dirpath) / fname
                if full.is_symlink():
                    self.add_symlink(f"{base}/{rel}", os.readlink(full))
                elif full.is_file():
                    self.add_file_from(f"{base}/{rel}", full, keep_mtime=keep_mtime)

    def close(self) -> None:
        """Write the trailer (once)."""
        if self._closed:
            return
        self._write_member(TRAILER, 0, nlink=1, ino=0, data=b"")
        self._closed = True

    # -- internals -------------------------------------------------------------------------------
    @staticmethod
    def _norm(name: str) -> str:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise ConfigError(f"invalid archive member name {name!r}")
        return "/".join(parts)

    def _member(self, name: str, mode: int, *, nlink: int = 1, data: bytes | None = None,
                stream=None, size: int = 0, rdev: tuple[int, int] = (0, 0),
                mtime: int | None = None) -> None:
        if self._closed:
            raise ConfigError("cpio archive already closed")
        if name in self._names:
            raise ConfigError(f"duplicate archive member {name!r}")
        parent = name.rpartition("/")[0]
        if parent and parent not in self._names:
            self.add_dir(parent)
        self._names.add(name)
        ino = self._next_ino
        self._next_ino += 1
        self._write_member(name, mode, nlink=nlink, ino=ino, data=data, stream=stream,
                           size=size, rdev=rdev, mtime=mtime)

    def _write_member(self, name: str, mode: int, *, nlink: int, ino: int, data: bytes | None,
                      stream=None, size: int = 0, rdev: tuple[int, int] = (0, 0),
                      mtime: int | None = None) -> None:
        encoded = os.fsencode(name) + b"\0"
        filesize = len(data) if data is not None else size
        header = build_header(ino=ino, mode=mode, uid=self._uid, gid=self._gid, nlink=nlink,
                              mtime=self._mtime if mtime is None else mtime,
                              filesize=filesize, rdevmajor=rdev[0],
                              rdevminor=rdev[1], namesize=len(encoded))
        self._write(header + encoded + _pad4(HEADER_SIZE + len(encoded)))
        if data is not None:
            self._write(data)
        elif stream is not None:
            remaining = size
            while remaining:
                chunk = stream.read(min(_CHUNK, remaining))
                if not chunk:
                    raise ConfigError(f"file {name!r} shrank while being archived")
                self._write(chunk)
                remaining -= len(chunk)
        self._write(_pad4(filesize))

    def _write(self, b: bytes) -> None:
        self._out.write(b)
        self.bytes_written += len(b)


def open_compressed(fileobj: BinaryIO, compression: str = "none") -> BinaryIO:
    """Wrap ``fileobj`` for the initramfs compression the kernel will undo (CONFIG_RD_GZIP is
    in every distro kernel).  "none" returns ``fileobj`` itself.  gzip's header mtime is 0 so the
    output stays reproducible; the caller closes the returned object before ``fileobj``."""
    if compression == "none":
        return fileobj
    if compression == "gzip":
        return gzip.GzipFile(fileobj=fileobj, mode="wb", compresslevel=6, mtime=0)
    raise ConfigError(f"unsupported initramfs compression {compression!r} (use one of {COMPRESSIONS})")
