"""What a microVM is asked to be: one :class:`VmConfig`, declared and validated here, once.

Every command that starts a VM (boot, run, conformance) builds one through
:func:`pvhboot.commands.vm_options.vm_config_from_args`; ``plan`` takes the plan-relevant part.  The
builder (:class:`pvhboot.vmm.MicroVM`, :class:`pvhboot.vmm.Machine`) asks this module instead of
re-checking.  The boot layer's :class:`pvhboot.boot.config.BootConfig` is derived from it
(:meth:`VmConfig.boot_config`).

Validation covers what can be known before a kernel is read: sizes (positive, page multiples, at
most :data:`pvhboot.memory.layout.MAX_MEMORY`), vCPUs (1..MAX_CPUS, the MADT's 8-bit xAPIC ids),
a finite positive timeout, a command line that is UTF-8 text without NUL and at most the guest's
command-line area, and input files that are regular files of a sane size (:mod:`pvhboot.files`).
Whether the host can back the memory is known only when it is mapped (memory/guest_memory.py);
whether the command line fits *this* kernel's cmdline_size only once the kernel is read (boot/plan.py).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

from ..boot.config import BootConfig
from ..boot.plan import MAX_CPUS, format_size
from ..errors import ConfigError
from ..files import INITRD_LIMIT, KERNEL_LIMIT, check_output, check_regular
from ..image.model import Protocol
from ..memory import layout as L

REQUESTABLE_PROTOCOLS = Protocol.choices()
"""What a user may ask for: a protocol, or auto (PVH when the kernel has the PHYS32_ENTRY note)."""
DEFAULT_MEMORY = 512 * L.MiB


def check_cpus(cpus) -> int:
    """A vCPU count in 1..MAX_CPUS (xAPIC ids are 8 bits, 0xff is the broadcast id)."""
    if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= MAX_CPUS:
        raise ConfigError(f"invalid vCPU count {cpus!r} (1..{MAX_CPUS})")
    return cpus


def check_timeout(timeout) -> float | None:
    """None (no limit) or a finite number of seconds > 0: NaN would never expire (every comparison
    with it is false) and inf is no limit spelled as one."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise ConfigError(f"invalid timeout {timeout!r} (a finite number of seconds > 0)")
    return float(timeout)


def check_memory(memory) -> int:
    """Bytes of guest RAM: positive, a multiple of 4 KiB, at most MAX_MEMORY."""
    if isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0:
        raise ConfigError(f"invalid memory size {memory!r} (a positive number of bytes)")
    if memory % L.PAGE_SIZE:
        raise ConfigError(f"memory size {memory} bytes is not a multiple of 4 KiB")
    if memory > L.MAX_MEMORY:
        raise ConfigError(f"memory size {format_size(memory)} is larger than the "
                          f"{format_size(L.MAX_MEMORY)} pvhboot can give a guest")
    return memory


def check_cmdline(cmdline) -> str:
    """Text that encodes as UTF-8, without NUL, that fits the guest's command-line area.

    The kernel command line is bytes, but pvhboot takes it as text: argv that is not UTF-8 arrives
    surrogate-escaped (PEP 383) and is refused here, with the offending byte, rather than passed
    through (a boot loader's configuration is text; Linux parses the line as ASCII words)."""
    if not isinstance(cmdline, str):
        raise ConfigError(f"invalid command line {cmdline!r} (text expected)")
    try:
        raw = cmdline.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = cmdline[e.start]
        shown = f"byte {ord(bad) - 0xDC00:#04x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"{bad!r}"
        raise ConfigError(f"the command line is not UTF-8 text ({shown} at offset {e.start})") from None
    if b"\0" in raw:
        raise ConfigError("the command line contains a NUL character")
    if len(raw) >= L.CMDLINE_MAX_SIZE:
        raise ConfigError(f"command line of {len(raw)} bytes is longer than the "
                          f"{L.CMDLINE_MAX_SIZE - 1} the guest's command-line area holds")
    return cmdline


def check_protocol(protocol) -> str:
    if protocol not in REQUESTABLE_PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r} (choose from {', '.join(REQUESTABLE_PROTOCOLS)})")
    return protocol


