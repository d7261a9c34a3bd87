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
2:

/* ---------------------------------------------------------------------------------------------- */
    .section .text.head, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    /* Record the entry state.  Only moves and stores: no flag-changing instruction until EFLAGS
     * is read (the IDT below is filled with lea/loop, which leave EFLAGS alone). */
    movl %ebx, entry_state + ST_EBX
    movl %esp, entry_state + ST_ESP
    sgdtl entry_state + ST_GDTR
    sidtl entry_state + ST_IDTR
    movw %cs, entry_state + ST_CS
    movw %ds, entry_state + ST_DS
    movw %es, entry_state + ST_ES
    movw %ss, entry_state + ST_SS
    movw %fs, entry_state + ST_FS
    movw %gs, entry_state + ST_GS
    str entry_state + ST_TR
    movl %cr0, %eax
    movl %eax, entry_state + ST_CR0
    movl %cr3, %eax
    movl %eax, entry_state + ST_CR3
    movl %cr4, %eax
    movl %eax, entry_state + ST_CR4
    movl $MSR_EFER, %ecx
    rdmsr
    movl %eax, entry_state + ST_EFER
    movl %edx, entry_state + ST_EFER + 4
    movl $PROTO_PVH, entry_state + ST_PROTOCOL

    /* Our own IDT, so that a fault in the checks below is caught and reported, not a triple
     * fault.  Gate: offset[15:0], selector, 0x8e00 (present 32-bit interrupt gate), offset[31:16];
     * written with overlapping stores so that no instruction changes EFLAGS. */
    movl $idt32, %edi
    movl $fault32_stubs, %eax
    movl $32, %ecx
1:  movl %eax, 4(%edi)
    movw %ax, (%edi)
    movw $SEL_CODE32, 2(%edi)
    movw $0x8e00, 4(%edi)
    leal 8(%eax), %eax
    leal 8(%edi), %edi
    loop 1b
    /* lgdt/lidt change only GDTR/IDTR: the hidden state of CS/DS/ES/SS/TR stays as given. */
    lgdtl probe_gdt_ptr
    lidtl idt32_ptr
    movl $checks_done, fixup32
    movl $stack_top, %esp
    pushfl
    popl entry_state + ST_EFLAGS

    /* CS base 0: the return address pushed by call is the offset in CS; we run at our link
     * address (paddr == link address, paging off), so offset == link address iff base == 0. */
    call pvh_call_site
    .globl pvh_call_site
pvh_call_site:
    popl %eax
    movl %eax, entry_state + ST_CALL_EIP

/* A check: an instruction that must not fault; on success set \bit in the checks word. */
.macro GUARD bit, insn:vararg
    movl $.Lguard\@, fixup32
    \insn
    orl $\bit, entry_state + ST_CHECKS
.Lguard\@:
.endm
/* A read-back check: \reg must equal PROBE_MAGIC after \insn. */
.macro MAGIC bit, insn:vararg
    movl $.Lmagic\@, fixup32
    \insn
    cmpl $PROBE_MAGIC, %eax
    jne .Lmagic\@
    orl $\bit, entry_state + ST_CHECKS
.Lmagic\@:
.endm

    /* CS first: a fault reloads CS from our GDT. A read through CS needs a readable segment. */
    GUARD CHK_CS_LOW, movl %cs:0, %eax
    GUARD CHK_CS_HIGH, movl %cs:0xfffffffc, %eax
    MAGIC CHK_DS_BASE, movl probe_magic, %eax
    GUARD CHK_DS_LOW, movl 0, %eax
    GUARD CHK_DS_HIGH, movl 0xfffffffc, %eax
    GUARD CHK_DS_WRITE, movl %eax, scratch32
    MAGIC CHK_ES_BASE, movl %es:probe_magic, %eax
    GUARD CHK_ES_LOW, movl %es:0, %eax
    GUARD CHK_ES_HIGH, movl %es:0xfffffffc, %eax
    GUARD CHK_ES_WRITE, movl %eax, %es:scratch32
    MAGIC CHK_SS_BASE, movl %ss:probe_magic, %eax
    GUARD CHK_SS_LOW, movl %ss:0, %eax
    GUARD CHK_SS_HIGH, movl %ss:0xfffffffc, %eax
    GUARD CHK_SS_WRITE, movl %eax, %ss:scratch32
    /* SS.B (32-bit stack): with a 16-bit stack the push would use SP, not ESP. */
    movl $0, stack_top - 4
    movl $ss_push_done, fixup32
    pushl $PROBE_MAGIC
    cmpl $PROBE_MAGIC, stack_top - 4
    jne ss_push_done
    orl $CHK_SS_32BIT, entry_state + ST_CHECKS
