/*
 * pvhboot probe: entry points, mode switches, exception stubs and the AP trampoline.
 *
 * Two ways in:
 *   pvh_start32  the Xen PVH entry (xen docs/misc/pvh.pandoc): 32-bit protected mode, paging off,
 *                EBX = hvm_start_info.  Named by the XEN_ELFNOTE_PHYS32_ENTRY note below.
 *   startup_64   the Linux 64-bit boot protocol entry (Documentation/arch/x86/boot.rst, "64-bit
 *                boot protocol"): long mode, identity mapping, RSI = boot_params.  The ELF e_entry.
 * Both record the state they were given before changing anything, then reach probe_main() in C
 * in long mode on the probe's own GDT, IDT and identity page tables (4 GiB, 2 MiB pages), the way
 * Linux's arch/x86/platform/pvh/head.S does for PVH.
 *
 * The PVH entry is position-independent (the XEN_ELFNOTE_PHYS32_RELOC note below says so): a
 * loader may put the image at any 1 MiB-aligned address of the note's window instead of its link
 * address (1 MiB).  As Linux's PVH head does, the 32-bit code learns where it runs with one call
 * (start_info's first dword serves as a 4-byte stack), keeps the difference to the link address
 * (the "load delta") in %esi and addresses all its data through it; it adds the delta to the
 * physical addresses stored in the page tables, GDT/IDT pointers and AP trampoline.  The 64-bit
 * code and the C code stay linked at 1 MiB: the page tables map virtual [1 MiB, 2 MiB) (one 4 KiB
 * page table, pt_low) onto the image wherever it is, and everything else 1:1.  The code that
 * enables paging runs at its physical address, which that map leaves identity-mapped (the image
 * is either at its link address or at 2 MiB or above).  startup_64 (Linux 64-bit protocol) is
 * never moved: an ELF vmlinux has no setup header to say it could be.
 *
 * This code runs through KVM's instruction emulator on kvm_pvm (~1 us per instruction): no lar/lsl
 * (they stop the guest), few instructions.
 */
#include "probe.h"

#define MSR_EFER        0xc0000080
#define EFER_LME        (1 << 8)
#define CR0_PG          0x80000000
#define CR4_PAE         0x20

/* Xen ELF notes (xen/include/public/elfnote.h): name "Xen", 4-byte aligned, in a PT_NOTE. */
#define XEN_ELFNOTE_GUEST_OS        6
#define XEN_ELFNOTE_PHYS32_ENTRY    18
#define XEN_ELFNOTE_PHYS32_RELOC    19

/* PHYS32_RELOC: alignment, lowest load address, highest address of the image's last byte. */
#define RELOC_ALIGN     0x100000
#define RELOC_MIN       0x100000
#define RELOC_MAX       0x3fffffff

.macro XEN_NOTE type, desc_start, desc_end
    .balign 4
    .long 4                                 /* namesz: "Xen\0" */
    .long \desc_end - \desc_start           /* descsz */
    .long \type
    .asciz "Xen"
    .balign 4
.endm

    .section .note.Xen, "a", @note
    XEN_NOTE XEN_ELFNOTE_GUEST_OS, 1f, 2f
1:  .asciz "pvhboot-probe"
2:  .balign 4
    XEN_NOTE XEN_ELFNOTE_PHYS32_ENTRY, 1f, 2f
1:  .long pvh_start32
2:  XEN_NOTE XEN_ELFNOTE_PHYS32_RELOC, 1f, 2f
    .globl probe_reloc
1:
probe_reloc:                            /* probe.c checks its placement against these */
    .long RELOC_ALIGN, RELOC_MIN, RELOC_MAX
2:

/* ---------------------------------------------------------------------------------------------- */
    .section .text.head, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    /* EFLAGS and ESP into registers before anything changes them, then where we run: there is no
     * stack, so (as Linux's PVH head) start_info's first dword, kept in %ecx, is a 4-byte one for
     * pushfl and for the call whose return address is our position.  The CS offset the call
     * pushes is the physical address only with a CS base of 0: the CS-relative reads of
     * probe_magic through DS/ES/SS below and the placement rule (probe.c) are what tell. */
    movl %esp, %edi
    movl (%ebx), %ecx
    leal 4(%ebx), %esp
    pushfl
    popl %edx
    call pvh_call_site
    .globl pvh_call_site
