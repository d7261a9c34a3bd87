/*
 * pvhboot probe: layout of the entry-state record shared by head.S (which fills it at the
 * entry points, before changing anything) and probe.c (which checks and reports it).
 *
 * Offsets are plain numbers so the assembler can use them; probe.c checks them against the
 * C struct with _Static_assert.
 */
#ifndef PROBE_H
#define PROBE_H

#define PROBE_LOAD_ADDR     0x100000        /* linked and loaded at 1 MiB (paddr == vaddr) */
#define PROBE_MAGIC         0x50726f62      /* "borP": read back through DS/ES/SS/CS */

/* Selectors of the probe's own GDT (head.S: probe_gdt). */
#define SEL_CODE32          0x08
#define SEL_DATA            0x10
#define SEL_CODE64          0x18
#define SEL_TRCOPY          0x20            /* copy of the host's TR descriptor, for the ltr test */

#define PROTO_PVH           1
#define PROTO_LINUX64       2

/* Behavioural checks done in 32-bit protected mode at the PVH entry: bit set = check passed. */
#define CHK_CS_LOW          (1 << 0)        /* read %cs:0 without fault */
#define CHK_CS_HIGH         (1 << 1)        /* read %cs:0xfffffffc without fault (limit 4 GiB, readable) */
#define CHK_DS_BASE         (1 << 2)        /* PROBE_MAGIC read back at its link address */
#define CHK_DS_LOW          (1 << 3)
#define CHK_DS_HIGH         (1 << 4)
#define CHK_DS_WRITE        (1 << 5)
#define CHK_ES_BASE         (1 << 6)
#define CHK_ES_LOW          (1 << 7)
#define CHK_ES_HIGH         (1 << 8)
#define CHK_ES_WRITE        (1 << 9)
#define CHK_SS_BASE         (1 << 10)
#define CHK_SS_LOW          (1 << 11)
#define CHK_SS_HIGH         (1 << 12)
#define CHK_SS_WRITE        (1 << 13)
#define CHK_SS_32BIT        (1 << 14)       /* a push landed at ESP-4 (SS.B = 1) */

/* struct entry_state offsets */
#define ST_PROTOCOL     0
#define ST_EBX          4
#define ST_ESP          8
#define ST_EFLAGS       12
#define ST_CR0          16
#define ST_CR3          20
#define ST_CR4          24
#define ST_EFER         28      /* 8 bytes */
#define ST_CS           36
#define ST_DS           38
#define ST_ES           40
#define ST_SS           42
#define ST_FS           44
#define ST_GS           46
#define ST_TR           48
#define ST_GDTR         52      /* 10 bytes: limit16, base (32 or 64 bits) */
#define ST_IDTR         64      /* 10 bytes */
#define ST_CALL_EIP     76
#define ST_CHECKS       80
#define ST_LTR          84      /* 0 not tried, 1 ltr loaded the copy (not busy), 2 ltr faulted */
#define ST_LTR_VECTOR   88
#define ST_TRDESC_OK    92      /* 1: the TR descriptor could be read from the host's GDT */
#define ST_TRDESC       96      /* 8 bytes */
#define ST_FAULTS       104     /* number of faults taken during the checks */
#define ST_UNEXPECTED   108     /* vector+1 of a fault outside any check (0: none) */
#define ST_RSI          112     /* 64-bit entry */
#define ST_RSP          120
#define ST_RFLAGS       128
#define ST_CR0_64       136
#define ST_CR3_64       144
#define ST_CR4_64       152
#define ST_RIP_ACTUAL   160     /* lea label(%rip) at the 64-bit entry */
#define ST_SIZE         168

#ifndef __ASSEMBLER__
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long s64;

struct entry_state {
    u32 protocol, ebx, esp, eflags, cr0, cr3, cr4;
    u32 efer_lo, efer_hi;
    u16 cs, ds, es, ss, fs, gs, tr, pad0;
    u8 gdtr[10], pad1[2];
    u8 idtr[10], pad2[2];
    u32 call_eip, checks, ltr, ltr_vector, trdesc_ok;
    u32 trdesc_lo, trdesc_hi;
    u32 faults, unexpected;
    u64 rsi, rsp, rflags, cr0_64, cr3_64, cr4_64, rip_actual;
};
#endif
#endif
