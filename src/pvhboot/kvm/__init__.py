"""The KVM layer: the only code in pvhboot that calls ``fcntl.ioctl``.

``Kvm`` (the /dev/kvm system fd) -> ``Vm`` (memory slots, irqchip, PIT, IRQ lines) -> ``Vcpu`` (registers,
CPUID, MSRs and the shared kvm_run page).  ``exits.decode_exit`` turns kvm_run bytes into small records.
The ABI itself (structures, ioctl numbers) is declared in :mod:`pvhboot.abi.kvm`.
"""
from .exits import decode_exit
from .system import Kvm, is_kvm_pvm
from .vcpu import Vcpu
from .vm import IrqLine, Vm

__all__ = ["Kvm", "Vm", "Vcpu", "IrqLine", "decode_exit", "is_kvm_pvm"]
