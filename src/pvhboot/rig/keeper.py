"""``python3 -m pvhboot.rig.keeper READY_FILE``: inside the nested rig, hold one idle KVM VM (with
the in-kernel irqchip and one vCPU that never runs) for the outer guest's whole life.

Why.  Creating the first VM and destroying the last one make the outer kernel rewrite its own code:
KVM enables and disables the scheduler's preempt-notifier static key (``preempt_notifier_inc/dec``,
a jump label in ``__schedule``), and a new vCPU's software-disabled local APIC counts in the
``apic_sw_disabled`` key, so every inner boot patched the running kernel twice with
``text_poke_bp`` (int3, then IPIs to every CPU to synchronise, then the new bytes).  Two stall dumps
of 2026-12-02 caught exactly that going wrong under QEMU's TCG: one outer vCPU stuck with interrupts
off on the preempt-notifier jump label at ``__schedule+0x2ab``, the other spinning in
``csd_lock_wait`` for the synchronising IPI it had sent (once both vCPUs were stuck there, each
waiting for the other).  Real CPUs make this protocol safe; TCG's handling of code another vCPU is
rewriting does not always.  With this VM held open the keys never return to zero, so the outer
kernel patches that code once, here, before any command runs, and never while inner guests run; and
it runs while the outer kernel has only one CPU online (maxcpus=1; /init brings the others up after),
since a rig boot also hung once between the module loads and RIG-READY, where that patch is.
(It also keeps SVM enabled on both CPUs between inner boots: KVM's hardware enable/disable, another
round of IPIs, happens only when the VM count crosses zero.)
"""
from __future__ import annotations

import sys
import time

from ..kvm import Kvm


def main(argv: list[str]) -> int:
    ready = argv[0] if argv else None
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.create_irqchip()
    vm.create_vcpu(0)  # its local APIC starts software-disabled, which holds apic_sw_disabled on
    if ready:
        with open(ready, "w") as f:
            f.write("held\n")
    while True:  # the outer guest powers off with it; nothing to clean up
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
