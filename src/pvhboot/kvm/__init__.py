"""The KVM layer: the only code in pvhboot that calls ``fcntl.ioctl``.

``Kvm`` (the /dev/kvm system fd) -> ``Vm`` (memory slots, irqchip, PIT, IRQ lines) -> ``Vcpu`` (registers,
CPUID, MSRs, the shared kvm_run page and the coalesced ring).  :mod:`.exits` decodes kvm_run (the run
loop's hot-path formats and ``decode_exit``'s records), with formats derived from the declarations in
:mod:`pvhboot.abi.kvm` (structures, ioctl numbers).  Every failed ioctl is raised as
:class:`pvhboot.errors.KvmError` naming the ioctl.
"""
from .exits import decode_exit
from .system import Kvm, is_kvm_pvm
from .vcpu import Vcpu
from .vm import IrqLine, Vm

__all__ = ["Kvm", "Vm", "Vcpu", "IrqLine", "decode_exit", "is_kvm_pvm"]
