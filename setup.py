"""Packaging hook: rebuild the probe guest when a toolchain is present (metadata is in pyproject.toml).

`build_py` runs the probe's Makefile into a temporary folder and ships that ELF; without gcc, ld and
make (or when the build fails, or PVHBOOT_PROBE_PREBUILT=1) the committed
src/pvhboot/probe/probe.elf is shipped as is.  The source tree is never written to.
"""
import os
import shutil
import subprocess
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

PROBE_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src", "pvhboot", "probe", "src")


class build_py_with_probe(build_py):
    def run(self):
        super().run()
        if os.environ.get("PVHBOOT_PROBE_PREBUILT") == "1":
            return
        if not all(shutil.which(t) for t in ("gcc", "ld", "make")):
            self.announce("pvhboot: no gcc/ld/make, shipping the committed probe.elf", level=2)
            return
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "src")
            shutil.copytree(PROBE_SRC, src, ignore=shutil.ignore_patterns("*.o", "probe.elf"))
            out = os.path.join(tmp, "out")
            os.mkdir(out)
            try:
                subprocess.run(["make", "-s", "-C", src, "OUT=" + out], check=True)
            except (OSError, subprocess.CalledProcessError) as e:
                self.announce(f"pvhboot: probe build failed ({e}), shipping the committed probe.elf", level=3)
                return
            dest = os.path.join(self.build_lib, "pvhboot", "probe", "probe.elf")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(os.path.join(out, "probe.elf"), dest)


setup(cmdclass={"build_py": build_py_with_probe})
