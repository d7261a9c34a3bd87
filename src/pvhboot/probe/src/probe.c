/*
 * pvhboot probe: the guest side of the PVH entry ABI, checked from the inside.
 *
 * References (each check names its rule; rule names are stable, pvhboot.probe.report knows them):
 *   - Xen docs/misc/pvh.pandoc: the PVH entry state (CR0, CR4, EFLAGS, segments, TR, EBX).
 *   - xen/include/public/arch-x86/hvm/start_info.h: hvm_start_info v0/v1, modlist, memmap.
 *   - Linux arch/x86/platform/pvh/enlighten.c init_pvh_bootparams(): start_info -> boot_params.
 *   - Linux Documentation/arch/x86/boot.rst: the 64-bit boot protocol and boot_params fields.
 *   - ACPI 6.x sections 5.2.5 (RSDP), 5.2.7/5.2.8 (RSDT/XSDT), 5.2.9 (FADT), 5.2.12 (MADT).
 *   - Intel SDM Vol. 3A 8.4.4 / 10.6: INIT-SIPI-SIPI through the local APIC ICR.
 *
 * Output: one `key=value` line per fact on COM1, `rule.<name>=pass|fail|unverifiable <seen>` per
 * rule, then `PROBE PASS` or `PROBE FAIL: <rule>; <rule>`; exit through the debug-exit port 0xf4
 * (0 pass, 1 fail), else ACPI S5, else i8042 reset, else halt.
 *
 * Runs at CPL0, i.e. through KVM's instruction emulator on kvm_pvm: loops are kept short.
 */
#include "probe.h"

#define NULL ((void *)0)

_Static_assert(__builtin_offsetof(struct entry_state, ebx) == ST_EBX, "ST_EBX");
_Static_assert(__builtin_offsetof(struct entry_state, efer_lo) == ST_EFER, "ST_EFER");
_Static_assert(__builtin_offsetof(struct entry_state, cs) == ST_CS, "ST_CS");
_Static_assert(__builtin_offsetof(struct entry_state, tr) == ST_TR, "ST_TR");
_Static_assert(__builtin_offsetof(struct entry_state, gdtr) == ST_GDTR, "ST_GDTR");
_Static_assert(__builtin_offsetof(struct entry_state, idtr) == ST_IDTR, "ST_IDTR");
_Static_assert(__builtin_offsetof(struct entry_state, call_eip) == ST_CALL_EIP, "ST_CALL_EIP");
_Static_assert(__builtin_offsetof(struct entry_state, ltr) == ST_LTR, "ST_LTR");
_Static_assert(__builtin_offsetof(struct entry_state, trdesc_ok) == ST_TRDESC_OK, "ST_TRDESC_OK");
_Static_assert(__builtin_offsetof(struct entry_state, trdesc_lo) == ST_TRDESC, "ST_TRDESC");
_Static_assert(__builtin_offsetof(struct entry_state, faults) == ST_FAULTS, "ST_FAULTS");
_Static_assert(__builtin_offsetof(struct entry_state, rsi) == ST_RSI, "ST_RSI");
_Static_assert(__builtin_offsetof(struct entry_state, rip_actual) == ST_RIP_ACTUAL, "ST_RIP");
_Static_assert(sizeof(struct entry_state) == ST_SIZE, "ST_SIZE");

extern char _image_start[], _image_end[], bss_canary[], pvh_call_site[], startup_64[];
extern char ap_tramp_start[], ap_tramp_end[], fault64_stubs[];
extern u64 pml4[];
extern volatile u64 fixup64, last_vector64;
extern volatile u32 ap_count, lapic_base;
extern u64 probe_load_delta;            /* head.S: where the PVH entry ran - its link address */
extern const u32 probe_reloc[3];        /* head.S: the PHYS32_RELOC note (align, min, max) */
extern volatile u16 ap_slots[256];
extern void halt_forever(void) __attribute__((noreturn));

void *memset(void *d, int c, unsigned long n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
void *memcpy(void *d, const void *s, unsigned long n)
{ u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }

/* ---------------------------------------------------------------- hardware access */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u64 rdmsr(u32 msr)
{ u32 lo, hi; __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr)); return ((u64)hi << 32) | lo; }
static inline void wrmsr(u32 msr, u64 v)
{ __asm__ volatile("wrmsr" :: "c"(msr), "a"((u32)v), "d"((u32)(v >> 32))); }
static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((u64)hi << 32) | lo; }
static inline void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{ __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0)); }
static inline u8 rd8(u64 a) { return *(volatile u8 *)a; }
static inline u16 rd16(u64 a) { return *(volatile u16 *)a; }
static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline u64 rd64(u64 a) { return *(volatile u64 *)a; }
static inline void wr8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void wr32(u64 a, u32 v) { *(volatile u32 *)a = v; }

#define FOUR_GIB 0x100000000ul
#define IMAGE_START ((u64)_image_start + probe_load_delta)    /* physical: where the image was loaded */
#define IMAGE_END ((u64)_image_end + probe_load_delta)
/* Readable by the probe: it maps (identity) the low 4 GiB only. */
static int readable(u64 a, u64 n) { return a < FOUR_GIB && n <= FOUR_GIB - a; }

/* ---------------------------------------------------------------- COM1 output */
#define COM1 0x3f8
static int uart_ready, uart_burst = 1;
static char line[320];
static int line_len;

static void uart_init(void)
{
    outb(COM1 + 1, 0x00);           /* IER: no interrupts, we poll */
    outb(COM1 + 3, 0x80);           /* LCR.DLAB */
    outb(COM1 + 0, 0x01);           /* divisor 1: 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);           /* 8N1 */
    outb(COM1 + 2, 0x07);           /* FCR: enable and clear the FIFOs */
    /* IIR bits 7:6 == 11: a 16550A with working FIFOs; once THRE is seen the 16-byte transmit
     * FIFO is empty and takes 16 bytes (what Linux's 8250 driver does with tx_loadsz). */
    uart_burst = (inb(COM1 + 2) & 0xc0) == 0xc0 ? 16 : 1;
    uart_ready = 1;
}

static void uart_write(const char *s, int n)
{
    while (n > 0) {
        int spins = 100000;
        while (!(inb(COM1 + 5) & 0x20) && --spins)     /* LSR.THRE */
            ;
        /* One FIFO load with one string OUT: a single VM exit for up to 16 bytes under KVM. */
        unsigned long k = n < uart_burst ? (unsigned long)n : (unsigned long)uart_burst;
        __asm__ volatile("rep outsb" : "+S"(s), "+c"(k) : "d"((u16)COM1) : "memory");
        n -= uart_burst;
    }
}

static void line_flush(void)
{
    line[line_len++] = '\n';
    uart_write(line, line_len);
    line_len = 0;
}

/* Every output character costs emulated instructions (~1 us each at CPL0 on kvm_pvm): the common
 * case is one compare and one store. */
static inline __attribute__((always_inline)) void put_c(char c)
{
    if (c == '\n')
        line_flush();
    else if (line_len < (int)sizeof(line) - 2)
        line[line_len++] = c;
}

static void put_s(const char *s) { while (*s) put_c(*s++); }

static void put_u(u64 v, int base, int min_digits)
{
    char buf[24];
    int n = 0;
    if (base == 16) {
        do {
            buf[n++] = "0123456789abcdef"[v & 15];
            v >>= 4;
        } while (v || n < min_digits);
    } else {
        do {
            buf[n++] = (char)('0' + v % 10);
            v /= 10;
        } while (v || n < min_digits);
    }
    while (n)
        put_c(buf[--n]);
}

static void put_x(u64 v) { put_c('0'); put_c('x'); put_u(v, 16, 1); }

/* Bytes as printable ASCII, other bytes (and '\\') as \xHH. */
static void put_esc(u64 addr, u32 n)
{
    for (u32 i = 0; i < n; i++) {
        u8 c = rd8(addr + i);
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            put_c((char)c);
        } else {
            put_s("\\x");
            put_u(c, 16, 2);
        }
    }
}

/* A tiny printf: %s %c %d %u %x (u32, printed 0x..) and %lu %lx %ld (64-bit). */
static void vemit(const char *fmt, __builtin_va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put_c(*fmt);
            continue;
        }
        int is_long = 0;
        if (*++fmt == 'l') {
            is_long = 1;
            fmt++;
        }
        switch (*fmt) {
        case 's': put_s(__builtin_va_arg(ap, const char *)); break;
        case 'c': put_c((char)__builtin_va_arg(ap, int)); break;
        case 'u': put_u(is_long ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32), 10, 1); break;
        case 'x': put_x(is_long ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32)); break;
        case 'd': {
            s64 v = is_long ? __builtin_va_arg(ap, s64) : __builtin_va_arg(ap, int);
            if (v < 0) { put_c('-'); v = -v; }
            put_u((u64)v, 10, 1);
            break;
        }
        default: put_c('%'); put_c(*fmt); break;
        }
    }
}

static void emit(const char *fmt, ...)
{
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    vemit(fmt, ap);
    __builtin_va_end(ap);
}

