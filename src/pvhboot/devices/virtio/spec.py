"""Numbers from the virtio 1.2 specification (OASIS, cs01), each once.

§2.1 device status, §2.7 split virtqueues, §4.2.2 virtio-mmio registers, §5 device types, §6
reserved feature bits.  Linux spells the same numbers in include/uapi/linux/virtio_{config,ring,
mmio,ids,blk}.h; the names below follow Linux.
"""
from __future__ import annotations

import struct

# §4.2.2 MMIO device register layout (version 2, "non-legacy").
VIRTIO_MMIO_MAGIC = 0x74726976  # "virt", little endian
VIRTIO_MMIO_VERSION_2 = 2
VIRTIO_MMIO_VENDOR_ID = int.from_bytes(b"PVHB", "little")  # any value; Linux ignores it

VIRTIO_MMIO_MAGIC_VALUE = 0x000
VIRTIO_MMIO_VERSION = 0x004
VIRTIO_MMIO_DEVICE_ID = 0x008
VIRTIO_MMIO_VENDOR_ID_REG = 0x00C
VIRTIO_MMIO_DEVICE_FEATURES = 0x010
VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014
VIRTIO_MMIO_DRIVER_FEATURES = 0x020
VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024
VIRTIO_MMIO_QUEUE_SEL = 0x030
VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034
VIRTIO_MMIO_QUEUE_NUM = 0x038
VIRTIO_MMIO_QUEUE_READY = 0x044
VIRTIO_MMIO_QUEUE_NOTIFY = 0x050
VIRTIO_MMIO_INTERRUPT_STATUS = 0x060
VIRTIO_MMIO_INTERRUPT_ACK = 0x064
VIRTIO_MMIO_STATUS = 0x070
VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080
VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084
VIRTIO_MMIO_QUEUE_AVAIL_LOW = 0x090  # "QueueDriver" in the spec
VIRTIO_MMIO_QUEUE_AVAIL_HIGH = 0x094
VIRTIO_MMIO_QUEUE_USED_LOW = 0x0A0  # "QueueDevice" in the spec
VIRTIO_MMIO_QUEUE_USED_HIGH = 0x0A4
VIRTIO_MMIO_SHM_SEL = 0x0AC
VIRTIO_MMIO_SHM_LEN_LOW = 0x0B0
VIRTIO_MMIO_SHM_LEN_HIGH = 0x0B4
VIRTIO_MMIO_SHM_BASE_LOW = 0x0B8
VIRTIO_MMIO_SHM_BASE_HIGH = 0x0BC
VIRTIO_MMIO_QUEUE_RESET = 0x0C0
VIRTIO_MMIO_CONFIG_GENERATION = 0x0FC
VIRTIO_MMIO_CONFIG = 0x100
VIRTIO_MMIO_WINDOW = 0x200  # registers + config space QEMU and Linux assume (512 bytes)

VIRTIO_MMIO_INT_VRING = 1 << 0  # InterruptStatus: used buffer notification
VIRTIO_MMIO_INT_CONFIG = 1 << 1  # InterruptStatus: configuration change notification

# §2.1 Device Status Field.
VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FEATURES_OK = 8
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80

# §6 Reserved feature bits.
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33
VIRTIO_F_RING_PACKED = 34

# §5 Device types.
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3
VIRTIO_ID_FS = 26

# §2.7.5 The Virtqueue Descriptor Table: struct virtq_desc {le64 addr; le32 len; le16 flags; le16 next}.
VIRTQ_DESC = struct.Struct("<QIHH")
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
# §2.7.6 avail ring: le16 flags; le16 idx; le16 ring[N]; le16 used_event (EVENT_IDX).
VRING_AVAIL_F_NO_INTERRUPT = 1
# §2.7.8 used ring: le16 flags; le16 idx; struct {le32 id; le32 len} ring[N]; le16 avail_event.
VIRTQ_USED_ELEM = struct.Struct("<II")
VRING_USED_F_NO_NOTIFY = 1
VIRTQ_MAX_SIZE = 32768  # §2.7: the largest Queue Size

# Ring part alignments (§2.7 table "Virtqueue Part Alignment").
DESC_ALIGN, AVAIL_ALIGN, USED_ALIGN = 16, 2, 4


def desc_table_size(num: int) -> int:
    return 16 * num


def avail_ring_size(num: int) -> int:
    return 6 + 2 * num  # flags, idx, ring[num], used_event


def used_ring_size(num: int) -> int:
    return 6 + 8 * num  # flags, idx, ring[num], avail_event


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """§2.7.7.2 / Linux vring_need_event(): notify when ``event_idx`` is in [old, new) (mod 2^16)."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


# §5.2 Block device.
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2
VIRTIO_BLK_ID_BYTES = 20
VIRTIO_BLK_SECTOR_SIZE = 512  # sector numbers are in 512-byte units whatever blk_size says
VIRTIO_BLK_OUTHDR = struct.Struct("<IIQ")  # struct virtio_blk_outhdr {le32 type; le32 ioprio; le64 sector}

# §5.3 Console device: receiveq(port0) = 0, transmitq(port0) = 1; no feature needed for one port.
VIRTIO_CONSOLE_RX_QUEUE = 0
VIRTIO_CONSOLE_TX_QUEUE = 1

# §5.11 File system device: config {u8 tag[36]; le32 num_request_queues}; queue 0 hiprio, 1.. requests.
VIRTIO_FS_TAG_BYTES = 36
