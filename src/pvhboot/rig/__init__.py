"""The nested rig: QEMU TCG with AMD SVM running Debian's cloud kernel as a KVM host, with pvhboot
inside (shared/docs/platform.md, "The nested rig").  Test infrastructure that lives in the package
so tests, bench/ and `python3 -m pvhboot.rig -- CMD` share one builder and one launcher."""
from .build import RigBuildError, build_rig, outer_kernel
from .launch import RigError, RigResult, run_in_rig

__all__ = ["RigBuildError", "RigError", "RigResult", "build_rig", "outer_kernel", "run_in_rig"]