pvh_call_site:
    popl %esi
    movl %ecx, (%ebx)
    movl %esi, %eax
    subl $pvh_call_site, %esi           /* %esi = load delta, for every data access below */
    movl %eax, entry_state + ST_CALL_EIP(%esi)
    movl %edx, entry_state + ST_EFLAGS(%esi)
    movl %edi, entry_state + ST_ESP(%esi)
    movl %ebx, entry_state + ST_EBX(%esi)
    sgdtl entry_state + ST_GDTR(%esi)
    sidtl entry_state + ST_IDTR(%esi)
    movw %cs, entry_state + ST_CS(%esi)
    movw %ds, entry_state + ST_DS(%esi)
    movw %es, entry_state + ST_ES(%esi)
    movw %ss, entry_state + ST_SS(%esi)
    movw %fs, entry_state + ST_FS(%esi)
    movw %gs, entry_state + ST_GS(%esi)
    str entry_state + ST_TR(%esi)
    movl %cr0, %eax
    movl %eax, entry_state + ST_CR0(%esi)
    movl %cr3, %eax
    movl %eax, entry_state + ST_CR3(%esi)
    movl %cr4, %eax
    movl %eax, entry_state + ST_CR4(%esi)
    movl $MSR_EFER, %ecx
    rdmsr
    movl %eax, entry_state + ST_EFER(%esi)
    movl %edx, entry_state + ST_EFER + 4(%esi)
    movl $PROTO_PVH, entry_state + ST_PROTOCOL(%esi)
    movl %esi, probe_load_delta(%esi)

    /* Physical addresses the image holds, moved by the delta: descriptor-table pointers, the AP
     * trampoline's GDT pointer and far-jump target, the page tables (pml4 -> pdpt -> pd0 ->
     * pt_low, and pt_low's mapping of the image at virtual 1 MiB). */
    addl %esi, probe_gdt_ptr + 2(%esi)
    addl %esi, idt32_ptr + 2(%esi)
    addl %esi, ap_tramp_gdt_ptr + 2(%esi)
    addl %esi, ap_entry_far(%esi)
    movl %esi, ap_delta(%esi)
    addl %esi, pml4(%esi)
    addl %esi, pdpt(%esi)
    addl %esi, pdpt + 8(%esi)
    addl %esi, pdpt + 16(%esi)
    addl %esi, pdpt + 24(%esi)
    addl %esi, pd0(%esi)
    leal pt_low + 256 * 8(%esi), %eax
    movl $256, %ecx
1:  addl %esi, (%eax)
    addl $8, %eax
    loop 1b

    /* Our own IDT, so that a fault in the checks below is caught and reported, not a triple
     * fault.  Gate: offset[15:0], selector, 0x8e00 (present 32-bit interrupt gate), offset[31:16]. */
    leal idt32(%esi), %edi
    leal fault32_stubs(%esi), %eax
    movl $32, %ecx
1:  movl %eax, 4(%edi)
    movw %ax, (%edi)
    movw $SEL_CODE32, 2(%edi)
    movw $0x8e00, 4(%edi)
    leal 8(%eax), %eax
    leal 8(%edi), %edi
    loop 1b
    /* lgdt/lidt change only GDTR/IDTR: the hidden state of CS/DS/ES/SS/TR stays as given. */
    lgdtl probe_gdt_ptr(%esi)
    lidtl idt32_ptr(%esi)
    movl $checks_done, fixup32(%esi)
    leal stack_top(%esi), %esp

/* A check: an instruction that must not fault; on success set \bit in the checks word.  The
 * fixup is a link address: fault32_common adds the delta. */
.macro GUARD bit, insn:vararg
    movl $.Lguard\@, fixup32(%esi)
    \insn
    orl $\bit, entry_state + ST_CHECKS(%esi)
.Lguard\@:
.endm
/* A read-back check: \reg must equal PROBE_MAGIC after \insn. */
.macro MAGIC bit, insn:vararg
    movl $.Lmagic\@, fixup32(%esi)
    \insn
    cmpl $PROBE_MAGIC, %eax
    jne .Lmagic\@
    orl $\bit, entry_state + ST_CHECKS(%esi)