/* ---------------------------------------------------------------- rules */
enum { PASS, FAIL, UNVERIFIABLE };
static const char *const status_name[] = { "pass", "fail", "unverifiable" };
static const char *failed[48];
static int nfailed, nrules;

static void rule(const char *name, int status, const char *fmt, ...)
{
    __builtin_va_list ap;
    emit("rule.%s=%s ", name, status_name[status]);
    __builtin_va_start(ap, fmt);
    vemit(fmt, ap);
    __builtin_va_end(ap);
    put_c('\n');
    nrules++;
    if (status == FAIL && nfailed < (int)(sizeof(failed) / sizeof(failed[0])))
        failed[nfailed++] = name;
}

static int ok(int cond) { return cond ? PASS : FAIL; }

/* ---------------------------------------------------------------- memory map */
struct region { u64 addr, size; u32 type; };
#define MAX_MAP 128                 /* E820_MAX_ENTRIES_ZEROPAGE */
static struct region map[MAX_MAP];
static int nmap, have_map;
static const char *map_name = "memmap";

struct range { u64 addr, size; const char *name; };
static struct range busy[40];       /* blobs the host placed; the AP trampoline must avoid them */
static int nbusy;

static void add_busy(const char *name, u64 addr, u64 size)
{
    if (size && nbusy < (int)(sizeof(busy) / sizeof(busy[0])))
        busy[nbusy++] = (struct range){ addr, size, name };
}

static int overlaps(u64 a, u64 an, u64 b, u64 bn) { return an && bn && a < b + bn && b < a + an; }

/* [addr, addr+size) covered by RAM entries (type 1) of the map, adjacent entries allowed. */
static int in_ram(u64 addr, u64 size)
{
    u64 cur = addr, end = addr + size;
    if (size == 0)
        size = 1, end = addr + 1;
    if (end < addr)
        return 0;
    while (cur < end) {
        int found = 0;
        for (int i = 0; i < nmap; i++) {
            if (map[i].type == 1 && map[i].addr <= cur && cur < map[i].addr + map[i].size) {
                cur = map[i].addr + map[i].size;
                found = 1;
                break;
            }
        }
        if (!found)
            return 0;
    }
    return 1;
}

static int overlaps_ram(u64 addr, u64 size)
{
    for (int i = 0; i < nmap; i++)
        if (map[i].type == 1 && overlaps(addr, size, map[i].addr, map[i].size))
            return 1;
    return 0;
}

/* The map rules shared by start_info's memmap and boot_params' e820 table.  Each defect has its own
 * rule: an empty entry (size 0, as qboot appends one) is neither an ordering nor a type error, so
 * the order and type checks look at the non-empty entries only and `*_no_empty` names the empty
 * ones (Linux's e820 sanitizer drops zero-size entries, then sorts). */
static void check_map(const char *prefix)
{
    int sorted = 1, disjoint = 1, types = 1, bad_i = -1, bad_prev = -1, bad_j = -1, bad_t = -1;
    int empty = 0, first_empty = -1, prev = -1;
    for (int i = 0; i < nmap; i++) {
        if (map[i].size == 0) {
            if (!empty++)
                first_empty = i;
            continue;
        }
        if (prev >= 0 && map[i].addr < map[prev].addr && sorted) {
            sorted = 0;
            bad_i = i;
            bad_prev = prev;
        }
        if ((map[i].type < 1 || map[i].type > 7) && types) {
            types = 0;
            bad_t = i;
        }
        prev = i;
    }
    for (int i = 0; i < nmap && disjoint; i++)
        for (int j = i + 1; j < nmap; j++)
            if (overlaps(map[i].addr, map[i].size, map[j].addr, map[j].size)) {
                disjoint = 0;
                bad_j = i * 1000 + j;
                break;
            }
    static const char sorted_ok[] = "ascending addresses", sorted_bad[] = "entry %d (%lx) below entry %d (%lx)";
    static const char types_ok[] = "types 1..7", types_bad[] = "entry %d: type %u";
    static const char empty_ok[] = "no zero-size entry", empty_bad[] = "%d empty, first: entry %d (addr %lx size 0 type %u)";
    u64 sa = bad_i >= 0 ? map[bad_i].addr : 0, pa = bad_prev >= 0 ? map[bad_prev].addr : 0;
    u32 tt = bad_t >= 0 ? map[bad_t].type : 0, et = first_empty >= 0 ? map[first_empty].type : 0;
    u64 ea = first_empty >= 0 ? map[first_empty].addr : 0;
    /* rule names must stay constant strings (they are kept in failed[]) */
    if (prefix[0] == 's') {
        rule("start_info.memmap_sorted", ok(sorted), sorted ? sorted_ok : sorted_bad, bad_i, sa, bad_prev, pa);
        rule("start_info.memmap_nonoverlap", ok(disjoint), disjoint ? "no two entries overlap" : "entries %d and %d overlap", bad_j / 1000, bad_j % 1000);
        rule("start_info.memmap_types", ok(types), types ? types_ok : types_bad, bad_t, tt);
        rule("start_info.memmap_no_empty", ok(!empty), empty ? empty_bad : empty_ok, empty, first_empty, ea, et);
        rule("start_info.memmap_covers_probe", ok(in_ram(IMAGE_START, IMAGE_END - IMAGE_START)), "probe image %lx-%lx", IMAGE_START, IMAGE_END);
    } else {
        rule("boot_params.e820_sorted", ok(sorted), sorted ? sorted_ok : sorted_bad, bad_i, sa, bad_prev, pa);
        rule("boot_params.e820_nonoverlap", ok(disjoint), disjoint ? "no two entries overlap" : "entries %d and %d overlap", bad_j / 1000, bad_j % 1000);
        rule("boot_params.e820_types", ok(types), types ? types_ok : types_bad, bad_t, tt);
        rule("boot_params.e820_no_empty", ok(!empty), empty ? empty_bad : empty_ok, empty, first_empty, ea, et);
        rule("boot_params.e820_covers_probe", ok(in_ram(IMAGE_START, IMAGE_END - IMAGE_START)), "probe image %lx-%lx", IMAGE_START, IMAGE_END);
    }
}

/* ---------------------------------------------------------------- strings */
#define CMDLINE_BOUND 2048          /* x86 COMMAND_LINE_SIZE: what Linux copies at most */

/* Index of the NUL within bound bytes, or -1. */
static s64 find_nul(u64 addr, u64 bound)
{
    if (!readable(addr, 1))
        return -1;
    if (!readable(addr, bound))
        bound = FOUR_GIB - addr;
    for (u64 i = 0; i < bound; i++)
        if (rd8(addr + i) == 0)
            return (s64)i;
    return -1;
}

static u32 fnv1a(u64 addr, u64 n)
{
    u32 h = 0x811c9dc5;
    for (u64 i = 0; i < n; i++)
        h = (h ^ rd8(addr + i)) * 0x01000193;
    return h;
}

/* key=<escaped first 160 bytes>, key_len=, key_fnv1a= (FNV-1a 32 of all bytes, for the host). */
static void report_string(const char *key, u64 addr, s64 len)
{
    u32 n = len > 160 ? 160 : (u32)len;
    emit("%s=", key);
    put_esc(addr, n);
    if (len > 160)
        put_s("...");
    put_c('\n');
    emit("%s_len=%ld\n%s_fnv1a=%x\n", key, len, key, fnv1a(addr, (u64)len));
}

static void report_head(const char *key, u64 addr, u64 size)
{
    u32 n = size < 16 ? (u32)size : 16;
    if (!readable(addr, n))
        return;
    emit("%s=", key);
    for (u32 i = 0; i < n; i++)
        put_u(rd8(addr + i), 16, 2);
    put_c('\n');
}

/* ---------------------------------------------------------------- segment descriptors */
struct desc { u32 base, limit; u8 type, s, dpl, p, l, db, g; };

static struct desc decode_desc(u32 lo, u32 hi)
{
    struct desc d;
    d.base = (lo >> 16) | ((hi & 0xff) << 16) | (hi & 0xff000000);
    d.limit = (lo & 0xffff) | (hi & 0xf0000);
    d.type = (hi >> 8) & 0xf;
    d.s = (hi >> 12) & 1;
    d.dpl = (hi >> 13) & 3;
    d.p = (hi >> 15) & 1;
    d.l = (hi >> 21) & 1;
    d.db = (hi >> 22) & 1;
    d.g = (hi >> 23) & 1;
    if (d.g)
        d.limit = (d.limit << 12) | 0xfff;
    return d;
}

static void report_desc(const char *key, struct desc d)
{
    emit("%s=base=%x limit=%x type=%x s=%u dpl=%u p=%u l=%u db=%u g=%u\n", key, d.base, d.limit,
         (u32)d.type, (u32)d.s, (u32)d.dpl, (u32)d.p, (u32)d.l, (u32)d.db, (u32)d.g);
}

