"""`pvhboot extract BZIMAGE -o VMLINUX`: write a bzImage's decompressed payload (the ELF vmlinux).

The output is written to a temporary file and renamed, so an error leaves no output file.  It must
be a new path or a regular file other than the input (a symlink is followed); it gets mode 0666 minus
the umask (pvhboot.files).
"""
from __future__ import annotations

import os

from ..errors import ImageError
from ..files import check_output, write_output
from ..image import map_file
from ..image.bzimage import is_bzimage, parse_bzimage
from ..image.elf import ELF_MAGIC


def add_parser(subparsers):
    p = subparsers.add_parser("extract", help="decompress a bzImage's payload to its ELF vmlinux",
                              description="Decompress a bzImage payload (gzip, bzip2, lzma, xz, lz4, "
                                          "zstd) and write the ELF vmlinux it contains.")
    p.add_argument("bzimage", metavar="BZIMAGE", help="the bzImage (e.g. /boot/vmlinuz-*)")
    p.add_argument("-o", "--output", metavar="VMLINUX", required=True, help="where to write the ELF")
    return p


def run(args) -> int:
    name = os.fspath(args.bzimage)
    check_output(args.output, "output", inputs=[name])  # before the decompression's work
    data = map_file(name)
    if data[:4] == ELF_MAGIC:
        raise ImageError(f"{name} is already an ELF vmlinux: nothing to extract")
    if not is_bzimage(data):
        raise ImageError(f"{name}: not a bzImage (no 'HdrS' at 0x202; first bytes {bytes(data[:4]).hex(' ')})")
    try:
        bz = parse_bzimage(data)
    except ImageError as e:
        raise type(e)(f"{name}: {e}") from None
    write_output(args.output, [bz.payload.data], "output", inputs=[name])
    return 0