.Lmagic\@:
.endm

    /* CS first: a fault reloads CS from our GDT. A read through CS needs a readable segment. */
    GUARD CHK_CS_LOW, movl %cs:0, %eax
    GUARD CHK_CS_HIGH, movl %cs:0xfffffffc, %eax
    MAGIC CHK_DS_BASE, movl %ds:probe_magic(%esi), %eax
    GUARD CHK_DS_LOW, movl 0, %eax
    GUARD CHK_DS_HIGH, movl 0xfffffffc, %eax
    GUARD CHK_DS_WRITE, movl %eax, %ds:scratch32(%esi)
    MAGIC CHK_ES_BASE, movl %es:probe_magic(%esi), %eax
    GUARD CHK_ES_LOW, movl %es:0, %eax
    GUARD CHK_ES_HIGH, movl %es:0xfffffffc, %eax
    GUARD CHK_ES_WRITE, movl %eax, %es:scratch32(%esi)
    MAGIC CHK_SS_BASE, movl %ss:probe_magic(%esi), %eax
    GUARD CHK_SS_LOW, movl %ss:0, %eax
    GUARD CHK_SS_HIGH, movl %ss:0xfffffffc, %eax
    GUARD CHK_SS_WRITE, movl %eax, %ss:scratch32(%esi)
    /* SS.B (32-bit stack): with a 16-bit stack the push would use SP, not ESP. */
    movl $0, stack_top - 4(%esi)
    movl $ss_push_done, fixup32(%esi)
    pushl $PROBE_MAGIC
    cmpl $PROBE_MAGIC, stack_top - 4(%esi)
    jne ss_push_done
    orl $CHK_SS_32BIT, entry_state + ST_CHECKS(%esi)
ss_push_done:
    leal stack_top(%esi), %esp

    /* TR: read its descriptor from the GDT the host loaded (what lar/lsl would read, but lar/lsl
     * stop a CPL0 guest on kvm_pvm), when the selector is non-null, in the GDT and inside its
     * limit.  Then load a copy into our GDT with ltr: ltr faults (#GP) on a busy TSS. */
    movzwl entry_state + ST_TR(%esi), %eax
    testl $0xfff8, %eax
    jz checks_done
    testl $4, %eax                      /* TI: in an LDT, not the GDT */
    jnz checks_done
    movl %eax, %edx
    orl $7, %edx
    cmpw entry_state + ST_GDTR(%esi), %dx /* last byte of the descriptor within the GDT limit */
    ja checks_done
    andl $0xfff8, %eax
    addl entry_state + ST_GDTR + 2(%esi), %eax
    movl $checks_done, fixup32(%esi)
    movl (%eax), %edx
    movl 4(%eax), %ecx
    movl %edx, entry_state + ST_TRDESC(%esi)
    movl %ecx, entry_state + ST_TRDESC + 4(%esi)
    movl $1, entry_state + ST_TRDESC_OK(%esi)
    movl %edx, probe_gdt + SEL_TRCOPY(%esi)
    movl %ecx, probe_gdt + SEL_TRCOPY + 4(%esi)
    movl $2, entry_state + ST_LTR(%esi)
    movl $ltr_done, fixup32(%esi)
    movw $SEL_TRCOPY, %ax
    ltr %ax
    movl $1, entry_state + ST_LTR(%esi)
ltr_done:
checks_done:
    movl $unexpected32, fixup32(%esi)

    /* From here on: our own segments, as Linux's PVH head does (lgdt, reload); a far return to
     * reach the moved label. */
    leal 1f(%esi), %eax
    pushl $SEL_CODE32
    pushl %eax
    lretl
1:  movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    leal stack_top(%esi), %esp

    /* Long mode: PAE, CR3, EFER.LME, then paging (arch/x86/platform/pvh/head.S).  The far jump
     * goes to the link address, which the page tables map onto the image. */
    movl %cr4, %eax
    orl $CR4_PAE, %eax
    movl %eax, %cr4
    leal pml4(%esi), %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    orl $CR0_PG, %eax
    movl %eax, %cr0
    ljmpl $SEL_CODE64, $pvh_long_mode

unexpected32:
    /* A fault outside any check: note it and carry on to long mode, where it is reported; a
     * second one means the switch itself faults: stop. */
    cmpl $0, entry_state + ST_UNEXPECTED(%esi)
    jne 2f
    movl last_vector32(%esi), %eax
    incl %eax
    movl %eax, entry_state + ST_UNEXPECTED(%esi)
    jmp checks_done