/* ---------------------------------------------------------------- PVH entry state */
#define CR0_PE 0x1u
#define CR0_ET 0x10u
#define CR0_PG 0x80000000u
#define CR4_PAE 0x20u
#define EFER_LME (1u << 8)
#define EFER_LMA (1u << 10)
#define FL_TF (1u << 8)
#define FL_IF (1u << 9)
#define FL_VM (1u << 17)

static const char *yn(int v) { return v ? "yes" : "no"; }

static void check_segment(const char *name, struct entry_state *st, u32 base_bit, u32 low_bit,
                          u32 high_bit, u32 write_bit, u32 b32_bit)
{
    u32 c = st->checks;
    int good = (c & base_bit) && (c & low_bit) && (c & high_bit) && (c & write_bit) && (!b32_bit || (c & b32_bit));
    if (b32_bit)
        rule(name, ok(good), "base0=%s read@0=%s read@0xfffffffc=%s write=%s push32=%s",
             yn(c & base_bit), yn(c & low_bit), yn(c & high_bit), yn(c & write_bit), yn(c & b32_bit));
    else
        rule(name, ok(good), "base0=%s read@0=%s read@0xfffffffc=%s write=%s",
             yn(c & base_bit), yn(c & low_bit), yn(c & high_bit), yn(c & write_bit));
}

static void report_pvh_entry(struct entry_state *st)
{
    u64 efer = ((u64)st->efer_hi << 32) | st->efer_lo;
    u16 gdt_limit = *(u16 *)&st->gdtr[0], idt_limit = *(u16 *)&st->idtr[0];
    u32 gdt_base = *(u32 *)&st->gdtr[2], idt_base = *(u32 *)&st->idtr[2];

    emit("entry.ebx=%x\nentry.esp=%x\nentry.eflags=%x\nentry.cr0=%x\nentry.cr3=%x\nentry.cr4=%x\n",
         st->ebx, st->esp, st->eflags, st->cr0, st->cr3, st->cr4);
    emit("entry.efer=%lx\nentry.cs=%x\nentry.ds=%x\nentry.es=%x\nentry.ss=%x\nentry.fs=%x\nentry.gs=%x\nentry.tr=%x\n",
         efer, (u32)st->cs, (u32)st->ds, (u32)st->es, (u32)st->ss, (u32)st->fs, (u32)st->gs, (u32)st->tr);
    emit("entry.gdtr=%x/%x\nentry.idtr=%x/%x\nentry.checks=%x\nentry.faults=%u\n",
         gdt_base, (u32)gdt_limit, idt_base, (u32)idt_limit, st->checks, st->faults);

    /* pvh.pandoc: "CR0: bit 0 (PE) must be set. All the other writeable bits are cleared."
     * ET (bit 4) is read-only 1 on every CPU since the 486. */
    rule("entry.cr0", ok((st->cr0 & CR0_PE) && (st->cr0 & ~(CR0_PE | CR0_ET)) == 0), "cr0=%x", st->cr0);
    rule("entry.cr4", ok(st->cr4 == 0), "cr4=%x", st->cr4);
    /* Not in pvh.pandoc; paging is off, and a set LME would turn the kernel's own enabling of
     * paging into a switch to long mode. */
    rule("entry.efer", ok(!(efer & (EFER_LME | EFER_LMA))), "efer=%lx", efer);
    rule("entry.eflags", ok(!(st->eflags & (FL_IF | FL_TF | FL_VM))), "eflags=%x", st->eflags);
    rule("entry.cs_base", ok(st->call_eip == (u32)((u64)pvh_call_site + probe_load_delta)),
         "call pushed %x, link address %x + load delta %lx", st->call_eip, (u32)(u64)pvh_call_site,
         probe_load_delta);
    rule("entry.cs_flat", ok((st->checks & CHK_CS_LOW) && (st->checks & CHK_CS_HIGH)),
         "read@0=%s read@0xfffffffc=%s", yn(st->checks & CHK_CS_LOW), yn(st->checks & CHK_CS_HIGH));
    check_segment("entry.ds_flat", st, CHK_DS_BASE, CHK_DS_LOW, CHK_DS_HIGH, CHK_DS_WRITE, 0);
    check_segment("entry.es_flat", st, CHK_ES_BASE, CHK_ES_LOW, CHK_ES_HIGH, CHK_ES_WRITE, 0);
    check_segment("entry.ss_flat", st, CHK_SS_BASE, CHK_SS_LOW, CHK_SS_HIGH, CHK_SS_WRITE, CHK_SS_32BIT);
    if (st->unexpected)
        rule("probe.exception32", FAIL, "vector %u outside the checks", st->unexpected - 1);

    /* TR: the hidden descriptor cache cannot be read by the guest; the descriptor in the GDT the
     * host loaded is what lar/lsl would report, and ltr of a copy tells busy from available. */
    if (st->trdesc_ok) {
        struct desc d = decode_desc(st->trdesc_lo, st->trdesc_hi);
        const char *ltr = st->ltr == 1 ? "loaded (available)" : st->ltr == 2 ? "faulted (busy)" : "not tried";
        report_desc("entry.tr_desc", d);
        rule("entry.tr_busy", ok(!d.s && d.type == 0xb && st->ltr == 2), "type=%x ltr %s", (u32)d.type, ltr);
        rule("entry.tr_tss32", ok(!d.s && d.p && (d.type == 0x9 || d.type == 0xb)), "type=%x s=%u p=%u", (u32)d.type, (u32)d.s, (u32)d.p);
        rule("entry.tr_base", ok(d.base == 0), "base=%x", d.base);
        rule("entry.tr_limit", ok(d.limit == 0x67), "limit=%x", d.limit);
    } else {
        /* head.S reads the descriptor only for a non-null GDT selector within the GDT limit. A null
         * selector is what Xen itself loads (xen/include/public/hvm/hvm_vcpu.h: vcpu_hvm_x86_32
         * sets tr_base/tr_limit/tr_ar, no selector) and what qboot leaves: the hidden TSS state may
         * still be right, but nothing the guest can read shows it. */
        const char *why = !(st->tr & 0xfff8) ? "tr=%x is the null selector: no TSS descriptor to read, the hidden TR state is invisible to the guest"
                        : (st->tr & 4) ? "tr=%x selects the LDT, not the host GDT (base %x limit %x)"
                        : (u32)(st->tr | 7) > gdt_limit ? "tr=%x lies beyond the host GDT limit (base %x limit %x)"
                        : "tr=%x: reading its descriptor from the host GDT (base %x limit %x) faulted";
        rule("entry.tr_busy", UNVERIFIABLE, why, (u32)st->tr, gdt_base, (u32)gdt_limit);
        rule("entry.tr_tss32", UNVERIFIABLE, why, (u32)st->tr, gdt_base, (u32)gdt_limit);
        rule("entry.tr_base", UNVERIFIABLE, why, (u32)st->tr, gdt_base, (u32)gdt_limit);
        rule("entry.tr_limit", UNVERIFIABLE, why, (u32)st->tr, gdt_base, (u32)gdt_limit);
    }
}

/* ---------------------------------------------------------------- start_info */
#define XEN_HVM_START_MAGIC_VALUE 0x336ec578

struct boot_info {                  /* what the rest of the probe needs from either protocol */
    u64 cmdline, ramdisk, ramdisk_size, rsdp;
    const char *rsdp_source;
};
static struct boot_info info;

/* Linux's init_pvh_bootparams() (arch/x86/platform/pvh/enlighten.c), off Xen. */
static u8 pvh_bootparams[4096] __attribute__((aligned(4096)));
#define BP_E820_ENTRIES 0x1e8
#define BP_VERSION 0x206
#define BP_TYPE_OF_LOADER 0x210
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21c
#define BP_CMD_LINE_PTR 0x228
#define BP_HARDWARE_SUBARCH 0x23c
#define BP_E820_TABLE 0x2d0

static void bp_put(u8 *bp, u32 off, u64 v, int n) { for (int i = 0; i < n; i++) bp[off + i] = (u8)(v >> (8 * i)); }
static u64 bp_get(const u8 *bp, u32 off, int n) { u64 v = 0; for (int i = n - 1; i >= 0; i--) v = (v << 8) | bp[off + i]; return v; }

static void report_e820(const char *prefix, const u8 *bp)
{
    u32 n = bp[BP_E820_ENTRIES];
    emit("%s.e820_entries=%u\n", prefix, n);
    for (u32 i = 0; i < n && i < 128; i++) {
        u32 e = BP_E820_TABLE + 20 * i;
        emit("%s.e820.%u=%lx %lx %u\n", prefix, i, bp_get(bp, e, 8), bp_get(bp, e + 8, 8), (u32)bp_get(bp, e + 16, 4));
    }
}

