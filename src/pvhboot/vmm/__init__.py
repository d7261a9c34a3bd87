"""The VMM: builder (the recipe that assembles a VM), the vCPU run loop, crash reports.

``MicroVM`` is the Python API (`pvhboot boot` uses it); ``Machine`` the KVM half that tests drive with
hand-assembled guests.
"""
from .builder import Machine, MicroVM, VmExit

__all__ = ["MicroVM", "Machine", "VmExit"]
