/*
 * bench/guests/uart_flood.S -- console-throughput guest for bench 4 (bench/console.py).
 *
 * A PVH guest (Xen docs/misc/pvh.pandoc: entered in flat 32-bit protected mode, paging off, at the
 * address in the XEN_ELFNOTE_PHYS32_ENTRY note) that writes NBYTES bytes to COM1 the way Linux's
 * 8250 driver transmits (drivers/tty/serial/8250/8250_port.c, serial8250_tx_chars): wait until LSR
 * says the transmit holding register is empty (LSR.THRE, bit 5), then write up to the FIFO size
 * (16 bytes for a 16550A) to THR, one `outb` each.  Then it leaves through the debug-exit port 0xf4
 * (pvhboot's DebugExit; QEMU's isa-debug-exit,iobase=0xf4,iosize=4).
 *
 * The text is a 64-byte line repeated ("pvhboot bench ... \n"), so consoles see ordinary lines.
 * NBYTES (a multiple of 16) comes from `as --defsym NBYTES=...`.  CPL0 guest code runs through
 * KVM's instruction emulator on kvm_pvm (platform.md), so the inner loop is unrolled: two
 * instructions (lodsb; outb) per byte, as for both VMMs.
 */
#define COM1        0x3f8
#define UART_LSR    5
#define LSR_THRE    0x20
#define FIFO_SIZE   16
#define DEBUG_EXIT  0xf4
#define XEN_ELFNOTE_PHYS32_ENTRY 18

    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" (xen/include/public/elfnote.h) */
    .long 4                     /* descsz */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long pvh_start32

    .text
    .code32
    .globl pvh_start32
pvh_start32:
    cld
    mov     $NBYTES, %ecx
    xor     %edi, %edi          /* offset of the next chunk in the 64-byte line */
    test    %ecx, %ecx
    jz      done
chunk:
    mov     $(COM1 + UART_LSR), %dx
1:  inb     %dx, %al            /* wait for THRE, as serial8250_tx_chars' caller does */
    test    $LSR_THRE, %al
    jz      1b
    mov     $COM1, %dx
    lea     line(%edi), %esi
    .rept FIFO_SIZE
    lodsb
    outb    %al, %dx
    .endr
    add     $FIFO_SIZE, %edi
    and     $63, %edi
    sub     $FIFO_SIZE, %ecx
    jnz     chunk
done:
    xor     %eax, %eax
    outl    %eax, $DEBUG_EXIT    /* pvhboot: exit status 0; QEMU isa-debug-exit: status 1 */
2:  hlt
    jmp     2b

    .section .rodata
    .balign 64
line:
    .ascii "pvhboot bench: console throughput, 64-byte lines, 0123456789abc\n"