static void convert_start_info(u64 si)
{
    u8 *bp = pvh_bootparams;
    u32 version = rd32(si + 4), entries = version > 0 ? rd32(si + 48) : 0;
    for (u32 i = 0; i < sizeof(pvh_bootparams) / 8; i++)   /* 8 bytes a store: few emulated instructions */
        ((u64 *)bp)[i] = 0;
    if (!(version > 0 && entries)) {
        emit("pvh_bootparams.status=linux would BUG(): no memmap (version %u, %u entries)\n", version, entries);
        return;
    }
    u64 mm = rd64(si + 40);
    if (entries > 128) {            /* Linux copies them all into its 128-entry table */
        emit("pvh_bootparams.status=memmap_entries %u overflows e820_table[128] in Linux; 128 copied\n", entries);
        entries = 128;
    }
    bp[BP_E820_ENTRIES] = (u8)entries;
    for (u32 i = 0; i < entries; i++) {
        u32 e = BP_E820_TABLE + 20 * i;
        bp_put(bp, e, rd64(mm + 24 * i), 8);
        bp_put(bp, e + 8, rd64(mm + 24 * i + 8), 8);
        bp_put(bp, e + 16, rd32(mm + 24 * i + 16), 4);
    }
    /* ISA range appended as reserved when it fits (E820_MAX_ENTRIES_ZEROPAGE - 1). */
    if (entries < 127) {
        u32 e = BP_E820_TABLE + 20 * entries;
        bp_put(bp, e, 0xa0000, 8);
        bp_put(bp, e + 8, 0x100000 - 0xa0000, 8);
        bp_put(bp, e + 16, 2, 4);
        bp[BP_E820_ENTRIES] = (u8)(entries + 1);
    }
    bp_put(bp, BP_CMD_LINE_PTR, rd64(si + 24), 4);
    if (rd32(si + 12)) {
        u64 ml = rd64(si + 16);
        bp_put(bp, BP_RAMDISK_IMAGE, rd64(ml), 4);
        bp_put(bp, BP_RAMDISK_SIZE, rd64(ml + 8), 4);
    }
    bp_put(bp, BP_VERSION, 0x020c, 2);
    bp_put(bp, BP_TYPE_OF_LOADER, 0xb << 4, 1);   /* off Xen: (0xb << 4) | 0 */
    /* hardware_subarch stays 0 (X86_SUBARCH_PC) */
    report_e820("pvh_bootparams", bp);
    emit("pvh_bootparams.version=%x\npvh_bootparams.type_of_loader=%x\npvh_bootparams.hardware_subarch=%u\n",
         (u32)bp_get(bp, BP_VERSION, 2), (u32)bp[BP_TYPE_OF_LOADER], (u32)bp_get(bp, BP_HARDWARE_SUBARCH, 4));
    emit("pvh_bootparams.cmd_line_ptr=%x\npvh_bootparams.ramdisk_image=%x\npvh_bootparams.ramdisk_size=%x\n",
         (u32)bp_get(bp, BP_CMD_LINE_PTR, 4), (u32)bp_get(bp, BP_RAMDISK_IMAGE, 4), (u32)bp_get(bp, BP_RAMDISK_SIZE, 4));
}

/* start_info.h lays out hvm_start_info, hvm_modlist_entry (32 bytes) and hvm_memmap_table_entry
 * (24 bytes) as uint64_t fields at multiples of 8 bytes, and its C structs have 8-byte alignment: the
 * struct and each array must start on an 8-byte boundary (then every entry does). */
static void check_aligned(const char *name, const char *what, u64 addr)
{
    u32 off = (u32)(addr & 7);
    rule(name, ok(!off), off ? "%s %lx is %u bytes past an 8-byte boundary" : "%s %lx is 8-byte aligned", what, addr, off);
}

/* The boot blobs must not lie on the stack the loader ran on.  pvh.pandoc leaves ESP undefined, so
 * a kernel never uses it (Linux's pvh_start_xen loads its own stack; recent ones first borrow
 * start_info for one call), but the value a loader leaves in ESP shows where its own stack was: above
 * ESP lie the frames of the code that jumped to the kernel (qboot builds the modlist as a local there,
 * 0x1c above ESP), below ESP the loader's returned-from frames and what any push at the entry
 * overwrites.  Data there was never set aside for the kernel.  The window is 4 KiB either side,
 * [ESP - 4 KiB, ESP + 4 KiB): a loader that points ESP at a stack page of its own keeps its boot data
 * outside it (pvhboot: ESP 0x8ff0 in the page at 0x8000, start_info/modlist/memmap in 0x6000-0x7000,
 * cmdline at 0x20000).  ESP 0 hands over no stack at all: nothing to overlap. */
#define ENTRY_STACK_WINDOW 0x1000

static void check_entry_stack(u32 esp)
{
    if (!esp) {
        rule("start_info.not_on_entry_stack", PASS, "esp=0: no stack handed over (pvh.pandoc leaves ESP undefined)");
        return;
    }
    u64 lo = esp > ENTRY_STACK_WINDOW ? esp - ENTRY_STACK_WINDOW : 0, hi = (u64)esp + ENTRY_STACK_WINDOW;
    for (int i = 0; i < nbusy; i++) {
        if (!overlaps(busy[i].addr, busy[i].size, lo, hi - lo))
            continue;
        s64 d = (s64)busy[i].addr - (s64)esp;
        rule("start_info.not_on_entry_stack", FAIL, "%s %lx+%lx at esp%c%lx, on the loader's stack (entry esp %x, window %lx-%lx)",
             busy[i].name, busy[i].addr, busy[i].size, d < 0 ? '-' : '+', (u64)(d < 0 ? -d : d), esp, lo, hi);
        return;
    }
    rule("start_info.not_on_entry_stack", PASS, "%u blobs clear of %lx-%lx (entry esp %x +- 4 KiB)", nbusy, lo, hi, esp);
}

