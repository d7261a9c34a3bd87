"""Boot structures written into guest memory (no KVM): the memory plan, PVH start_info, the Linux
zero page, ACPI tables, page tables/GDT and the boot vCPU's state as data."""
from ..image.model import Protocol
from .config import Blob, BootConfig, BootPlan, LoadedGuest, MemoryRegionSpec, Placement, resolve_protocol
from .loader import load_guest
from .plan import plan_guest

__all__ = ["Blob", "BootConfig", "BootPlan", "LoadedGuest", "MemoryRegionSpec", "Placement", "Protocol",
           "load_guest", "plan_guest", "resolve_protocol"]
