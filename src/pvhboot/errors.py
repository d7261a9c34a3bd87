"""One root error for everything a user can get wrong; one subclass per layer.

Every error carries the offending value in its message so that the CLI can print it as one line
(``pvhboot: error: ...``) and exit 2 without a traceback.  Errors that are *not* user mistakes
(bugs, guest crashes) never derive from :class:`PvhbootError`.
"""


class PvhbootError(Exception):
    """Root of pvhboot's user-facing errors."""


class ImageError(PvhbootError):
    """The kernel file is not something we can parse (bad ELF, bad bzImage, bad payload)."""


class UnsupportedCompression(ImageError):
    """The bzImage payload uses a codec pvhboot does not decompress (e.g. lzo)."""


class LayoutError(PvhbootError):
    """The guest memory plan cannot be made: too little RAM, overlaps, blob outside RAM."""


class BootError(PvhbootError):
    """A boot structure cannot be written (command line too long, no PVH note, ...)."""


class ConfigError(PvhbootError):
    """An invalid VM option (unknown device, bad size string, bad cpu count)."""


class KvmError(PvhbootError):
    """/dev/kvm is missing, not accessible, or refused an operation."""
