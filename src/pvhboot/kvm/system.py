"""The /dev/kvm system file descriptor (Documentation/virt/kvm/api.rst, "System ioctls")."""
from __future__ import annotations

import errno
import fcntl
import os

from ..abi import kvm as abi
from ..errors import KvmError

_ioctl = fcntl.ioctl


def is_kvm_pvm() -> bool:
    """True when /dev/kvm is kvm_pvm, the software hypervisor that cannot run an unmodified Linux."""
    return os.path.isdir("/sys/module/kvm_pvm")


class Kvm:
    """An open /dev/kvm.  Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str = "/dev/kvm"):
        self.path = path
        self.fd = -1
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmError(f"{path} does not exist: load the kvm module (modprobe kvm_intel or kvm_amd) "
                           "or run on a machine with virtualization enabled") from None
        except PermissionError:
            raise KvmError(f"{path}: permission denied: add this user to the group owning it "
                           "(usually 'kvm') or run as root") from None
        except OSError as e:
            raise KvmError(f"{path}: cannot open: {e.strerror}") from None
        try:
            version = self._call("KVM_GET_API_VERSION", abi.KVM_GET_API_VERSION)
            if version != abi.KVM_API_VERSION:
                raise KvmError(f"{path}: KVM API version {version}, expected {abi.KVM_API_VERSION}")
            self._mmap_size: int | None = None
            self._supported_cpuid: list[abi.kvm_cpuid_entry2] | None = None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _call(self, name: str, req: int, arg: int = 0) -> int:
        try:
            return _ioctl(self.fd, req, arg)
        except OSError as e:
            raise KvmError(f"{self.path}: {name} failed: {e.strerror} (errno {e.errno})") from None

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific positive value."""
        return self._call(f"KVM_CHECK_EXTENSION ({cap!r})", abi.KVM_CHECK_EXTENSION, int(cap))

    @property
    def vcpu_mmap_size(self) -> int:
        if self._mmap_size is None:
            self._mmap_size = self._call("KVM_GET_VCPU_MMAP_SIZE", abi.KVM_GET_VCPU_MMAP_SIZE)
        return self._mmap_size

    def supported_cpuid(self) -> list[abi.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID, growing the buffer on E2BIG.  Copies of the entries are returned."""
        if self._supported_cpuid is None:
            n = 128
            while True:
                buf = abi.kvm_cpuid2_with(n)()
                buf.nent = n
                try:
                    # > 1024 bytes: must be a mutable buffer that the kernel writes in place (platform.md).
                    _ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, buf, True)
                except OSError as e:
                    if e.errno == errno.E2BIG and n < 4096:
                        n *= 2
                        continue
                    raise KvmError(f"KVM_GET_SUPPORTED_CPUID failed: {e.strerror}") from None
                break
            self._supported_cpuid = [abi.kvm_cpuid_entry2.from_buffer_copy(buf.entries[i])
                                     for i in range(buf.nent)]
        return [abi.kvm_cpuid_entry2.from_buffer_copy(e) for e in self._supported_cpuid]

    def create_vm(self):
        """KVM_CREATE_VM (machine type 0): a :class:`pvhboot.kvm.vm.Vm`."""
        from .vm import Vm

        return Vm(self, self._call("KVM_CREATE_VM", abi.KVM_CREATE_VM))
