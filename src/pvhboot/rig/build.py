"""Build the nested rig's initramfs (docs: shared/docs/platform.md, "The nested rig").

The rig is QEMU TCG (``-cpu max``: AMD SVM with nested paging) running Debian's cloud kernel; its
initramfs carries what a hardware-faithful KVM host needs to run pvhboot against a real Linux:

- busybox (Debian's busybox-static) as /bin/busybox, its applets installed by /init;
- Debian's /usr/bin/python3.11, the shared libraries ``ldd`` lists for it and for every stdlib
  extension module (libffi for ctypes among them), /usr/lib/python3.11 without tests, idlelib,
  tkinter, ensurepip, lib2to3, pydoc_data and the static-library config directory;
- pvhboot's runtime dependencies, copied from the host Python's site-packages (the compiled ones
  only when their extension modules carry Debian python3.11's ABI suffix), and pvhboot itself from
  this checkout;
- kvm.ko, kvm-amd.ko and irqbypass.ko from the cached cloud kernel .deb (xz-decompressed when
  shipped as .ko.xz);
- the guest kernel (the cloud bzImage) at /rig/guest/vmlinuz;
- /init: mounts, loads the kvm modules, checks SVM and /dev/kvm, runs /rig/cmd.sh (supplied per
  run by a second, small cpio appended to this one: the kernel unpacks concatenated archives),
  prints ``RIG-RESULT rc=N`` and powers off.

The archive is cached in .cache/rig/rig-<key>.cpio, the key hashing every input (file contents for
pvhboot and this builder, path/size/mtime for the large system inputs), so a second run reuses it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import lzma
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..initramfs import CpioWriter

# The repository checkout this module lives in (src/pvhboot/rig/build.py -> repo root).
REPO_ROOT = Path(__file__).resolve().parents[3]
CACHE_DIR = Path(os.environ.get("PVHBOOT_RIG_CACHE", REPO_ROOT / ".cache" / "rig"))
KERNEL_CACHE = Path(os.environ.get("PVHBOOT_KERNEL_CACHE", REPO_ROOT / ".cache" / "debian-kernel"))

GUEST_PYTHON = "/usr/bin/python3.11"
GUEST_STDLIB = "/usr/lib/python3.11"
BUSYBOX = "/bin/busybox"
# pvhboot's runtime dependencies (pyproject [project].dependencies) and what rich imports.
RUNTIME_PACKAGES = ("elftools", "lz4", "zstandard", "capstone", "rich", "markdown_it", "mdurl",
                    "pygments")
# Debian's compiled libseccomp bindings (python3-seccomp), built for the guest's python3.11: the vCPU
# threads' seccomp filter (vmm/seccomp.py) uses them (libseccomp is linked into the module).
GUEST_MODULES = ("/usr/lib/python3/dist-packages/seccomp.cpython-311-x86_64-linux-gnu.so",)
STDLIB_EXCLUDE = {"test", "idlelib", "tkinter", "ensurepip", "lib2to3", "pydoc_data",
                  "turtledemo", "config-3.11-x86_64-linux-gnu", "site-packages", "dist-packages"}
# Debian splits these test modules out of the runtime; they are dead weight here.
DYNLOAD_EXCLUDE = re.compile(r"^(_test|_ctypes_test|xxlimited|_xxtestfuzz)")
SITE_DIR = "usr/lib/python3/dist-packages"  # on Debian python3.11's default sys.path
# The inner guest's virtio drivers (`pvhboot run` insmods them from /lib/modules/<release>) and the
# vhost-user back end its virtio-fs shares need: QEMU's virtiofsd with the libraries ldd lists.
GUEST_KERNEL_MODULES = ("virtio_mmio", "virtio_blk", "virtiofs", "overlay", "virtio_console")
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
KVM_MODULES = (("irqbypass", "kernel/virt/lib/irqbypass"),
               ("kvm", "kernel/arch/x86/kvm/kvm"),
               ("kvm-amd", "kernel/arch/x86/kvm/kvm-amd"))

# Seconds between the outer guest's RIG-HEARTBEAT lines (its watchdog, in INIT_SCRIPT).
HEARTBEAT_S = 10

INIT_SCRIPT = r"""#!/bin/busybox sh
# The nested rig's /init (pvhboot.rig.build): bring up a KVM host inside QEMU TCG, run
# /rig/cmd.sh, report "RIG-RESULT rc=N" and power off.  Lines starting RIG- are parsed by the host.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo "RIG-STAGE init uptime=$(cut -d' ' -f1 /proc/uptime)"
fail() {
    echo "RIG-FAIL $*"
    dmesg | tail -n 15 | sed 's/^/RIG-DMESG /'
    poweroff -f
}
grep -qw svm /proc/cpuinfo || fail "no SVM: the CPU flags in /proc/cpuinfo lack svm (QEMU -cpu max under TCG should offer it)"
for m in irqbypass kvm kvm-amd; do
    out=$(insmod /rig/modules/$m.ko 2>&1) || fail "insmod $m refused: $out"
