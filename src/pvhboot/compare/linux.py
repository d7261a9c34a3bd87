"""A real Linux's fingerprint: what the kernel ended up with after its entry path, as the collector
(collector.sh, run as /init's command by an initramfs like `pvhboot run`'s) prints it.

Fields: ``bp.*`` (/sys/kernel/boot_params/data decoded field by field with pvhboot.abi.bootparam),
``memmap`` (/sys/firmware/memmap), ``iomem`` (top-level /proc/iomem), ``cmdline``, ``MemTotal``,
``cpu.online|possible|present``, ``cpuN.flags`` / ``cpuN.address_sizes``, ``clocksource.*``,
``acpi.table.<SIG>`` (length), ``kaslr.state`` / ``kaslr.offset`` (_text in /proc/kallsyms against
the link address), ``vulnerabilities.*``, ``tainted``, ``dmesg.alerts`` (WARN/BUG/Oops/Call Trace
lines verbatim) and one ``dmesg: <line>`` field per normalised kernel log line (its count).
"""
from __future__ import annotations

import ctypes
import re
from importlib import resources

from ..abi.bootparam import boot_params

COLLECTOR_NAME = "collector.sh"
GUEST_PATH = "root/collect.sh"
# Emergency-level messages only on the console (`pvhboot run`'s /init), no KASLR, a panic resets at
# once (a crash report rather than a guest spinning in panic()).  The last argument is a marker the
# cmdline-cut fault takes away.
BASE_CMDLINE = "console=ttyS0 quiet panic=-1"
END_ARGUMENT = "pvhboot.compare=1"

# CPU feature flags an entry path sets or clears (its own row, cpu.flag.<name>: the CPUs that have it):
# la57 is kept only when 5-level paging is on, which only the bzImage decompressor enables.
PATH_DEPENDENT_FLAGS = frozenset({"la57"})
_TIMESTAMP = re.compile(r"^\s*\[\s*\d+\.\d+\]\s?")
_ALERT = re.compile(r"WARNING:|\bBUG[: ]|Oops|Call Trace|general protection fault|kernel BUG|RIP: ")
# 0x-prefixed hex, bare hex words of 8+ digits (addresses, pointers), then any run of decimal digits.
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F]{8,}\b|\d+")


def collector_script() -> bytes:
    return resources.files(__package__).joinpath(COLLECTOR_NAME).read_bytes()


def linux_cmdline(user: str = "", kaslr: bool = False) -> str:
    parts = [BASE_CMDLINE, "" if kaslr else "nokaslr", user, END_ARGUMENT]
    return " ".join(p for p in parts if p)


def decode_boot_params(raw: bytes) -> dict[str, str]:
    """boot_params field by field (padding skipped; the e820 table up to e820_entries; byte arrays
    as hex, or 0 when all zero)."""
    if len(raw) != ctypes.sizeof(boot_params):
        return {"bp": f"unexpected size {len(raw)} (want {ctypes.sizeof(boot_params)})"}
    bp = boot_params.from_buffer_copy(raw)
    out: dict[str, str] = {}

    def walk(obj, prefix: str) -> None:
        for name, _ctype in obj._fields_:
            if name.startswith("_pad"):
                continue
            value = getattr(obj, name)
            key = f"{prefix}.{name}"
            if name == "e820_table":
                for i in range(min(bp.e820_entries, len(value))):
                    e = value[i]
                    out[f"{key}.{i}"] = f"{e.addr:#x} {e.size:#x} {e.type}"
            elif isinstance(value, ctypes.Structure):
                walk(value, key)
            elif isinstance(value, ctypes.Array):
                data = bytes(value)
                out[key] = data.hex() if any(data) else "0"
            else:
                out[key] = hex(value)
    walk(bp, "bp")
    return out


def normalise_dmesg_line(line: str) -> str:
    """Timestamps dropped; numbers, addresses and pointer values masked ('#')."""
    return _NUMBER.sub("#", _TIMESTAMP.sub("", line)).strip()


def kaslr_fields(text_hex: str, link_text: int | None, cmdline: str) -> dict[str, str]:
    try:
        text = int(text_hex, 16)
    except ValueError:
        text = 0
    if not text or link_text is None:
        return {"kaslr.state": "unknown (no _text in /proc/kallsyms, or no link address)"}
    offset = text - link_text
    if offset:
        state = "randomised"
    elif "nokaslr" in cmdline.split():
        state = "off (nokaslr)"
    else:
        state = "not randomised"
    return {"kaslr.state": state, "kaslr.offset": hex(offset)}


def linux_fingerprint(console: bytes | str, link_text: int | None = None) -> dict[str, str]:
    """Parse the collector's ``@FP`` lines out of a cell's console."""
    text = console.decode("utf-8", "replace") if isinstance(console, (bytes, bytearray)) else console
    fp: dict[str, str] = {}
    memmap: list[str] = []
    iomem: list[str] = []
    alerts: list[str] = []
    dmesg: dict[str, int] = {}
    with_flag: dict[str, list[str]] = {}
    for raw in text.split("\n"):
        line = raw.replace("\r", "")
        at = line.find("@FP")
        if at < 0:
            continue
        line = line[at:]
        tag, _, rest = line.partition(" ")
        if tag == "@FP":
            key, _, value = rest.partition("=")
            if key == "boot_params":
                try:
                    fp.update(decode_boot_params(bytes.fromhex(value)))
                except ValueError:
                    fp["bp"] = f"unreadable: {value[:40]}"
            elif key.endswith(".flags"):
                flags = set(value.split())
                cpu = key[3:-6]
                for flag in PATH_DEPENDENT_FLAGS & flags:
                    with_flag.setdefault(flag, []).append(cpu)
                fp[key] = " ".join(sorted(flags - PATH_DEPENDENT_FLAGS))
            else:
                fp[key] = value
        elif tag == "@FP-MEMMAP":
            parts = rest.split(None, 2)
            if len(parts) == 3:
                memmap.append(f"{int(parts[0], 16):#x}-{int(parts[1], 16):#x} {parts[2]}")
        elif tag == "@FP-IOMEM":
            iomem.append(rest)
        elif tag == "@FP-ACPI":
            name, _, length = rest.partition(" ")
            fp[f"acpi.table.{name}"] = length
        elif tag == "@FP-DMESG":
            stripped = _TIMESTAMP.sub("", rest).rstrip()
            if _ALERT.search(stripped):
                alerts.append(stripped)
            norm = normalise_dmesg_line(rest)
            if norm:
                dmesg[norm] = dmesg.get(norm, 0) + 1
        elif tag == "@FP-END":
            fp["collector"] = "complete"
    if not fp:
        return {}
    fp.setdefault("collector", "incomplete (no @FP-END: the guest stopped mid-way)")
    fp["memmap"] = "\n".join(memmap)
    fp["iomem"] = "\n".join(iomem)
    fp["dmesg.alerts"] = "\n".join(alerts)
    for flag in sorted(PATH_DEPENDENT_FLAGS):
        fp[f"cpu.flag.{flag}"] = " ".join(sorted(with_flag.get(flag, []), key=int)) or "none"
    fp.update(kaslr_fields(fp.pop("kallsyms._text", ""), link_text, fp.get("cmdline", "")))
    for norm, count in dmesg.items():
        fp[f"dmesg: {norm}"] = str(count)
    return fp