2:  cli
    hlt
    jmp 2b

fault32_common:
    popl last_vector32(%esi)            /* the stub's vector; an error code may lie below */
    incl entry_state + ST_FAULTS(%esi)
    leal stack_top(%esi), %esp
    movl fixup32(%esi), %eax
    addl %esi, %eax
    jmp *%eax

    .balign 8
fault32_stubs:
    .set vec, 0
    .rept 32
    .balign 8
    pushl $vec
    jmp fault32_common
    .set vec, vec + 1
    .endr

/* ---------------------------------------------------------------------------------------------- */
    .code64
pvh_long_mode:
    movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movq $stack_top, %rsp
    call setup_idt64
    movq $entry_state, %rdi
    call probe_main
    jmp halt_forever

    /* The Linux 64-bit boot protocol entry (ELF e_entry). */
    .globl startup_64
startup_64:
    movq %rsi, entry_state + ST_RSI
    movq %rsp, entry_state + ST_RSP
    movq $stack_top, %rsp
    pushfq
    popq entry_state + ST_RFLAGS
    cli
    movq %cr0, %rax
    movq %rax, entry_state + ST_CR0_64
    movq %cr3, %rax
    movq %rax, entry_state + ST_CR3_64
    movq %cr4, %rax
    movq %rax, entry_state + ST_CR4_64
    movl $MSR_EFER, %ecx
    rdmsr
    movl %eax, entry_state + ST_EFER
    movl %edx, entry_state + ST_EFER + 4
    movw %cs, entry_state + ST_CS
    movw %ds, entry_state + ST_DS
    movw %es, entry_state + ST_ES
    movw %ss, entry_state + ST_SS
    movw %fs, entry_state + ST_FS
    movw %gs, entry_state + ST_GS
    str entry_state + ST_TR
    sgdt entry_state + ST_GDTR
    sidt entry_state + ST_IDTR
    leaq startup_64(%rip), %rax         /* where we really run (== link address if identity) */
    movq %rax, entry_state + ST_RIP_ACTUAL
    movl $PROTO_LINUX64, entry_state + ST_PROTOCOL
    lgdt probe_gdt_ptr64
    pushq $SEL_CODE64
    pushq $1f
    lretq
1:  movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    call setup_idt64
    movq $entry_state, %rdi
    call probe_main
    .globl halt_forever
halt_forever:
    cli
    hlt
    jmp halt_forever

/* 64-bit exceptions: uniform frame (vector, error code, rip, cs, rflags, rsp, ss). A fault with
 * fixup64 set resumes there (probe.c's guarded reads); any other goes to fatal_exception(). */
    .text
fault64_common:
    pushq %rax
    movq fixup64, %rax
    testq %rax, %rax
    jz 1f
    movq %rax, 24(%rsp)
    movq 8(%rsp), %rax
    movq %rax, last_vector64
    movq $0, fixup64
    popq %rax
    addq $16, %rsp
    iretq
1:  popq %rax
    movq %rsp, %rdi
    andq $-16, %rsp
    call fatal_exception
    jmp halt_forever

    .balign 16
    .globl fault64_stubs