static void check_start_info(struct entry_state *st)
{
    u64 si = st->ebx;
    u32 magic = rd32(si);
    if (magic != XEN_HVM_START_MAGIC_VALUE) {
        s64 off = 0;
        for (s64 d = -64; d <= 64 && !off; d += 4)
            if (d && (s64)si + d >= 0 && rd32((u64)((s64)si + d)) == XEN_HVM_START_MAGIC_VALUE)
                off = d;
        if (off)
            rule("entry.ebx", FAIL, "ebx=%x magic=%x; an hvm_start_info magic lies at ebx%c%ld", st->ebx, magic, off < 0 ? '-' : '+', off < 0 ? -off : off);
        else
            rule("entry.ebx", FAIL, "ebx=%x magic=%x, expected %x", st->ebx, magic, XEN_HVM_START_MAGIC_VALUE);
        return;
    }
    rule("entry.ebx", PASS, "ebx=%x magic=%x", st->ebx, magic);
    check_aligned("start_info.aligned", "start_info", si);

    u32 version = rd32(si + 4), flags = rd32(si + 8), nr_modules = rd32(si + 12);
    u64 modlist = rd64(si + 16), cmdline = rd64(si + 24), rsdp = rd64(si + 32);
    u64 memmap = version >= 1 ? rd64(si + 40) : 0;
    u32 memmap_entries = version >= 1 ? rd32(si + 48) : 0;
    u32 si_size = version >= 1 ? 56 : 40;
    emit("start_info.addr=%lx\nstart_info.magic=%x\nstart_info.version=%u\nstart_info.flags=%x\n", si, magic, version, flags);
    emit("start_info.nr_modules=%u\nstart_info.modlist_paddr=%lx\nstart_info.cmdline_paddr=%lx\nstart_info.rsdp_paddr=%lx\n",
         nr_modules, modlist, cmdline, rsdp);
    if (version >= 1)
        emit("start_info.memmap_paddr=%lx\nstart_info.memmap_entries=%u\nstart_info.reserved=%x\n", memmap, memmap_entries, rd32(si + 52));
    rule("start_info.version", ok(version == 0 || version == 1), "version=%u", version);
    add_busy("start_info", si, si_size);

    /* memmap (version 1) */
    if (version >= 1 && memmap_entries && readable(memmap, 24ul * memmap_entries)) {
        u32 n = memmap_entries > MAX_MAP ? MAX_MAP : memmap_entries;
        for (u32 i = 0; i < n; i++) {
            map[i].addr = rd64(memmap + 24 * i);
            map[i].size = rd64(memmap + 24 * i + 8);
            map[i].type = rd32(memmap + 24 * i + 16);
            emit("start_info.memmap.%u=%lx %lx %u\n", i, map[i].addr, map[i].size, map[i].type);
        }
        nmap = (int)n;
        have_map = 1;
        rule("start_info.memmap_present", PASS, "%u entries", memmap_entries);
        rule("start_info.memmap_entries", ok(memmap_entries <= MAX_MAP), "%u entries", memmap_entries);
        check_map("start_info");
        rule("start_info.memmap_in_ram", ok(in_ram(memmap, 24ul * memmap_entries)), "memmap %lx+%x", memmap, 24 * memmap_entries);
        check_aligned("start_info.memmap_aligned", "memmap", memmap);
        add_busy("memmap", memmap, 24ul * memmap_entries);
    } else {
        rule("start_info.memmap_present", FAIL, "version %u, memmap_entries %u, memmap_paddr %lx: off Xen, Linux's init_pvh_bootparams() BUG()s without a memmap",
             version, memmap_entries, memmap);
    }

    static const char nomap[] = "no memory map to check against";
    rule("start_info.in_ram", have_map ? ok(in_ram(si, si_size)) : UNVERIFIABLE, have_map ? "start_info %lx+%u" : nomap, si, si_size);

    /* cmdline */
    s64 clen = -1;
    if (cmdline) {
        clen = find_nul(cmdline, CMDLINE_BOUND);
        rule("start_info.cmdline_nul", ok(clen >= 0), clen >= 0 ? "NUL at +%ld" : "no NUL within %d bytes of %lx", clen >= 0 ? clen : (s64)CMDLINE_BOUND, cmdline);
        if (clen >= 0) {
            report_string("start_info.cmdline", cmdline, clen);
            add_busy("cmdline", cmdline, (u64)clen + 1);
        } else {
            add_busy("cmdline", cmdline, CMDLINE_BOUND);
        }
        u64 span = clen >= 0 ? (u64)clen + 1 : CMDLINE_BOUND;
        rule("start_info.cmdline_in_ram", have_map ? ok(in_ram(cmdline, span)) : UNVERIFIABLE, have_map ? "cmdline %lx+%lx" : nomap, cmdline, span);
    } else {
        rule("start_info.cmdline_nul", PASS, "no command line (cmdline_paddr 0)");
    }

    /* modules */
    if (nr_modules) {
        int list_ok = modlist && readable(modlist, 32ul * nr_modules);
        rule("start_info.modlist_in_ram", have_map && list_ok ? ok(in_ram(modlist, 32ul * nr_modules)) : list_ok ? UNVERIFIABLE : FAIL,
             "modlist %lx, %u entries", modlist, nr_modules);
        if (modlist)
            check_aligned("start_info.modlist_aligned", "modlist", modlist);
        add_busy("modlist", modlist, 32ul * nr_modules);
        int mods_ok = 1, over_probe = 0;
        for (u32 i = 0; list_ok && i < nr_modules; i++) {
            u64 e = modlist + 32ul * i, pa = rd64(e), size = rd64(e + 8), mcl = rd64(e + 16);
            if (i < 8) {
                emit("start_info.mod.%u=%lx %lx %lx\n", i, pa, size, mcl);
                char key[24] = "start_info.mod.0.head";
                key[15] = (char)('0' + i);
                report_head(key, pa, size);
            }
            if (have_map && !in_ram(pa, size))
                mods_ok = 0;
            if (overlaps(pa, size, IMAGE_START, IMAGE_END - IMAGE_START))
                over_probe = 1;
            add_busy("module", pa, size);
            if (mcl) {
                s64 ml = find_nul(mcl, CMDLINE_BOUND);
                if (ml < 0 || (have_map && !in_ram(mcl, (u64)ml + 1)))
                    mods_ok = 0;
                if (ml >= 0 && i < 8) {
                    char key[32] = "start_info.mod.0.cmdline";
                    key[15] = (char)('0' + i);
                    report_string(key, mcl, ml);
                }
                add_busy("module cmdline", mcl, ml >= 0 ? (u64)ml + 1 : 1);
            }
            if (i == 0) {
                info.ramdisk = pa;
                info.ramdisk_size = size;
            }
        }
        rule("start_info.modules_in_ram", have_map ? ok(mods_ok) : UNVERIFIABLE, have_map ? "%u modules (data and cmdlines)" : nomap, nr_modules);
        rule("start_info.modules_not_over_probe", ok(!over_probe), "probe image %lx-%lx", IMAGE_START, IMAGE_END);
    }

    check_entry_stack(st->esp);

    /* every blob: not over the probe image, and no two overlapping */
    int over = -1, a = -1, b = -1;
    for (int i = 0; i < nbusy; i++) {
        if (overlaps(busy[i].addr, busy[i].size, IMAGE_START, IMAGE_END - IMAGE_START) && over < 0)
            over = i;
        for (int j = i + 1; j < nbusy && a < 0; j++)
            if (overlaps(busy[i].addr, busy[i].size, busy[j].addr, busy[j].size))
                a = i, b = j;
    }
    rule("start_info.not_over_probe", ok(over < 0), over < 0 ? "%u blobs clear of %lx-%lx" : "%s at %lx overlaps the probe", over < 0 ? (u64)nbusy : (u64)busy[over].name, over < 0 ? IMAGE_START : busy[over].addr, IMAGE_END);
    if (a < 0)
        rule("start_info.blobs_disjoint", PASS, "%u blobs", nbusy);
    else
        rule("start_info.blobs_disjoint", FAIL, "%s %lx+%lx overlaps %s %lx+%lx", busy[a].name, busy[a].addr, busy[a].size, busy[b].name, busy[b].addr, busy[b].size);

    info.cmdline = cmdline;
    info.rsdp = rsdp;
    info.rsdp_source = "start_info.rsdp_paddr";
    convert_start_info(si);
}

/* ---------------------------------------------------------------- Linux 64-bit entry */
#define PTE_P 1ul
#define PTE_PS 0x80ul
#define PHYS_MASK 0x000ffffffffff000ul

/* Guest-physical address of va under the page tables at cr3 (4-level), or -1. */
static u64 walk(u64 cr3, u64 va)
{
    u64 e = rd64((cr3 & PHYS_MASK) + ((va >> 39) & 511) * 8);
    if (!(e & PTE_P)) return ~0ul;
    e = rd64((e & PHYS_MASK) + ((va >> 30) & 511) * 8);
    if (!(e & PTE_P)) return ~0ul;
    if (e & PTE_PS) return (e & PHYS_MASK & ~0x3ffffffful) | (va & 0x3ffffffful);
    e = rd64((e & PHYS_MASK) + ((va >> 21) & 511) * 8);
    if (!(e & PTE_P)) return ~0ul;
    if (e & PTE_PS) return (e & PHYS_MASK & ~0x1ffffful) | (va & 0x1ffffful);
    e = rd64((e & PHYS_MASK) + ((va >> 12) & 511) * 8);
    if (!(e & PTE_P)) return ~0ul;
    return (e & PHYS_MASK) | (va & 0xfff);
}

static void check_gdt_entry(const char *name, u64 gdt, u32 limit, u32 sel, int code)
{
    if (sel + 7 > limit) {
        rule(name, FAIL, "GDT limit %x does not hold selector %x", limit, sel);
        return;
    }
    struct desc d = decode_desc(rd32(gdt + sel), rd32(gdt + sel + 4));
    char key[24] = "entry64.gdt.0x00";
    key[14] = "0123456789abcdef"[sel >> 4];
    key[15] = "0123456789abcdef"[sel & 15];
    report_desc(key, d);
    int flat = d.base == 0 && d.limit == 0xffffffff;
    if (code)   /* boot.rst: __BOOT_CS: 4G flat, execute/read; 64-bit code (L=1, D=0) */
        rule(name, ok(d.p && d.s && (d.type & 0xa) == 0xa && d.l && !d.db && flat), "type=%x l=%u db=%u base=%x limit=%x", (u32)d.type, (u32)d.l, (u32)d.db, d.base, d.limit);
    else        /* __BOOT_DS: 4G flat, read/write */
        rule(name, ok(d.p && d.s && (d.type & 0xa) == 0x2 && flat), "type=%x base=%x limit=%x", (u32)d.type, d.base, d.limit);
}

static void build_page_tables(void)
{
    /* The PML4, PDPT and page directories are static (head.S): only switch to them. */
    __asm__ volatile("mov %0, %%cr3" :: "r"((u64)pml4) : "memory");
}

