"""Read a bzImage: its setup header, where the protected-mode kernel and payload are, the payload.

Documentation/arch/x86/boot.rst (the real-mode kernel header, "Loading the rest of the kernel",
"payload_offset"/"payload_length", "64-bit boot protocol") and arch/x86/boot/header.S.  The setup
header is decoded with the one declaration of it, :class:`pvhboot.abi.bootparam.setup_header`.

Facts a loader needs:
- the protected-mode kernel starts at file offset ``(setup_sects or 4, +1) * 512`` (boot.rst: "If
  this field is 0, the real value is 4"; +1 for the boot sector);
- the payload (compressed vmlinux, followed by the u32 decompressed size) is at that offset +
  ``payload_offset``, ``payload_length`` bytes long (protocol >= 2.08);
- the 32-bit entry is ``code32_start`` (where the loader put the protected-mode kernel; 0x100000 by
  default) and, when ``xloadflags`` has XLF_KERNEL_64, the 64-bit entry is that load address +
  :data:`STARTUP_64_OFFSET` (boot.rst: "the kernel's 64-bit entry point is at offset 0x200").
"""
from __future__ import annotations

import ctypes

from ..abi.bootparam import (
    BOOT_FLAG_MAGIC,
    HDRS_MAGIC,
    SETUP_HEADER_OFFSET,
    STARTUP_64_OFFSET,
    XLoadFlags,
    setup_header,
)
from ..errors import ImageError
from .decompress import decompress_payload, decompressed_size, detect_compression
from .elf import parse_elf
from .model import BzImage

# boot.rst: the protected-mode kernel is loaded at 0x100000 unless the loader relocates it.
DEFAULT_LOAD_ADDRESS = 0x100000
# boot.rst: payload_offset / payload_length exist from protocol 2.08.
MIN_PROTOCOL = 0x0208
SECTOR = 512
# boot.rst: init_size exists from protocol 2.10.
INIT_SIZE_PROTOCOL = 0x020A
# boot.rst "kernel_version": if nonzero, a pointer (minus 0x200) to a NUL-terminated version string.
_KERNEL_VERSION_BASE = 0x200

_HEADER_END = SETUP_HEADER_OFFSET + ctypes.sizeof(setup_header)
_HDRS = HDRS_MAGIC.to_bytes(4, "little")
_HDRS_OFFSET = SETUP_HEADER_OFFSET + setup_header.header.offset


def is_bzimage(data) -> bool:
    """The "HdrS" signature at 0x202 (boot.rst) is what tells a bzImage."""
    return len(data) >= _HDRS_OFFSET + 4 and bytes(data[_HDRS_OFFSET:_HDRS_OFFSET + 4]) == _HDRS


def read_setup_header(data) -> setup_header:
    """The setup header at 0x1f1, checked for its two signatures."""
    if len(data) < _HEADER_END:
        raise ImageError(f"file is too short for a bzImage setup header ({len(data)} bytes, need {_HEADER_END})")
    hdr = setup_header.from_buffer_copy(bytes(data[SETUP_HEADER_OFFSET:_HEADER_END]))
    if hdr.header != HDRS_MAGIC:
        raise ImageError(f"bzImage header signature at 0x202 is {hdr.header:#010x}, "
                         f"expected {HDRS_MAGIC:#010x} ('HdrS')")
    if hdr.boot_flag != BOOT_FLAG_MAGIC:
        raise ImageError(f"bzImage boot_flag at 0x1fe is {hdr.boot_flag:#06x}, expected {BOOT_FLAG_MAGIC:#06x}")
    return hdr


def declared_setup_header(data, hdr: setup_header) -> setup_header:
    """``hdr`` cut where the kernel says its header ends: boot.rst, "the setup header ... ends at
    0x202 + the byte at 0x201"; the fields past that end (an older protocol) read as zero.  This is
    the header a loader copies into boot_params."""
    end = min(0x202 + data[0x201], _HEADER_END)
    raw = bytes(hdr)[: end - SETUP_HEADER_OFFSET]
    return setup_header.from_buffer_copy(raw.ljust(ctypes.sizeof(setup_header), b"\0"))