ss_push_done:
    movl $stack_top, %esp

    /* TR: read its descriptor from the GDT the host loaded (what lar/lsl would read, but lar/lsl
     * stop a CPL0 guest on kvm_pvm), when the selector is non-null, in the GDT and inside its
     * limit.  Then load a copy into our GDT with ltr: ltr faults (#GP) on a busy TSS. */
    movzwl entry_state + ST_TR, %eax
    testl $0xfff8, %eax
    jz checks_done
    testl $4, %eax                      /* TI: in an LDT, not the GDT */
    jnz checks_done
    movl %eax, %edx
    orl $7, %edx
    cmpw entry_state + ST_GDTR, %dx     /* last byte of the descriptor within the GDT limit */
    ja checks_done
    andl $0xfff8, %eax
    addl entry_state + ST_GDTR + 2, %eax
    movl $checks_done, fixup32
    movl (%eax), %edx
    movl 4(%eax), %ecx
    movl %edx, entry_state + ST_TRDESC
    movl %ecx, entry_state + ST_TRDESC + 4
    movl $1, entry_state + ST_TRDESC_OK
    movl %edx, probe_gdt + SEL_TRCOPY
    movl %ecx, probe_gdt + SEL_TRCOPY + 4
    movl $2, entry_state + ST_LTR
    movl $ltr_done, fixup32
    movw $SEL_TRCOPY, %ax
    ltr %ax
    movl $1, entry_state + ST_LTR
ltr_done:
checks_done:
    movl $unexpected32, fixup32

    /* From here on: our own segments, as Linux's PVH head does (lgdt, reload). */
    ljmpl $SEL_CODE32, $1f
1:  movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movl $stack_top, %esp

    /* Long mode: PAE, CR3, EFER.LME, then paging (arch/x86/platform/pvh/head.S). */
    movl %cr4, %eax
    orl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $pml4, %eax
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
    cmpl $0, entry_state + ST_UNEXPECTED
    jne 2f
    movl last_vector32, %eax
    incl %eax
    movl %eax, entry_state + ST_UNEXPECTED
    jmp checks_done
2:  cli
    hlt
    jmp 2b

fault32_common:
    popl last_vector32                  /* the stub's vector; an error code may lie below */
    incl entry_state + ST_FAULTS
    movl $stack_top, %esp
    jmp *fixup32

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
 * slot only that AP writes (no lock needed), counts itself with a locked increment and halts. */
    .code16
    .globl ap_tramp_start, ap_tramp_end
ap_tramp_start:
    cli
    movw %cs, %ax
    movw %ax, %ds
    lgdtl ap_tramp_gdt_ptr - ap_tramp_start
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $SEL_CODE32, $ap_entry32
    .balign 4
ap_tramp_gdt_ptr:
    .word probe_gdt_end - probe_gdt - 1
    .long probe_gdt
ap_tramp_end:

    .code32
ap_entry32:
    movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl $1, %eax
    cpuid
    shrl $24, %ebx
    movl lapic_base, %esi
    movl 0x20(%esi), %eax               /* local APIC ID register (xAPIC: id in bits 31:24) */
    shrl $24, %eax
    orl $0x100, %eax                    /* "present" */
    movw %ax, ap_slots(, %ebx, 2)
    lock incl ap_count
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
    .set page, 0
    .rept 2048
    .quad (page << 21) | 0x83           /* present, writable, 2 MiB page */
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
    .globl fixup64, last_vector64, entry_state, ap_slots, ap_count
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
entry_state:
    .skip ST_SIZE
ap_slots:
    .skip 256 * 2
