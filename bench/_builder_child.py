"""Child process of bench 3 (builder_time.py); run as a script so its first line is timed.

    python3 bench/_builder_child.py split|cli|profile KERNEL T_SPAWN

split:   the steps of MicroVM.build() one by one with monotonic timestamps (perf_counter is
         CLOCK_MONOTONIC, comparable with the parent's T_SPAWN), up to the first KVM_RUN, then stop.
cli:     ``pvhboot boot KERNEL`` through pvhboot.cli.main, timestamp at the first KVM_RUN, then exit.
profile: split under cProfile (after the imports), top functions by cumulative time.
Prints one JSON line on stderr.
"""
import time

T_MAIN = time.perf_counter()

import os  # noqa: E402
import sys  # noqa: E402


def _report(obj) -> None:
    import json  # after the measured steps: the harness's own imports are not pvhboot's

    os.write(2, (json.dumps(obj) + "\n").encode())


def split(kernel: str, t_spawn: float, profile: bool = False) -> None:
    marks = {"spawn": t_spawn, "python_started": T_MAIN}
    import pvhboot.cli  # noqa: F401  (what `pvhboot boot` imports before it builds)
    import pvhboot.commands.boot  # noqa: F401
    from pvhboot.boot import load_guest, plan_guest
    from pvhboot.boot.config import BootConfig
    from pvhboot.image import load_kernel
    from pvhboot.memory import GuestMemory
    from pvhboot.vmm import Machine, MicroVM
    marks["imports"] = time.perf_counter()
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    image = load_kernel(kernel)
    marks["image_load"] = time.perf_counter()
    protocol = MicroVM.resolve_protocol(image, "auto")
    config = BootConfig(memory=512 << 20, cpus=1, cmdline="console=ttyS0", initrd=None, protocol=protocol)
    plan = plan_guest(image, config)
    mem = GuestMemory(list(plan.ram_ranges))
    marks["plan_and_memory"] = time.perf_counter()
    loaded = load_guest(plan, mem)
    marks["structure_writing"] = time.perf_counter()
    m = Machine(mem, loaded.cpu, cpus=1, console=None, timeout=30)
    marks["kvm_setup"] = time.perf_counter()
    vcpu = m.vm.vcpus[0]
    orig = vcpu.run

    def first_run():
        marks["first_kvm_run"] = time.perf_counter()
        m.ctl.stop("quit")  # immediate_exit: this KVM_RUN returns at once, the guest is not run
        return orig()

    vcpu.run = first_run
    m.run()
    if prof is not None:
        prof.disable()
        import io
        import pstats

        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(18)
        marks["profile"] = s.getvalue()
    m.close()
    mem.close()
    marks["protocol"] = protocol
    _report(marks)


def cli(kernel: str, t_spawn: float) -> None:
    from pvhboot.kvm import vcpu as vcpu_mod

    init = vcpu_mod.Vcpu.__init__

    def patched(self, *a, **k):
        init(self, *a, **k)
        orig = self.run

        def first_run():
            _report({"spawn": t_spawn, "python_started": T_MAIN, "first_kvm_run": time.perf_counter()})
            os._exit(0)
            return orig()

        self.run = first_run

    vcpu_mod.Vcpu.__init__ = patched
    from pvhboot.cli import main

    main(["boot", kernel, "--memory", "512M", "--cmdline", "console=ttyS0", "--timeout", "30"])


if __name__ == "__main__":
    mode, kernel, t_spawn = sys.argv[1], sys.argv[2], float(sys.argv[3])
    if mode == "cli":
        cli(kernel, t_spawn)
    else:
        split(kernel, t_spawn, profile=(mode == "profile"))