def parse_bzimage(data, *, decompress: bool = True) -> BzImage:
    """Parse a bzImage; with ``decompress`` the payload is decompressed and parsed as an ELF."""
    hdr = read_setup_header(data)
    if hdr.version < MIN_PROTOCOL:
        raise ImageError(f"bzImage boot protocol {hdr.version >> 8}.{hdr.version & 0xff:02d} predates 2.08 "
                         "(no payload_offset): too old to boot")
    size = len(data)
    setup_size = ((hdr.setup_sects or 4) + 1) * SECTOR
    if setup_size > size:
        raise ImageError(f"bzImage setup_sects {hdr.setup_sects} puts the protected-mode kernel at {setup_size:#x}, "
                         f"past the end of the file ({size:#x})")
    start = setup_size + hdr.payload_offset
    end = start + hdr.payload_length
    if hdr.payload_length == 0 or end > size:
        raise ImageError(f"bzImage payload (payload_offset {hdr.payload_offset:#x}, "
                         f"payload_length {hdr.payload_length:#x}, file bytes {start:#x}..{end:#x}) "
                         f"is empty or runs past the end of the file ({size:#x})")
    payload = memoryview(data)[start:end]
    compression = detect_compression(payload)
    hdr = declared_setup_header(data, hdr)
    header = {name: getattr(hdr, name) for name, _ in setup_header._fields_}
    elf = None
    if decompress:
        _check_output_fits_init_size(hdr, payload)
        vmlinux = decompress_payload(payload, compression)
        try:
            elf = parse_elf(vmlinux)
        except ImageError as e:
            raise ImageError(f"decompressed {compression} payload: {e}") from None
    payload.release()
    return BzImage(
        data=data,
        header=header,
        setup_header=hdr,
        boot_protocol=(hdr.version >> 8, hdr.version & 0xFF),
        setup_size=setup_size,
        compression=compression,
        payload=elf,
        payload_offset=start,
        payload_length=hdr.payload_length,
        version_string=_kernel_version(data, hdr.kernel_version),
    )


def _check_output_fits_init_size(hdr: setup_header, payload) -> None:
    """The decompressed size can be no more than init_size: the kernel decompresses in place
    within init_size bytes (arch/x86/boot/header.S: INIT_SIZE >= ZO_INIT_SIZE = ZO__end -
    startup_32 + an extract offset of at least z_output_len - z_input_len, and the payload lies
    inside ZO).  A larger trailer is corruption, refused before anything is allocated for it."""
    claim = decompressed_size(payload)
    if hdr.version >= INIT_SIZE_PROTOCOL and hdr.init_size and claim > hdr.init_size:
        raise ImageError(f"bzImage payload's size trailer says {claim} bytes, more than the setup header's "
                         f"init_size {hdr.init_size:#x} the kernel decompresses into: the image is corrupt")


def _kernel_version(data, pointer: int) -> str | None:
    if not pointer:
        return None
    off = pointer + _KERNEL_VERSION_BASE
    if off >= len(data):
        return None
    raw = bytes(data[off:off + 256])
    raw = raw.split(b"\0", 1)[0]
    return raw.decode("ascii", "replace") or None


def linux32_entry(bz: BzImage) -> int:
    """32-bit boot protocol entry: code32_start (where the protected-mode kernel is loaded)."""
    return bz.header["code32_start"]


def linux64_entry(bz: BzImage) -> int | None:
    """64-bit boot protocol entry when XLF_KERNEL_64 is set: load address + 0x200.

    The load address is the header's code32_start (0x100000 in every real bzImage).  A loader that
    puts the protected-mode kernel elsewhere moves this entry by the same offset.
    """
    if not bz.header["xloadflags"] & XLoadFlags.XLF_KERNEL_64:
        return None
    return bz.header["code32_start"] + STARTUP_64_OFFSET