static void check_linux64(struct entry_state *st)
{
    u64 efer = ((u64)st->efer_hi << 32) | st->efer_lo;
    u16 gdt_limit = *(u16 *)&st->gdtr[0];
    u64 gdt_base = *(u64 *)&st->gdtr[2];
    emit("entry64.rsi=%lx\nentry64.rsp=%lx\nentry64.rflags=%lx\nentry64.cr0=%lx\nentry64.cr3=%lx\nentry64.cr4=%lx\nentry64.efer=%lx\n",
         st->rsi, st->rsp, st->rflags, st->cr0_64, st->cr3_64, st->cr4_64, efer);
    emit("entry64.cs=%x\nentry64.ds=%x\nentry64.es=%x\nentry64.ss=%x\nentry64.tr=%x\nentry64.gdtr=%lx/%x\nentry64.rip=%lx\n",
         (u32)st->cs, (u32)st->ds, (u32)st->es, (u32)st->ss, (u32)st->tr, gdt_base, (u32)gdt_limit, st->rip_actual);

    rule("entry64.long_mode", ok((st->cr0_64 & CR0_PG) && (st->cr0_64 & CR0_PE) && (st->cr4_64 & CR4_PAE) && (efer & EFER_LME) && (efer & EFER_LMA)),
         "cr0=%lx cr4=%lx efer=%lx", st->cr0_64, st->cr4_64, efer);
    rule("entry64.rflags", ok(!(st->rflags & (FL_IF | FL_TF))), "rflags=%lx", st->rflags);
    /* boot.rst 64-bit protocol: CS must be __BOOT_CS (0x10), DS/ES/SS __BOOT_DS (0x18). */
    rule("entry64.selectors", ok(st->cs == 0x10 && st->ds == 0x18 && st->es == 0x18 && st->ss == 0x18),
         "cs=%x ds=%x es=%x ss=%x", (u32)st->cs, (u32)st->ds, (u32)st->es, (u32)st->ss);
    if (readable(gdt_base, (u64)gdt_limit + 1)) {
        check_gdt_entry("entry64.gdt_boot_cs", gdt_base, gdt_limit, 0x10, 1);
        check_gdt_entry("entry64.gdt_boot_ds", gdt_base, gdt_limit, 0x18, 0);
    } else {
        rule("entry64.gdt_boot_cs", UNVERIFIABLE, "GDT at %lx not below 4 GiB", gdt_base);
        rule("entry64.gdt_boot_ds", UNVERIFIABLE, "GDT at %lx not below 4 GiB", gdt_base);
    }

    /* Identity mapping: sample the low 4 GiB through the host's page tables. */
    u64 bp = st->rsi;
    u64 samples[24] = { 0, 0x1000, IMAGE_START, IMAGE_END - 1, bp, (u64)pml4, 0xfee00000, 0xfec00000, 0xfffff000 };
    int ns = 9;
    for (u64 a = 0x10000000; a < FOUR_GIB; a += 0x10000000)
        samples[ns++] = a;
    int ident = 1;
    u64 bad = 0, got = 0;
    if (st->cr4_64 & (1ul << 12)) {     /* LA57: 5-level paging, not walked here */
        rule("entry64.identity_map", UNVERIFIABLE, "CR4.LA57 set");
    } else {
        for (int i = 0; i < ns && ident; i++) {
            u64 pa = walk(st->cr3_64, samples[i]);
            if (pa != samples[i])
                ident = 0, bad = samples[i], got = pa;
        }
        rule("entry64.identity_map", ok(ident && st->rip_actual == (u64)startup_64),
             ident ? "%u samples of [0, 4 GiB) map 1:1, running at %lx" : "va %lx maps to %lx", ident ? (u64)ns : bad, ident ? st->rip_actual : got);
    }
    build_page_tables();           /* the probe's own tables from here on (the trampoline page may be anywhere) */

    /* boot_params */
    if (!readable(bp, 4096)) {
        rule("boot_params.boot_flag", FAIL, "rsi=%lx not below 4 GiB", bp);
        return;
    }
    u16 boot_flag = rd16(bp + 0x1fe);
    u32 header = rd32(bp + 0x202);
    u16 version = rd16(bp + BP_VERSION);
    rule("boot_params.boot_flag", ok(boot_flag == 0xaa55), "boot_flag=%x at rsi+0x1fe", (u32)boot_flag);
    rule("boot_params.header", ok(header == 0x53726448), "header=%x", header);
    emit("boot_params.version=%x\nboot_params.type_of_loader=%x\nboot_params.loadflags=%x\nboot_params.hardware_subarch=%u\n",
         (u32)version, (u32)rd8(bp + BP_TYPE_OF_LOADER), (u32)rd8(bp + 0x211), rd32(bp + BP_HARDWARE_SUBARCH));
    emit("boot_params.acpi_rsdp_addr=%lx\nboot_params.cmdline_size=%x\nboot_params.xloadflags=%x\n",
         rd64(bp + 0x70), rd32(bp + 0x238), (u32)rd16(bp + 0x236));
    rule("boot_params.version", ok(version >= 0x020c), "version=%x", (u32)version);
    rule("boot_params.type_of_loader", ok(rd8(bp + BP_TYPE_OF_LOADER) != 0), "type_of_loader=%x", (u32)rd8(bp + BP_TYPE_OF_LOADER));
    rule("boot_params.hardware_subarch", ok(rd32(bp + BP_HARDWARE_SUBARCH) == 0), "hardware_subarch=%u", rd32(bp + BP_HARDWARE_SUBARCH));

    u32 n = rd8(bp + BP_E820_ENTRIES);
    emit("boot_params.e820_entries=%u\n", n);
    for (u32 i = 0; i < n && i < MAX_MAP; i++) {
        u64 e = bp + BP_E820_TABLE + 20 * i;
        map[i].addr = rd64(e);
        map[i].size = rd64(e + 8);
        map[i].type = rd32(e + 16);
        emit("boot_params.e820.%u=%lx %lx %u\n", i, map[i].addr, map[i].size, map[i].type);
    }
    nmap = n > MAX_MAP ? MAX_MAP : (int)n;
    have_map = nmap > 0;
    map_name = "e820";
    rule("boot_params.e820_entries", ok(n >= 1 && n <= MAX_MAP), "%u entries", n);
    check_map("boot_params");
    rule("boot_params.in_ram", ok(in_ram(bp, 4096)), "boot_params %lx+0x1000", bp);
    add_busy("boot_params", bp, 4096);

    u64 cmdline = rd32(bp + BP_CMD_LINE_PTR) | ((u64)rd32(bp + 0xc8) << 32);
    u32 cmdline_size = version >= 0x0206 ? rd32(bp + 0x238) : 255;
    u64 bound = cmdline_size && cmdline_size < CMDLINE_BOUND ? (u64)cmdline_size + 1 : CMDLINE_BOUND;
    emit("boot_params.cmd_line_ptr=%lx\n", cmdline);
    if (cmdline) {
        s64 clen = find_nul(cmdline, bound);
        rule("boot_params.cmdline_nul", ok(clen >= 0), clen >= 0 ? "NUL at +%ld" : "no NUL within %lu bytes", clen >= 0 ? clen : (s64)bound);
        if (clen >= 0)
            report_string("boot_params.cmdline", cmdline, clen);
        u64 span = clen >= 0 ? (u64)clen + 1 : bound;
        rule("boot_params.cmdline_in_ram", ok(in_ram(cmdline, span)), "cmdline %lx+%lx", cmdline, span);
        add_busy("cmdline", cmdline, span);
    } else {
        rule("boot_params.cmdline_nul", PASS, "no command line (cmd_line_ptr 0)");
    }
    u64 rd = rd32(bp + BP_RAMDISK_IMAGE) | ((u64)rd32(bp + 0xc0) << 32);
    u64 rds = rd32(bp + BP_RAMDISK_SIZE) | ((u64)rd32(bp + 0xc4) << 32);
    emit("boot_params.ramdisk_image=%lx\nboot_params.ramdisk_size=%lx\n", rd, rds);
    if (rds) {
        report_head("boot_params.ramdisk.head", rd, rds);
        rule("boot_params.ramdisk_in_ram", ok(in_ram(rd, rds)), "ramdisk %lx+%lx", rd, rds);
        add_busy("ramdisk", rd, rds);
    }
    int over = -1;
    for (int i = 0; i < nbusy; i++)
        if (overlaps(busy[i].addr, busy[i].size, IMAGE_START, IMAGE_END - IMAGE_START) && over < 0)
            over = i;
    rule("boot_params.not_over_probe", ok(over < 0), over < 0 ? "%u blobs clear of %lx-%lx" : "%s at %lx overlaps the probe", over < 0 ? (u64)nbusy : (u64)busy[over].name, over < 0 ? IMAGE_START : busy[over].addr, IMAGE_END);

    info.cmdline = cmdline;
    info.ramdisk = rd;
    info.ramdisk_size = rds;
    info.rsdp = rd64(bp + 0x70);
    info.rsdp_source = "boot_params.acpi_rsdp_addr";
}

/* ---------------------------------------------------------------- ACPI */
static struct {
    u64 madt, fadt, dsdt;
    u32 dsdt_len;
    int hw_reduced;
    u8 sleep_space;
    u64 sleep_ctl;
    u32 pm1a_cnt;
} acpi;

static u32 bytesum(u64 a, u32 n) { u8 s = 0; for (u32 i = 0; i < n; i++) s += rd8(a + i); return s; }
static int sum8(u64 a, u32 n) { return bytesum(a, n) == 0; }

static u64 scan_rsdp(u64 start, u64 len)
{
    for (u64 a = start; a < start + len; a += 16)
        if (rd32(a) == 0x20445352 && rd32(a + 4) == 0x20525450)   /* "RSD PTR " */
            return a;
    return 0;
}

static void put_sig(u32 sig) { for (int i = 0; i < 4; i++) { char c = (char)(sig >> (8 * i)); put_c(c >= 0x20 && c < 0x7f ? c : '?'); } }