@dataclass(frozen=True)
class VmConfig:
    """One microVM's options, valid once constructed (ConfigError otherwise).

    ``kernel`` None: the caller's choice (MicroVM boots the built-in probe).  ``check_files``
    False skips the file checks (a config for a kernel or initrd that does not exist yet, e.g. in
    a test that plans with an assumed size)."""

    kernel: str | None = None
    memory: int = DEFAULT_MEMORY
    cpus: int = 1
    protocol: str = "auto"  # one of REQUESTABLE_PROTOCOLS; resolved against the kernel by the builder
    cmdline: str = ""
    initrd: str | None = None
    timeout: float | None = None  # wall-clock seconds, None for no limit
    symbols: str | None = None  # System.map or ELF with .symtab, for crash reports
    events_json: str | None = None  # where `boot` writes the exit record (checked here, written after)
    coalesced_uart: bool = True  # COM1's THR as a coalesced PIO zone (see Machine)
    seccomp: bool = True  # vCPU threads under the seccomp allow-list (vmm/seccomp.py)
    # Where the kernel goes when not at its own address (boot/plan.py checks it against the kernel's
    # PHYS32_RELOC note or setup header): an address, or the seed of a random one.  At most one.
    load_addr: int | None = None
    kaslr_seed: int | None = None
    disks: tuple = ()  # vmm.virtio.DiskSpec: virtio-blk disks (transports 0.., in order)
    shares: tuple = ()  # vmm.virtio.ShareSpec: virtio-fs shares served by virtiofsd (after the disks)
    virtio_console: bool = False  # a virtio-console (hvc0) writing to the VM's console, after the shares
    check_files: bool = True

    def __post_init__(self) -> None:
        check_memory(self.memory)
        check_cpus(self.cpus)
        check_protocol(self.protocol)
        check_cmdline(self.cmdline)
        object.__setattr__(self, "timeout", check_timeout(self.timeout))
        object.__setattr__(self, "disks", tuple(self.disks))
        object.__setattr__(self, "shares", tuple(self.shares))
        if self.virtio_devices > L.VIRTIO_MMIO_MAX_DEVICES:
            raise ConfigError(f"{self.virtio_devices} virtio devices (--disk, --share, ...); "
                              f"at most {L.VIRTIO_MMIO_MAX_DEVICES}")
        for name in ("load_addr", "kaslr_seed"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"invalid {name} {value!r} (a non-negative integer)")
        if self.load_addr is not None and self.kaslr_seed is not None:
            raise ConfigError("--load-addr and --kaslr exclude each other: give one")
        for name in ("kernel", "initrd", "symbols", "events_json"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (str, os.PathLike)):
                    raise ConfigError(f"invalid {name} path {value!r}")
                object.__setattr__(self, name, os.fspath(value))
        if self.check_files:
            self._check_files()

    def _check_files(self) -> None:
        if self.kernel is not None:
            check_regular(self.kernel, "kernel", KERNEL_LIMIT)
        if self.initrd is not None and check_regular(self.initrd, "--initrd", INITRD_LIMIT) == 0:
            # An empty module has no bytes to place: Linux would find nothing in it, and a
            # zero-sized module at the end of RAM points outside RAM.  Say so instead.
            raise ConfigError(f"--initrd {self.initrd}: file is empty")
        if self.symbols is not None:
            # An ELF is mapped (the kernel's limit); a System.map's own limit applies when it is read.
            check_regular(self.symbols, "--symbols", KERNEL_LIMIT)
        for disk in self.disks:
            check_regular(disk.path, "--disk", L.MAX_DISK_SIZE)
        for share in self.shares:
            if not os.path.isdir(share.host):
                raise ConfigError(f"shared directory {share.host!r} is not a directory")
        if self.events_json is not None:
            check_output(self.events_json, "--events-json",
                         inputs=[p for p in (self.kernel, self.initrd, self.symbols) if p])

    @property
    def virtio_devices(self) -> int:
        """How many virtio-mmio transports the VM gets (disks, shares, console)."""
        return len(self.disks) + len(self.shares) + int(self.virtio_console)

    def with_(self, **changes) -> VmConfig:
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)

    def boot_config(self, protocol: Protocol) -> BootConfig:
        """The boot layer's view, for the resolved ``protocol``."""
        from .virtio import virtio_slots

        return BootConfig(memory=self.memory, cpus=self.cpus, cmdline=self.cmdline, initrd=self.initrd,
                          protocol=protocol, load_addr=self.load_addr, kaslr_seed=self.kaslr_seed,
                          virtio_mmio=virtio_slots(self.virtio_devices))
