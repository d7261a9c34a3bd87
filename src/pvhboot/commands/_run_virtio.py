"""`pvhboot run` with virtio devices: the host's directories through virtio-fs and disks through
virtio-blk, the way virtme-ng does it with QEMU.

By default the guest sees the host's root file system read-only (virtio-fs tag ``pvhroot``, mounted
``ro``) under a tmpfs overlay, so CMD may write anywhere and nothing reaches the host; ``--rwdir``
directories are mounted writable through; CMD runs chrooted there, in the current directory.  The
initramfs carries the kernel's own modules (virtio_mmio, virtio_blk, fuse, virtiofs, overlay), in
the order modules.dep gives, and /init insmods them before mounting.

What this module produces is data for commands/run.py: the devices to attach (vmm.virtio specs),
the module files to pack, and the shell lines /init runs before the command and around it.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .run import POWEROFF

ROOT_TAG = "pvhroot"
NEWROOT = "/newroot"
MODULE_DIR = "pvhboot/modules"  # in the initramfs
FILES_DIR = "pvhboot/files"  # --file copies, put in place after the new root is mounted
FS_MODULES = ("virtio_mmio", "fuse", "virtiofs")
OVERLAY_MODULES = ("overlay",)
BLK_MODULES = ("virtio_mmio", "virtio_blk")
CONSOLE_MODULES = ("virtio_mmio", "virtio_console")


@dataclass
class RunDevices:
    root: str | None = None  # host directory shown as the guest's root (read-only + overlay)
    dirs: list[tuple[str, str, bool]] = field(default_factory=list)  # (host, guest, writable)
    disks: list = field(default_factory=list)  # vmm.virtio.DiskSpec
    cwd: str = "/root"
    modules: list[Path] = field(default_factory=list)
    console: bool = False  # CMD's output through virtio-console (hvc0): no VM exit per byte

    @property
    def shares(self) -> list:
        from ..vmm.virtio import ShareSpec

        out = [ShareSpec(self.root, ROOT_TAG, read_only=True)] if self.root else []
        out += [ShareSpec(host, f"pvhdir{i}", read_only=not rw) for i, (host, _, rw) in enumerate(self.dirs)]
        return out

    @property
    def any(self) -> bool:
        return bool(self.root or self.dirs or self.disks or self.console)


def _pair(text: str, option: str) -> tuple[str, str]:
    host, _, guest = text.partition(":")
    if not host:
        raise ConfigError(f"{option} {text!r}: no host directory (HOST[:GUEST])")
    host = os.path.abspath(host)
    if not os.path.isdir(host):
        raise ConfigError(f"{option} {text!r}: {host} is not a directory")
    guest = guest or host
    if not guest.startswith("/"):
        raise ConfigError(f"{option} {text!r}: the guest path must be absolute")
    return host, guest


def plan_devices(args, config, kernel: Path) -> RunDevices:
    """What `run`'s options ask for (``args``: root, no_root, rodir, rwdir, cwd; the disks are
    already checked in ``config``, the VmConfig)."""
    plan = RunDevices()
    plan.disks = list(config.disks)
    plan.dirs = [(*_pair(t, "--rodir"), False) for t in args.rodir] + [(*_pair(t, "--rwdir"), True)
                                                                        for t in args.rwdir]
    if not args.no_root:
        root = os.path.abspath(args.root or "/")
        if not os.path.isdir(root):
            raise ConfigError(f"--root {args.root!r} is not a directory")
        plan.root = root
    if plan.root or plan.dirs:
        from ..vmm.virtiofsd import find_virtiofsd

        if args.root is None and not plan.dirs and not args.no_root:
            # The default only (an explicit --root/--rodir/--rwdir fails instead): QEMU 7.2's
            # virtiofsd sandboxes itself with namespaces or chroot, which needs root.
            why = None
            try:
                find_virtiofsd()
            except ConfigError as e:
                why = str(e)
            if why is None and os.geteuid() != 0:
                why = "virtiofsd needs root to sandbox itself (namespaces or chroot)"
            if why is not None:
                import sys

                print(f"pvhboot run: note: {why}; the guest gets the initramfs only (--no-root)", file=sys.stderr)
                plan.root = None
    if args.cwd:
        plan.cwd = args.cwd
    elif plan.root == "/":
        plan.cwd = os.getcwd()
    elif plan.root:
        plan.cwd = "/"
    plan.console = True
    try:
        plan.modules = _modules(kernel, plan)
    except ConfigError:
        if plan.disks or plan.shares:
            raise
        plan.console = False  # no module tree: the command's output goes through COM1, as before
    return plan


def _modules(kernel: Path, plan: RunDevices) -> list[Path]:
    from ..image.modules import ModuleTree, module_tree

    names: list[str] = []
    if plan.console:
        names += CONSOLE_MODULES
    if plan.disks:
        names += BLK_MODULES
    if plan.root or plan.dirs:
        names += FS_MODULES
    if plan.root:
        names += OVERLAY_MODULES
    tree = module_tree(kernel) or module_tree(kernel, _release(kernel))
    if tree is None:
        raise ConfigError(f"no module tree (lib/modules/<release>) for {kernel}: the devices need "
                          f"{', '.join(dict.fromkeys(names))}; use --no-root and no --disk/--rodir/--rwdir")
    return ModuleTree(tree).load_order(list(dict.fromkeys(names)))


def _release(kernel: Path) -> str | None:
    from ..errors import ImageError
    from ..image import load_kernel

    try:
        version = load_kernel(str(kernel), decompress=False).linux_version
    except ImageError:
        return None
    return version.split()[0] if version else None


def pack(cpio, plan: RunDevices, files: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Add the modules (and, with a new root, the --file copies) to the initramfs; returns the
    --file pairs the initramfs itself should still carry at their guest paths."""
    for i, path in enumerate(plan.modules):
        cpio.add_file_from(f"{MODULE_DIR}/{i:02d}-{path.name}", str(path), mode=0o644)
    if not plan.root:
        return files
    for i, (host, _) in enumerate(files):
        if not os.path.isfile(host):
            raise ConfigError(f"--file {host!r}: no such file")
        cpio.add_file_from(f"{FILES_DIR}/{i}", host, mode=0o755 if os.access(host, os.X_OK) else 0o644)
    return []