static void check_acpi(void)
{
    u64 rsdp = info.rsdp;
    const char *source = info.rsdp_source;
    if (!rsdp) {        /* what Linux does without a pointer: EBDA first KiB, then 0xE0000-0xFFFFF */
        u64 ebda = (u64)rd16(0x40e) << 4;
        if (ebda >= 0x80000 && ebda < 0xa0000)
            rsdp = scan_rsdp(ebda, 1024);
        if (!rsdp)
            rsdp = scan_rsdp(0xe0000, 0x20000);
        source = "BIOS area scan";
    }
    if (!rsdp || !readable(rsdp, 36)) {
        rule("acpi.rsdp", UNVERIFIABLE, "no RSDP (%s 0, none in the BIOS areas): ACPI and SMP not checked", info.rsdp_source);
        return;
    }
    emit("acpi.rsdp=%lx\nacpi.rsdp_source=%s\n", rsdp, source);
    int sig = rd32(rsdp) == 0x20445352 && rd32(rsdp + 4) == 0x20525450;
    rule("acpi.rsdp_signature", ok(sig), "\"RSD PTR \" at %lx", rsdp);
    if (!sig)
        return;
    u8 rev = rd8(rsdp + 15);
    emit("acpi.rsdp_revision=%u\nacpi.oem_id=", (u32)rev);
    put_esc(rsdp + 9, 6);
    put_c('\n');
    rule("acpi.rsdp_checksum", ok(sum8(rsdp, 20)), "first 20 bytes sum to %x", bytesum(rsdp, 20));
    u64 root = rd32(rsdp + 16);
    int esize = 4;
    if (rev >= 2) {
        u32 len = rd32(rsdp + 20);
        rule("acpi.rsdp_ext_checksum", ok(len >= 36 && len < 4096 && sum8(rsdp, len)), "length %u sums to %x", len, len >= 36 && len < 4096 ? bytesum(rsdp, len) : 0);
        if (rd64(rsdp + 24)) {
            root = rd64(rsdp + 24);
            esize = 8;
        }
    }
    if (!readable(root, 36)) {
        rule("acpi.root_checksum", FAIL, "root table at %lx unreadable", root);
        return;
    }
    u32 root_len = rd32(root + 4);
    int root_sig = rd32(root) == (esize == 8 ? 0x54445358u : 0x54445352u);  /* "XSDT" / "RSDT" */
    emit("acpi.root=%lx %s %u\n", root, esize == 8 ? "XSDT" : "RSDT", root_len);
    rule("acpi.root_checksum", ok(root_sig && root_len >= 36 && root_len < 65536 && sum8(root, root_len)), "%s at %lx length %u", esize == 8 ? "XSDT" : "RSDT", root, root_len);
    if (!root_sig || root_len < 36 || root_len >= 65536)
        return;

    int bad = 0, in_ram_tables = 0;
    u32 bad_sig = 0;
    if (have_map && (overlaps_ram(rsdp, 36) || overlaps_ram(root, root_len)))
        in_ram_tables++;
    add_busy("rsdp", rsdp, 36);
    add_busy("xsdt", root, root_len);
    u32 n = (root_len - 36) / esize;
    for (u32 i = 0; i < n && i < 32; i++) {
        u64 t = esize == 8 ? rd64(root + 36 + 8 * i) : rd32(root + 36 + 4 * i);
        if (!readable(t, 36)) {
            bad++;
            continue;
        }
        u32 s = rd32(t), len = rd32(t + 4);
        int good = len >= 36 && len < (1u << 20) && sum8(t, len);
        emit("acpi.table.%u=", i);
        put_sig(s);
        emit(" %lx %u %s\n", t, len, good ? "ok" : "bad-checksum");
        if (!good)
            bad++, bad_sig = s;
        if (have_map && overlaps_ram(t, len))
            in_ram_tables++;
        add_busy("acpi table", t, len);
        if (s == 0x43495041)            /* "APIC" */
            acpi.madt = t;
        else if (s == 0x50434146)       /* "FACP" */
            acpi.fadt = t;
    }
    if (acpi.fadt) {
        u64 f = acpi.fadt;
        u32 flen = rd32(f + 4);
        u64 dsdt = rd32(f + 40);
        if (flen >= 148 && rd64(f + 140))
            dsdt = rd64(f + 140);       /* X_DSDT */
        u32 flags = flen >= 116 ? rd32(f + 112) : 0;
        acpi.hw_reduced = (flags >> 20) & 1;   /* HW_REDUCED_ACPI */
        acpi.pm1a_cnt = rd32(f + 64);
        if (flen >= 256) {
            acpi.sleep_space = rd8(f + 244);
            acpi.sleep_ctl = rd64(f + 248);   /* SLEEP_CONTROL_REG (GAS) address */
        }
        emit("acpi.fadt.revision=%u\nacpi.fadt.flags=%x\nacpi.fadt.hw_reduced=%u\nacpi.fadt.pm1a_cnt_blk=%x\nacpi.fadt.sleep_control_reg=%u:%lx\n",
             (u32)rd8(f + 8), flags, (u32)acpi.hw_reduced, acpi.pm1a_cnt, (u32)acpi.sleep_space, acpi.sleep_ctl);
        if (dsdt && readable(dsdt, 36)) {
            u32 dlen = rd32(dsdt + 4);
            int good = rd32(dsdt) == 0x54445344 && dlen >= 36 && dlen < (1u << 20) && sum8(dsdt, dlen);  /* "DSDT" */
            emit("acpi.dsdt=%lx %u %s\n", dsdt, dlen, good ? "ok" : "bad");
            if (!good)
                bad++, bad_sig = 0x54445344;
            else
                acpi.dsdt = dsdt, acpi.dsdt_len = dlen;
            if (have_map && overlaps_ram(dsdt, dlen))
                in_ram_tables++;
            add_busy("dsdt", dsdt, dlen);
        }
    }
    if (bad) {
        emit("");
        rule("acpi.table_checksums", FAIL, "%d bad, last: %c%c%c%c", bad, (int)(bad_sig & 0xff), (int)((bad_sig >> 8) & 0xff), (int)((bad_sig >> 16) & 0xff), (int)(bad_sig >> 24));
    } else {
        rule("acpi.table_checksums", PASS, "all sum to 0");
    }
    rule("acpi.tables_not_in_ram", have_map ? ok(!in_ram_tables) : UNVERIFIABLE, "%d tables overlap RAM in the %s", in_ram_tables, map_name);
    rule("acpi.fadt_present", ok(acpi.fadt != 0), "FACP");
    rule("acpi.madt_present", ok(acpi.madt != 0), "APIC");
}

/* ---------------------------------------------------------------- SMP */
#define APIC_ID 0x20
#define APIC_SVR 0xf0
#define APIC_ICR_LO 0x300
#define APIC_ICR_HI 0x310

static u32 madt_ids[256];      /* every MADT CPU: xAPIC ids are 8 bits, pvhboot lists up to 255 */
static int nmadt;
static int x2apic_mode;
static u64 apic_mmio;

static void icr_send(u32 dest, u32 lo)
{
    if (x2apic_mode) {
        wrmsr(0x830, ((u64)dest << 32) | lo);
        return;
    }
    for (int i = 0; i < 100000 && (rd32(apic_mmio + APIC_ICR_LO) & (1u << 12)); i++)
        ;                               /* delivery status: send pending */
    wr32(apic_mmio + APIC_ICR_HI, dest << 24);
    wr32(apic_mmio + APIC_ICR_LO, lo);
}

