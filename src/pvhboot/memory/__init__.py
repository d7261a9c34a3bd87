"""Guest address space: RAM regions over host mappings and the layout constants."""
from .guest_memory import GuestMemory, MemoryRegion

__all__ = ["GuestMemory", "MemoryRegion"]