def prelude(plan: RunDevices, files: list[tuple[str, str]]) -> str:
    """Shell lines for /init after the API file systems are mounted and before the command."""
    q = shlex.quote
    lines = [f"fail() {{ echo \"pvhboot-init: $*\"; {POWEROFF}; }}"]
    for i, path in enumerate(plan.modules):
        mod = f"/{MODULE_DIR}/{i:02d}-{path.name}"
        lines.append(f"insmod {mod} || fail 'insmod {path.name} failed'")
    if plan.console:
        # From here on the markers and CMD's output go through hvc0 (virtio-console: the guest's
        # writes reach pvhboot through the ring and an ioeventfd kick, no exit per byte); COM1
        # keeps the kernel's own messages.  stdin stays the console (COM1), where input arrives.
        lines += ["i=0; while [ ! -c /dev/hvc0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done",
                  "[ -c /dev/hvc0 ] && exec >/dev/hvc0 2>&1"]
    base = NEWROOT if plan.root else ""
    if plan.root:
        lines += [
            "mkdir -p /pvhboot/lower /pvhboot/rw /newroot",
            f"mount -t virtiofs -o ro {ROOT_TAG} /pvhboot/lower || fail 'cannot mount the host root (virtio-fs)'",
            "mount -t tmpfs tmpfs /pvhboot/rw && mkdir -p /pvhboot/rw/upper /pvhboot/rw/work",
            "mount -t overlay overlay -o lowerdir=/pvhboot/lower,upperdir=/pvhboot/rw/upper,"
            f"workdir=/pvhboot/rw/work {NEWROOT} || fail 'cannot mount the overlay root'",
        ]
        for fs, where, extra in (("proc", "proc", ""), ("sysfs", "sys", ""), ("devtmpfs", "dev", ""),
                                 ("tmpfs", "tmp", ""), ("tmpfs", "run", "")):
            lines.append(f"mkdir -p {NEWROOT}/{where} && mount -t {fs}{extra} {fs} {NEWROOT}/{where}")
        lines.append(f"mkdir -p {NEWROOT}/dev/pts && mount -t devpts devpts {NEWROOT}/dev/pts")
    for i, (_, guest, rw) in enumerate(plan.dirs):
        target = q(base + guest)
        lines.append(f"mkdir -p {target} && mount -t virtiofs {'' if rw else '-o ro '}pvhdir{i} {target} "
                     f"|| fail {q(f'cannot mount {guest}')}")
    if plan.root:
        for i, (_, guest) in enumerate(files):
            target = q(f"{NEWROOT}/{guest.lstrip('/')}")
            lines.append(f"mkdir -p \"$(dirname {target})\" && cp /{FILES_DIR}/{i} {target}")
    return "\n".join(lines) + "\n"


def command_line(plan: RunDevices, cmd: list[str]) -> str:
    """The shell line that runs ``cmd`` (chrooted into the new root when there is one)."""
    if not plan.root:
        return shlex.join(cmd)
    script = 'cd "$1" || exit 127; shift; exec "$@"'
    return shlex.join(["chroot", NEWROOT, "/bin/sh", "-c", script, "pvhboot-run", plan.cwd, *cmd])
