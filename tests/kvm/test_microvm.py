"""kvm tier: the MicroVM Python API on the built-in probe (exit record, console capture, mutate hook)."""
from __future__ import annotations

import dataclasses

import pytest
from support import probe_elf

from pvhboot.errors import ConfigError
from pvhboot.vmm import MicroVM

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def probe():
    return probe_elf()


@pytest.mark.parametrize("cpus", [1, 2])
def test_probe_exit_record(probe, cpus):
    with MicroVM(probe, cpus=cpus, memory=128 << 20, console=None, timeout=60) as vm:
        r = vm.run()
        assert vm.protocol == "pvh"  # auto: the probe has the PHYS32_ENTRY note
    assert (r.reason, r.exit_code, r.crash_report) == ("debug_exit", 0, None)
    assert b"PROBE PASS" in r.console
    assert f"smp.cpus_seen={cpus}".encode() in r.console
    assert r.wall_time_s > 0


def test_mutate_hook_runs_before_first_instruction(probe):
    """EBX off by 8 at the PVH entry: the probe must notice and fail (exit status non-zero)."""
    seen = []

    def mutate(loaded, mem):
        seen.append(mem.size)
        gprs = dict(loaded.cpu.gprs)
        gprs["rbx"] += 8
        return dataclasses.replace(loaded, cpu=dataclasses.replace(loaded.cpu, gprs=gprs))

    with MicroVM(probe, memory=64 << 20, console=None, timeout=60, protocol="pvh", mutate=mutate) as vm:
        r = vm.run()
    assert seen == [64 << 20]
    assert r.reason == "debug_exit" and r.exit_code != 0
    assert b"PROBE FAIL" in r.console


def test_bad_options_are_config_errors(probe):
    with pytest.raises(ConfigError, match="protocol"):
        MicroVM(protocol="xen")
    with pytest.raises(ConfigError, match="vCPU count 0"):
        MicroVM(cpus=0)
