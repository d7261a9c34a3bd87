"""pvhboot: boot x86 kernels through the PVH (Xen HVMlite) direct boot ABI on Linux KVM."""

__version__ = "0.1.0"