static void check_smp(void)
{
    u64 apicbase = rdmsr(0x1b);
    x2apic_mode = (apicbase >> 10) & 1;
    apic_mmio = apicbase & 0xfffff000ul;
    lapic_base = (u32)apic_mmio;
    u32 bsp = x2apic_mode ? (u32)rdmsr(0x802) : rd32(apic_mmio + APIC_ID) >> 24;
    emit("smp.apic_base_msr=%lx\nsmp.bsp_apic_id=%u\n", apicbase, bsp);
    if (!acpi.madt) {
        rule("smp.aps_started", UNVERIFIABLE, "no MADT: the vCPUs are not known");
        return;
    }
    u64 m = acpi.madt;
    u32 len = rd32(m + 4), ioapics = 0;
    emit("acpi.madt.lapic_addr=%x\nacpi.madt.flags=%x\n", rd32(m + 36), rd32(m + 40));
    int bsp_listed = 0, entries_ok = 1;
    for (u32 off = 44; off + 2 <= len;) {
        u8 type = rd8(m + off), elen = rd8(m + off + 1);
        if (elen < 2 || off + elen > len) {
            entries_ok = 0;
            break;
        }
        if (type == 0 && elen >= 8) {           /* Processor Local APIC */
            u32 id = rd8(m + off + 3), flags = rd32(m + off + 4);
            emit("acpi.madt.lapic.%u=uid=%u id=%u flags=%x\n", (u32)nmadt, (u32)rd8(m + off + 2), id, flags);
            if ((flags & 1) && nmadt < 256)
                madt_ids[nmadt++] = id;
            if (id == bsp) bsp_listed = 1;
        } else if (type == 9 && elen >= 16) {   /* Processor Local x2APIC */
            u32 id = rd32(m + off + 4), flags = rd32(m + off + 8);
            emit("acpi.madt.x2apic=id=%u flags=%x\n", id, flags);
            if ((flags & 1) && nmadt < 256)
                madt_ids[nmadt++] = id;
            if (id == bsp) bsp_listed = 1;
        } else if (type == 1 && elen >= 12) {   /* I/O APIC */
            emit("acpi.madt.ioapic.%u=id=%u addr=%x gsi_base=%u\n", ioapics++, (u32)rd8(m + off + 2), rd32(m + off + 4), rd32(m + off + 8));
        } else if (type == 2 && elen >= 10) {   /* Interrupt Source Override */
            emit("acpi.madt.iso=bus=%u source=%u gsi=%u flags=%x\n", (u32)rd8(m + off + 2), (u32)rd8(m + off + 3), rd32(m + off + 4), (u32)rd16(m + off + 8));
        }
        off += elen;
    }
    emit("acpi.madt.cpus=%u\n", (u32)nmadt);
    rule("acpi.madt_entries", ok(entries_ok), "ok");
    rule("smp.bsp_in_madt", ok(bsp_listed), "bsp apic id %u", bsp);

    int naps = 0;
    for (int i = 0; i < nmadt; i++)
        if (madt_ids[i] != bsp)
            naps++;
    if (!naps) {
        emit("smp.cpus_seen=1\n");
        rule("smp.aps_started", PASS, "no APs in the MADT");
        return;
    }
    if (!have_map) {
        rule("smp.aps_started", UNVERIFIABLE, "no memory map: no known free page below 1 MiB for the AP trampoline");
        return;
    }
    /* A 4 KiB RAM page below 1 MiB that holds nothing the host placed. */
    u64 tramp = 0;
    for (u64 pg = 0x9f000; pg >= 0x1000 && !tramp; pg -= 0x1000) {
        if (!in_ram(pg, 0x1000))
            continue;
        int clash = 0;
        for (int i = 0; i < nbusy && !clash; i++)
            clash = overlaps(pg, 0x1000, busy[i].addr, busy[i].size);
        if (!clash)
            tramp = pg;
    }
    if (!tramp) {
        rule("smp.trampoline", FAIL, "no free 4 KiB RAM page below 1 MiB in the %s", map_name);
        return;
    }
    emit("smp.trampoline=%lx\n", tramp);
    memcpy((void *)tramp, ap_tramp_start, (u64)(ap_tramp_end - ap_tramp_start));
    if (!x2apic_mode)
        wr32(apic_mmio + APIC_SVR, rd32(apic_mmio + APIC_SVR) | 0x100);   /* APIC software enable */

    /* INIT assert, INIT de-assert, SIPI, SIPI (SDM 8.4.4.1; Linux wakeup_secondary_cpu_via_init). */
    for (int i = 0; i < nmadt; i++) {
        u32 id = madt_ids[i];
        if (id == bsp || (!x2apic_mode && id > 254))
            continue;
        icr_send(id, 0xc500);
        icr_send(id, 0x8500);
        icr_send(id, 0x600 | (u32)(tramp >> 12));
        icr_send(id, 0x600 | (u32)(tramp >> 12));
    }
    u64 t0 = rdtsc();
    while (ap_count < (u32)naps && rdtsc() - t0 < 3000000000ul)
        __asm__ volatile("pause");
    u32 seen = ap_count;
    int ids_ok = 1;
    for (u32 id = 0; id < 256; id++) {
        u16 s = ap_slots[id];
        if (!(s & 0x100))
            continue;
        int listed = 0;
        for (int i = 0; i < nmadt; i++)
            listed |= madt_ids[i] == id;
        emit("smp.ap.%u=cpuid_apic_id=%u lapic_id=%u\n", id, id, (u32)(s & 0xff));
        if ((s & 0xff) != id || !listed || id == bsp)
            ids_ok = 0;
    }
    emit("smp.cpus_seen=%u\n", 1 + seen);
    rule("smp.aps_started", ok(seen == (u32)naps), "%u of %d APs reported", seen, naps);
    rule("smp.apic_ids", ok(ids_ok), "%u APs", seen);
}

/* ---------------------------------------------------------------- leaving */
/* SLP_TYPa of \_S5 from the DSDT's AML: Name(_S5, Package(){ a, ... }). */
static u32 s5_slp_typ(void)
{
    u64 d = acpi.dsdt;
    for (u32 i = 36; d && i + 8 < acpi.dsdt_len; i++) {
        if (rd32(d + i) != 0x5f35535f)              /* "_S5_" */
            continue;
        u32 j = i + 4;
        if (rd8(d + j) != 0x12)                     /* PackageOp */
            continue;
        j += 1 + 1 + (rd8(d + j + 1) >> 6);         /* PkgLength: lead byte + extra bytes */
        j += 1;                                     /* NumElements */
        u8 op = rd8(d + j);
        if (op == 0x0a) return rd8(d + j + 1);      /* BytePrefix */
        if (op == 0x00 || op == 0x01) return op;    /* ZeroOp, OneOp */
        return op & 7;
    }
    return 5;
}

static void __attribute__((noreturn)) probe_exit(u32 code)
{
    outl(0xf4, code);                               /* pvhboot / QEMU isa-debug-exit */
    if (acpi.fadt) {
        u32 typ = s5_slp_typ() & 7;
        if (acpi.hw_reduced && acpi.sleep_ctl) {    /* ACPI 6 4.8.3.7: SLP_TYP bits 4:2, SLP_EN bit 5 */
            u8 v = (u8)((typ << 2) | 0x20);
            if (acpi.sleep_space == 1)
                outb((u16)acpi.sleep_ctl, v);
            else if (readable(acpi.sleep_ctl, 1))
                wr8(acpi.sleep_ctl, v);
        } else if (acpi.pm1a_cnt) {                  /* PM1 control: SLP_TYP bits 12:10, SLP_EN bit 13 */
            outw((u16)acpi.pm1a_cnt, (u16)((typ << 10) | 0x2000));
        }
    }
    outb(0x64, 0xfe);                               /* i8042 pulse reset */
    halt_forever();
}

static void __attribute__((noreturn)) verdict(void)
{
    emit("probe.rules=%u\n", (u32)nrules);
    if (!nfailed) {
        emit("PROBE PASS\n");
        probe_exit(0);
    }
    put_s("PROBE FAIL: ");
    for (int i = 0; i < nfailed; i++) {
        if (i)
            put_s("; ");
        put_s(failed[i]);
    }
    put_c('\n');
    probe_exit(1);
}

/* Called by head.S for a fault outside a guarded access: frame = vector, error, rip, cs, rflags. */
void __attribute__((noreturn)) fatal_exception(u64 *frame)
{
    u64 cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    if (!uart_ready)
        uart_init();
    if (line_len)
        put_c('\n');
    rule("probe.exception", FAIL, "vector=%lu error=%lx rip=%lx cr2=%lx", frame[0], frame[1], frame[2], cr2);
    verdict();
}

/* ---------------------------------------------------------------- IDT */
static u64 idt64[64] __attribute__((aligned(16)));

void setup_idt64(void)
{
    for (int i = 0; i < 32; i++) {
        u64 h = (u64)fault64_stubs + 16ul * i;
        /* 64-bit interrupt gate: offset[15:0], selector, type 0xe present; offset[63:16] */
        idt64[2 * i] = (h & 0xffff) | ((u64)SEL_CODE64 << 16) | (0x8eul << 40) | ((h & 0xffff0000ul) << 32);
        idt64[2 * i + 1] = h >> 32;
    }
    struct __attribute__((packed)) { u16 limit; u64 base; } p = { sizeof(idt64) - 1, (u64)idt64 };
    __asm__ volatile("lidt %0" :: "m"(p));
}

/* ---------------------------------------------------------------- main */
void __attribute__((noreturn)) probe_main(struct entry_state *st)
{
    uart_init();
    put_c('\n');
    emit("probe.version=1\nprobe.protocol=%s\nprobe.image=%lx-%lx\n",
         st->protocol == PROTO_PVH ? "pvh" : "linux64", IMAGE_START, IMAGE_END);
    int zero = 1;
    for (int i = 0; i < 64; i++)
        zero &= bss_canary[i] == 0;
    rule("load.bss_zeroed", ok(zero), zero ? "canary zero" : "canary not zero");
    /* PHYS32_RELOC (xen/include/public/elfnote.h): the image runs at an address aligned as its note
     * asks, inside the note's window; the caller compares image.load_addr with its own plan. */
    emit("image.load_addr=%lx\n", IMAGE_START);
    rule("image.placement", ok(IMAGE_START % probe_reloc[0] == 0 && IMAGE_START >= probe_reloc[1] &&
                               IMAGE_END - 1 <= probe_reloc[2]),
         "image %lx-%lx, note: align %x, window %x-%x", IMAGE_START, IMAGE_END, probe_reloc[0],
         probe_reloc[1], probe_reloc[2]);
    u32 sig[4];
    cpuid(0x40000000, &sig[3], &sig[0], &sig[1], &sig[2]);
    put_s("cpu.hypervisor=");
    for (int i = 0; i < 12; i++) {          /* printable bytes only ("KVMKVMKVM\0\0\0") */
        char ch = (char)(sig[i / 4] >> (8 * (i % 4)));
        if (ch > 0x20 && ch < 0x7f)
            put_c(ch);
    }
    put_c('\n');

    if (st->protocol == PROTO_PVH) {
        report_pvh_entry(st);
        check_start_info(st);
    } else {
        check_linux64(st);
    }
    check_acpi();
    check_smp();
    verdict();
}