done
[ -c /dev/kvm ] || fail "kvm_amd loaded but /dev/kvm is missing"
npt=no
dmesg | grep -q "Nested Paging enabled" && npt=yes
# Hold one idle VM for the rig's life, so that inner boots never make the outer kernel rewrite its
# own code (pvhboot.rig.keeper says why); wait until it holds it, then go on.  The kernel boots with
# one CPU online (maxcpus=1, pvhboot.rig.launch.OUTER_CMDLINE): the module loads and the keeper's
# first VM patch the kernel's code with no other CPU running it; only then come the others.
PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 -m pvhboot.rig.keeper /run/kvm-keeper.ready </dev/null >/run/kvm-keeper.log 2>&1 &
n=0; while [ ! -e /run/kvm-keeper.ready ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
[ -e /run/kvm-keeper.ready ] || fail "the KVM keeper did not start: $(tail -3 /run/kvm-keeper.log)"
for f in /sys/devices/system/cpu/cpu[0-9]*/online; do
    [ "$(cat $f)" = 1 ] || echo 1 > $f || fail "cannot bring $f up"
done
# The address of the outer kernel's jiffies_64, for the host's stall dump to read the outer clock
# through QEMU's monitor (pvhboot.rig.launch._qmp_outer_state; Debian ships a stub System.map).
echo "RIG-SYMS jiffies_64=$(awk '$3 == "jiffies_64" {print $1; exit}' /proc/kallsyms)"
echo "RIG-READY kvm=/dev/kvm nested_paging=$npt cpus=$(cat /sys/devices/system/cpu/online) uptime=$(cut -d' ' -f1 /proc/uptime) memfree_kb=$(awk '/MemFree/ {print $2}' /proc/meminfo)"
[ -f /rig/cmd.sh ] || fail "no /rig/cmd.sh in the initramfs (the per-run archive is missing)"
export HOME=/tmp PATH=/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin PYTHONDONTWRITEBYTECODE=1
export PVHBOOT_KERNEL=/rig/guest/vmlinuz TERM=dumb
cd /rig/work 2>/dev/null || cd /tmp
# The watchdog: a heartbeat line every @HEARTBEAT_S@ seconds of the outer guest's own clock, with
# the state worth seeing when it stops.  The host (pvhboot.rig.launch) treats a console silent for
# much longer than that as an outer guest that has stopped (its clock or its interrupts), not as a
# slow command, and ends the run with a diagnosis instead of waiting for the whole timeout.
(n=0; while sleep @HEARTBEAT_S@; do n=$((n + @HEARTBEAT_S@))
    echo "RIG-HEARTBEAT t=$n uptime=$(cut -d' ' -f1 /proc/uptime) load=$(cut -d' ' -f1-4 /proc/loadavg) memfree_kb=$(awk '/MemFree/ {print $2}' /proc/meminfo)"
done) &
hb=$!
echo $hb > /run/rig-heartbeat.pid  # for the rig's own test of a silent outer guest
echo "RIG-BEGIN"
sh /rig/cmd.sh </dev/null 2>&1
rc=$?
kill $hb 2>/dev/null
echo "RIG-RESULT rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
""".replace("@HEARTBEAT_S@", str(HEARTBEAT_S))  # noqa: E501 (script lines carry whole messages the host parses or shows)


class RigBuildError(RuntimeError):
    """The rig cannot be built on this machine (a missing package, a kernel not cached, a
    dependency compiled for another Python ABI).  The message says which and how to fix it."""


@dataclass(frozen=True)
class RigInputs:
    kernel_dir: Path  # the unpacked cloud kernel .deb (boot/, lib/modules/)
    bzimage: Path
    modules: tuple[tuple[str, Path], ...]  # (name, .ko or .ko.xz)
    packages: tuple[tuple[str, Path], ...]  # (import name, host package directory)
    source: Path  # src/pvhboot of this checkout


def find_kernel_dir() -> Path:
    current = KERNEL_CACHE / "current"
    if not (current / "boot").is_dir():
        raise RigBuildError(f"Debian cloud kernel not cached in {current} "
                            "(run scripts/fetch-debian-kernel.sh)")
    return current


def find_bzimage(kernel_dir: Path) -> Path:
    found = sorted((kernel_dir / "boot").glob("vmlinuz-*"))
    if not found:
        raise RigBuildError(f"no boot/vmlinuz-* in {kernel_dir}")
    return found[-1]


def _find_module(kernel_dir: Path, rel: str) -> Path:
    for moddir in sorted((kernel_dir / "lib" / "modules").iterdir()):
        for suffix in (".ko", ".ko.xz"):
            p = moddir / (rel + suffix)
            if p.is_file():
                return p
    raise RigBuildError(f"kernel module {rel}.ko(.xz) not found under {kernel_dir}/lib/modules")


def _guest_ext_suffix() -> str:
    out = subprocess.run([GUEST_PYTHON, "-c", "import sysconfig;print(sysconfig.get_config_var('EXT_SUFFIX'))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _host_package_dir(name: str, ext_suffix: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RigBuildError(f"Python package {name!r} is not installed for {sys.executable} "
                            "(pip install -e '.[test]')")
    pkg = Path(list(spec.submodule_search_locations)[0])
    for so in pkg.rglob("*.so"):
        if ".cpython-" in so.name and not so.name.endswith(ext_suffix):
            raise RigBuildError(f"{so} is built for another Python ABI than {GUEST_PYTHON} "
                                f"({ext_suffix}); install {name} for Python 3.11")
    return pkg


def collect_inputs() -> RigInputs:
    for tool in (GUEST_PYTHON, BUSYBOX):
        if not os.access(tool, os.X_OK):
            raise RigBuildError(f"{tool} is missing (apt-get install python3.11-minimal busybox-static)")
    for module in GUEST_MODULES:
        if not os.path.isfile(module):
            raise RigBuildError(f"{module} is missing (apt-get install python3-seccomp)")
    kernel_dir = find_kernel_dir()
    ext = _guest_ext_suffix()
    return RigInputs(
        kernel_dir=kernel_dir,
        bzimage=find_bzimage(kernel_dir),
        modules=tuple((name, _find_module(kernel_dir, rel)) for name, rel in KVM_MODULES),
        packages=tuple((name, _host_package_dir(name, ext)) for name in RUNTIME_PACKAGES),
        source=REPO_ROOT / "src" / "pvhboot",
    )


def _skip_source(rel: str) -> bool:
    parts = rel.split("/")
    return "__pycache__" in parts or rel.endswith((".pyc", ".o")) or parts[0] == "probe" and "build" in parts


def _skip_package(rel: str) -> bool:
    return "tests" in rel.split("/") or rel.endswith(".pyi")


def _skip_stdlib(rel: str) -> bool:
    parts = rel.split("/")
    if parts[0] in STDLIB_EXCLUDE:
        return True
    if parts[0] == "lib-dynload" and len(parts) == 2 and DYNLOAD_EXCLUDE.match(parts[1]):
        return True
    return any(p in ("test", "tests", "idle_test") for p in parts[:-1])


def _walk_stat(h, root: Path, skip) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            rel = p.relative_to(root).as_posix()
            if skip(rel):
                continue
            st = p.lstat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def cache_key(inputs: RigInputs) -> str:
    """Content hash of the rig: exact bytes of pvhboot's source and this builder, size and mtime
    of the large system inputs (Debian packages change those on every upgrade)."""
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    from ..commands import run as run_command  # the guest initramfs generator is an input too
    h.update(Path(run_command.__file__).read_bytes())
    for dirpath, dirnames, filenames in os.walk(inputs.source):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            rel = p.relative_to(inputs.source).as_posix()
            if not _skip_source(rel):
                h.update(rel.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    extra = (Path(VIRTIOFSD),) if os.access(VIRTIOFSD, os.X_OK) else ()
    for p in (Path(GUEST_PYTHON), Path(BUSYBOX), inputs.bzimage, *(m for _, m in inputs.modules), *extra):
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    _walk_stat(h, Path(GUEST_STDLIB), _skip_stdlib)
    for name, pkg in inputs.packages:
        h.update(name.encode())
        _walk_stat(h, pkg, _skip_package)
    return h.hexdigest()[:16]


def _ldd(paths: list[str]) -> set[str]:
    """Every shared object (and the dynamic loader) that ``ldd`` resolves for ``paths``."""
    libs: set[str] = set()
    for path in paths:
        out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
            if m:
                libs.add(m.group(1))
            elif "not found" in line:
                raise RigBuildError(f"ldd {path}: {line.strip()}")
    return libs


class _HostFiles:
    """Adds host files at their own paths, symlinks kept as symlinks (and their targets added),
    directories resolved to their canonical path so /lib/x and /usr/lib/x are one member."""

    def __init__(self, cpio: CpioWriter) -> None:
        self.cpio = cpio

    def add(self, path: str) -> None:
        real_dir = os.path.realpath(os.path.dirname(path))
        full = os.path.join(real_dir, os.path.basename(path))
        if full in self.cpio:
            return
        if os.path.islink(full):
            target = os.readlink(full)
            self.cpio.add_symlink(full, target)
            self.add(target if target.startswith("/") else os.path.join(real_dir, target))
        else:
            self.cpio.add_file_from(full, full, keep_mtime=True)


def _add_modules(cpio: CpioWriter, modules) -> None:
    for name, path in modules:
        if path.suffix == ".xz":
            cpio.add_file(f"rig/modules/{name}.ko", lzma.decompress(path.read_bytes()))
        else:
            cpio.add_file_from(f"rig/modules/{name}.ko", path, mode=0o644)


def _add_guest_module_tree(cpio: CpioWriter, kernel_dir: Path) -> None:
    """A trimmed lib/modules/<release>/ (GUEST_KERNEL_MODULES, their dependencies, a modules.dep for them)."""
    from ..image.modules import ModuleTree

    for tree in sorted((kernel_dir / "lib" / "modules").iterdir()):
        modules = ModuleTree(tree)
        dest = f"usr/lib/modules/{tree.name}"
        for path in modules.load_order(list(GUEST_KERNEL_MODULES)):
            cpio.add_file_from(f"{dest}/{path.relative_to(tree).as_posix()}", path, mode=0o644)
        cpio.add_file(f"{dest}/modules.dep", modules.dep_lines(list(GUEST_KERNEL_MODULES)).encode())


def _precompile(directory: Path) -> None:
    """Byte-compile pvhboot's sources with Debian's python3.11 (same magic as the host's 3.11)
    so the TCG-emulated guest does not compile them on every start; mtimes are kept in the cpio,
    so the timestamp-checked .pyc stay valid."""
    subprocess.run([GUEST_PYTHON, "-m", "compileall", "-q", str(directory)],
                   check=False, capture_output=True)


def write_rig_initramfs(out, inputs: RigInputs) -> None:
    """Stream the rig archive to the binary file object ``out``."""
    with CpioWriter(out) as cpio:
        # Debian 12 is merged-/usr: the top-level directories are symlinks into usr/.
        for d in ("bin", "sbin", "lib", "lib64"):
            cpio.add_symlink(d, f"usr/{d}")
        for d in ("proc", "sys", "dev", "tmp", "run", "root", "etc", "rig/work", "usr/local/bin"):
            cpio.add_dir(d)
        cpio.add_device("dev/console", "c", 5, 1)
        cpio.add_file("etc/passwd", b"root:x:0:0:root:/tmp:/bin/sh\n")
        cpio.add_file("etc/group", b"root:x:0:\n")
        cpio.add_file_from("usr/bin/busybox", BUSYBOX, mode=0o755)
        cpio.add_file("init", INIT_SCRIPT.encode(), mode=0o755)

        host = _HostFiles(cpio)
        stdlib = Path(GUEST_STDLIB)
        dynload = sorted(str(p) for p in (stdlib / "lib-dynload").glob("*.so")
                         if not DYNLOAD_EXCLUDE.match(p.name))
        so_files = [GUEST_PYTHON, *dynload, *GUEST_MODULES]
        if os.access(VIRTIOFSD, os.X_OK):
            so_files.append(VIRTIOFSD)
            host.add(VIRTIOFSD)
        for _, pkg in inputs.packages:
            so_files += [str(p) for p in pkg.rglob("*.so")]
        for lib in sorted(_ldd(so_files)):
            host.add(lib)
        host.add(GUEST_PYTHON)
        cpio.add_symlink("usr/bin/python3", "python3.11")
        cpio.add_symlink("usr/bin/python", "python3.11")
        cpio.add_tree(GUEST_STDLIB, stdlib, exclude=_skip_stdlib, keep_mtime=True)

        for name, pkg in inputs.packages:
            cpio.add_tree(f"{SITE_DIR}/{name}", pkg, exclude=_skip_package, keep_mtime=True)
        for module in GUEST_MODULES:
            cpio.add_file_from(f"{SITE_DIR}/{Path(module).name}", module, mode=0o644)
        _precompile(inputs.source)
        cpio.add_tree(f"{SITE_DIR}/pvhboot", inputs.source,
                      exclude=lambda rel: rel.endswith(".o") or "/build/" in f"/{rel}",
                      keep_mtime=True)
        cpio.add_file("usr/bin/pvhboot",
                      b"#!/usr/bin/python3.11\nimport sys\nfrom pvhboot.cli import main\n"
                      b"sys.exit(main())\n", mode=0o755)
        python_wrapper = b"#!/bin/sh\nexec /usr/bin/python3.11 \"$@\"\n"
        cpio.add_file("usr/local/bin/python3-rig", python_wrapper, mode=0o755)

        _add_modules(cpio, inputs.modules)
        _add_guest_module_tree(cpio, inputs.kernel_dir)
        cpio.add_file_from("rig/guest/vmlinuz", inputs.bzimage, mode=0o644)
        # A ready-made guest initramfs for the inner Linux: prints a marker, powers off.
        import io

        from ..commands.run import write_run_initramfs
        buf = io.BytesIO()
        write_run_initramfs(buf, ["echo", "GUEST-HELLO"], busybox=BUSYBOX)
        cpio.add_file("rig/guest/hello.cpio", buf.getvalue())


def build_rig(*, rebuild: bool = False, log=None) -> Path:
    """The cached rig archive, built when missing (or when ``rebuild``)."""
    inputs = collect_inputs()
    key = cache_key(inputs)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    target = CACHE_DIR / f"rig-{key}.cpio"
    if target.exists() and not rebuild:
        return target
    if log:
        log(f"building rig initramfs {target.name} ...")
    fd, tmp = tempfile.mkstemp(prefix=".rig-", dir=CACHE_DIR)
    try:
        with os.fdopen(fd, "wb") as f:
            write_rig_initramfs(f, inputs)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in CACHE_DIR.glob("rig-*.cpio"):  # keep the cache from growing without bound
        if old != target:
            old.unlink(missing_ok=True)
    return target


def outer_kernel() -> Path:
    """The cloud kernel as an ELF vmlinux for QEMU microvm's PVH loader (QEMU takes no bzImage
    there): the file tests/conftest.py writes, else decompressed here by pvhboot.image (any codec)."""
    from ..errors import ImageError
    from ..image import load_kernel

    bz = find_bzimage(find_kernel_dir())
    out = KERNEL_CACHE / (bz.name + ".vmlinux")
    if out.exists():
        return out
    try:
        elf = load_kernel(str(bz)).elf
    except ImageError as e:
        raise RigBuildError(f"cannot extract the outer kernel: {e}") from e
    if elf is None:
        raise RigBuildError(f"{bz}: no ELF payload to boot the rig with")
    tmp = out.with_suffix(".tmp-rig")
    with open(tmp, "wb") as f:
        f.write(elf.data)
    os.replace(tmp, out)
    return out


def write_command_archive(out, script: str, files: dict[str, bytes] | None = None) -> None:
    """The small per-run archive appended to the rig: /rig/cmd.sh and any extra files."""
    with CpioWriter(out) as cpio:
        cpio.add_file("rig/cmd.sh", script.encode(), mode=0o755)
        for name, data in sorted((files or {}).items()):
            cpio.add_file(name, data, mode=0o755 if data.startswith(b"#!") else 0o644)


__all__ = ["RigBuildError", "build_rig", "outer_kernel", "write_command_archive"]