fault64_stubs:
    .set vec, 0
    .rept 32
    .balign 16
    .if (vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0                            /* no CPU-pushed error code: keep the frame uniform */
    .endif
    pushq $vec
    jmp fault64_common
    .set vec, vec + 1
    .endr

/* ---------------------------------------------------------------------------------------------- */
/* Application processors.  probe.c copies [ap_tramp_start, ap_tramp_end) to a free 4 KiB page below
 * 1 MiB and sends INIT, SIPI, SIPI with that page's number: the AP starts here in real mode with
 * CS = page << 8, IP = 0.  It enters 32-bit protected mode on the probe's GDT, then records its
 * initial APIC id (CPUID.1:EBX[31:24]) and its local APIC's ID register in ap_slots[cpuid id], a
 * slot only that AP writes (no lock needed), counts itself with a locked increment and halts.
 * Paging stays off: the GDT pointer and the far-jump target are physical (the PVH head moved them
 * by the load delta), and ap_entry32 reads the delta from the copied page (%esi = its address). */
    .code16
    .globl ap_tramp_start, ap_tramp_end
ap_tramp_start:
    cli
    movw %cs, %ax
    movw %ax, %ds
    movzwl %ax, %esi
    shll $4, %esi
    lgdtl ap_tramp_gdt_ptr - ap_tramp_start
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *(ap_entry_far - ap_tramp_start)
    .balign 4
ap_tramp_gdt_ptr:
    .word probe_gdt_end - probe_gdt - 1
    .long probe_gdt
ap_entry_far:                           /* m16:32 for the indirect far jump */
    .long ap_entry32
    .word SEL_CODE32
    .balign 4
ap_delta:
    .long 0
ap_tramp_end:

    .code32
ap_entry32:
    movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl ap_delta - ap_tramp_start(%esi), %edi
    movl $1, %eax
    cpuid
    shrl $24, %ebx
    movl lapic_base(%edi), %esi
    movl 0x20(%esi), %eax               /* local APIC ID register (xAPIC: id in bits 31:24) */
    shrl $24, %eax
    orl $0x100, %eax                    /* "present" */
    movw %ax, ap_slots(%edi, %ebx, 2)
    lock incl ap_count(%edi)
1:  cli
    hlt
    jmp 1b

/* ---------------------------------------------------------------------------------------------- */
    .section .rodata
    .balign 4
probe_magic:
    .long PROBE_MAGIC

    .data
    .balign 16
    .globl probe_gdt, probe_gdt_end
probe_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff            /* 0x08 code32: base 0, limit 4 GiB, execute/read */
    .quad 0x00cf92000000ffff            /* 0x10 data:   base 0, limit 4 GiB, read/write */
    .quad 0x00af9a000000ffff            /* 0x18 code64: L=1 */
    .quad 0                             /* 0x20 TR copy (ltr test); 16 bytes in long mode */
    .quad 0
probe_gdt_end:
    .balign 4
    .word 0
probe_gdt_ptr:
    .word probe_gdt_end - probe_gdt - 1
    .long probe_gdt
    .balign 8
    .word 0, 0, 0
probe_gdt_ptr64:
    .word probe_gdt_end - probe_gdt - 1
    .quad probe_gdt
    .balign 4
    .word 0
idt32_ptr:
    .word 32 * 8 - 1
    .long idt32
    .balign 4
    .globl lapic_base
lapic_base:
    .long 0xfee00000

    .section .data.pagetables, "aw"
    .balign 4096
pml4:
    .quad pdpt + 0x3                    /* present, writable */
    .fill 511, 8, 0
pdpt:
    .quad pd0 + 0x3
    .quad pd0 + 0x1003
    .quad pd0 + 0x2003
    .quad pd0 + 0x3003
    .fill 508, 8, 0
    .globl pml4
    /* Four page directories of 2 MiB pages: identity map of the low 4 GiB, built by the assembler
     * (16 KiB of file, no guest instructions: each one costs ~1 us at CPL0 on kvm_pvm). */
pd0:
    .quad pt_low + 0x3                  /* [0, 2 MiB) in 4 KiB pages: the image's window */
    .set page, 1
    .rept 2047
    .quad (page << 21) | 0x83           /* present, writable, 2 MiB page */
    .set page, page + 1
    .endr
    /* [0, 1 MiB) 1:1; [1 MiB, 2 MiB) = the image, moved to where it was loaded by the PVH head. */
pt_low:
    .set page, 0
    .rept 512
    .quad (page << 12) | 0x3
    .set page, page + 1
    .endr

    .bss
    .balign 4096
    .globl stack_bottom, stack_top
stack_bottom:
    .skip 16384
stack_top:
    .balign 8
idt32:
    .skip 32 * 8
    .globl fixup64, last_vector64, entry_state, ap_slots, ap_count, probe_load_delta
fixup32:
    .skip 4
last_vector32:
    .skip 4
scratch32:
    .skip 4
ap_count:
    .skip 4
    .balign 8
fixup64:
    .skip 8
last_vector64:
    .skip 8
probe_load_delta:                       /* load address - link address (PVH entry; 0 otherwise) */
    .skip 8
entry_state:
    .skip ST_SIZE
ap_slots:
    .skip 256 * 2
