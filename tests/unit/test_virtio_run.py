"""The host side of `pvhboot run`/`boot` with virtio devices: module order from a kernel tree,
the generated /init, option parsing, shared (memfd) guest RAM."""
from __future__ import annotations

import os
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from pvhboot.commands import _run_virtio
from pvhboot.errors import ConfigError
from pvhboot.image.modules import ModuleTree, module_tree
from pvhboot.memory import GuestMemory
from pvhboot.vmm.virtio import DiskSpec, ShareSpec

DEBIAN = Path(__file__).resolve().parents[2] / ".cache" / "debian-kernel" / "current"


def _fake_tree(tmp_path) -> Path:
    tree = tmp_path / "lib" / "modules" / "6.1.0-test"
    for rel in ("kernel/a/virtio_ring.ko", "kernel/a/virtio.ko", "kernel/a/virtio_mmio.ko", "kernel/fs/fuse.ko"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(b"")
    (tree / "modules.dep").write_text(
        "kernel/a/virtio_ring.ko:\nkernel/a/virtio.ko: kernel/a/virtio_ring.ko\n"
        "kernel/a/virtio_mmio.ko: kernel/a/virtio.ko kernel/a/virtio_ring.ko\nkernel/fs/fuse.ko:\n")
    (tree / "modules.builtin").write_text("kernel/fs/overlayfs/overlay.ko\n")
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "vmlinuz-6.1.0-test").write_bytes(b"")
    return tree


def test_modules_dep_order_and_builtins(tmp_path):
    tree = _fake_tree(tmp_path)
    assert module_tree(tmp_path / "boot" / "vmlinuz-6.1.0-test") == tree
    order = ModuleTree(tree).load_order(["virtio-mmio", "overlay", "fuse", "virtio"])
    assert [p.name for p in order] == ["virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "fuse.ko"]
    with pytest.raises(ConfigError, match="neither built into the kernel"):
        ModuleTree(tree).load_order(["nosuch"])


@pytest.mark.skipif(not (DEBIAN / "lib" / "modules").is_dir(), reason="Debian cloud kernel not cached "
                    "(scripts/fetch-debian-kernel.sh)")
def test_debian_kernel_modules_from_modinfo():
    # The .deb ships no modules.dep: dependencies come from each module's .modinfo depends=.
    kernel = next((DEBIAN / "boot").glob("vmlinuz-*"))
    names = [p.name for p in ModuleTree(module_tree(kernel)).load_order(["virtiofs", "virtio_blk", "overlay"])]
    assert names.index("virtio_ring.ko") < names.index("virtio.ko") < names.index("virtiofs.ko")
    assert names.index("fuse.ko") < names.index("virtiofs.ko") and "overlay.ko" in names


def test_init_mounts_the_host_root_and_dirs(tmp_path):
    plan = _run_virtio.RunDevices(root="/", dirs=[(str(tmp_path), "/data", True), ("/etc", "/hostetc", False)],
                                  cwd="/work/dir", modules=[Path("/m/virtio_mmio.ko"), Path("/m/virtiofs.ko")])
    text = _run_virtio.prelude(plan, [("/host/f", "root/f")])
    assert text.index("00-virtio_mmio.ko") < text.index("01-virtiofs.ko") < text.index("mount -t virtiofs")
    assert "mount -t virtiofs -o ro pvhroot /pvhboot/lower" in text
    assert "upperdir=/pvhboot/rw/upper" in text and "mount -t proc proc /newroot/proc" in text
    assert "mount -t virtiofs pvhdir0 /newroot/data" in text  # rw
    assert "mount -t virtiofs -o ro pvhdir1 /newroot/hostetc" in text
    assert "cp /pvhboot/files/0 /newroot/root/f" in text
    line = _run_virtio.command_line(plan, ["sh", "-c", "ls $PWD"])
    assert line.startswith("chroot /newroot /bin/sh -c") and "/work/dir sh -c 'ls $PWD'" in line
    assert [s.tag for s in plan.shares] == ["pvhroot", "pvhdir0", "pvhdir1"]
    assert [s.read_only for s in plan.shares] == [True, False, True]


def test_run_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = SimpleNamespace(root=None, no_root=False, rodir=[], rwdir=[f"{tmp_path}:/w"], cwd=None)
    config = SimpleNamespace(disks=())
    monkeypatch.setattr(_run_virtio, "_modules", lambda kernel, plan: [])
    plan = _run_virtio.plan_devices(args, config, Path("/k"))
    assert plan.root == "/" and plan.cwd == str(tmp_path) and plan.dirs == [(str(tmp_path), "/w", True)]
    args.no_root = True
    assert _run_virtio.plan_devices(args, config, Path("/k")).cwd == "/root"
    args.rwdir = ["rel:relative"]
    with pytest.raises(ConfigError):
        _run_virtio.plan_devices(args, config, Path("/k"))


def test_disk_and_share_specs():
    assert DiskSpec.parse("a.img,ro").read_only and not DiskSpec.parse("a.img").read_only
    with pytest.raises(ConfigError):
        DiskSpec.parse(",ro")
    s = ShareSpec.parse("/srv", 3)
    assert (s.host, s.tag) == ("/srv", "share3")
    assert ShareSpec.parse("/srv:code", 0).tag == "code"


def test_shared_guest_memory_is_a_memfd(tmp_path):
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(3 * 4096))
    with GuestMemory([(0, 1 << 20)], shared=True) as mem:
        r = mem.regions[0]
        assert r.fd >= 0
        mem.write(0x1000, b"seen through the fd")
        assert os.pread(r.fd, 19, 0x1000) == b"seen through the fd"
        with open(src, "rb") as f:
            assert mem.load_file(0x10000, f.fileno(), 0, 3 * 4096) == 0  # copied, not mapped privately
        assert os.pread(r.fd, 8, 0x10000) == src.read_bytes()[:8]
        assert struct.unpack("<Q", mem.read(0x10000, 8)) == struct.unpack("<Q", src.read_bytes()[:8])
