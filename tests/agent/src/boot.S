# kiln test agent: the ring-0 part, in hand-written assembly.
#
# It is pulled into the Rust crate with global_asm!(..., options(att_syntax))
# (AT&T syntax like tests/payload/payload.S). global_asm! treats the text as
# a format string, so this file must not contain curly braces. It is the ONLY code that runs
# at ring 0: on a nested "kvm_pvm" host every ring-0 instruction is
# emulated (~240 ns each, ~1,900x slower than native), and the emulator
# rejects most SIMD, so no compiler-generated code may ever run here. All
# tables that can be built at assembly/link time are (page tables, GDT,
# TSS with its I/O bitmap); only what needs an address split into bit
# fields (the TSS descriptor base and the IDT gates) is filled in at run
# time, with a few dozen instructions.
#
# Boot protocol (PVH): kiln finds the XEN_ELFNOTE_PHYS32_ENTRY note below
# and starts us at pvh_start32 in 32-bit protected mode, paging off, flat
# CS/DS/ES/SS, interrupts off, %ebx = physical address of hvm_start_info.
#
# What we do, in order:
#   1. load our GDT, point CR3 at the static identity map, enable PAE,
#      SSE (CR4.OSFXSR|OSXMMEXCPT, CR0.MP, CR0.EM clear), long mode, paging;
#   2. far jump into 64-bit code, load data segments, the TSS and the IDT;
#   3. mask the legacy PIC, then iretq to ring 3 at ring3_entry with
#      %rdi = hvm_start_info and IF=1, which calls the Rust function
#      agent_start(start_info) (src/main.rs).
# Ring 3 runs with interrupts enabled (IF=1 in the RFLAGS that iretq
# loads: ring 3 cannot execute STI with IOPL 0, and a kvm_pvm host runs
# ring 3 with IF=1 anyway), but every source starts masked: the PIC here,
# the IOAPIC's redirection entries and the LAPIC's LVT entries from reset.
# The agent polls its devices; only the `irq` check (src/irq.rs) unmasks
# one IOAPIC pin towards IRQ_VECTOR, whose handler below counts the
# interrupt in agent_irq_count and signals end-of-interrupt to the LAPIC.
# Any CPU exception lands in isr_common, which prints
#   AGENT: fault vector=0xVV error=0x... rip=0x... cs=0x.. rsp=0x... cr2=0x...
# on COM1 and resets the machine (i8042 port 0x64 <- 0xfe).

# ---- constants -----------------------------------------------------------
.set KERNEL_CS,     0x08            # GDT[1]: ring-0 64-bit code
.set KERNEL_DS,     0x10            # GDT[2]: ring-0 data
.set USER_DS,       0x18 | 3        # GDT[3]: ring-3 data, RPL 3
.set USER_CS,       0x20 | 3        # GDT[4]: ring-3 64-bit code, RPL 3
.set TSS_SEL,       0x28            # GDT[5..6]: the 64-bit TSS (16 bytes)

.set CR0_PE,        1 << 0          # protected mode
.set CR0_MP,        1 << 1          # monitor coprocessor (FWAIT honours TS)
.set CR0_EM,        1 << 2          # x87 emulation: must be 0 for SSE
.set CR0_TS,        1 << 3          # task switched: 0, or SSE traps (#NM)
.set CR0_NE,        1 << 5          # native x87 error reporting
.set CR0_PG,        1 << 31         # paging
.set CR4_PAE,       1 << 5          # 64-bit page table entries (long mode needs it)
.set CR4_OSFXSR,    1 << 9          # OS saves SSE state with FXSAVE: SSE allowed
.set CR4_OSXMMEXCPT, 1 << 10        # SIMD FP exceptions raise #XM, not #UD
.set MSR_EFER,      0xc0000080
.set EFER_LME,      1 << 8          # long mode enable

.set PTE_P,         1 << 0          # present
.set PTE_RW,        1 << 1          # writable
.set PTE_US,        1 << 2          # user (ring 3) may access it
.set PTE_PWT,       1 << 3          # write-through  (PWT+PCD: uncached,
.set PTE_PCD,       1 << 4          # cache disable   for device memory)
.set PTE_PS,        1 << 7          # in a page directory: a 2 MiB page
.set PTE_TABLE,     PTE_P | PTE_RW | PTE_US               # points to a table
.set PTE_RAM,       PTE_P | PTE_RW | PTE_US | PTE_PS      # 2 MiB of RAM
.set PTE_MMIO,      PTE_RAM | PTE_PWT | PTE_PCD           # 2 MiB of devices

.set COM1,          0x3f8           # 8250/16550 UART data register (THR)
.set COM1_LSR,      COM1 + 5        # line status register
.set LSR_THRE,      0x20            # transmit holding register empty
.set I8042_CMD,     0x64            # i8042 command port
.set I8042_RESET,   0xfe            # "pulse reset line": kiln exits 0

.set NUM_EXCEPTIONS, 32             # CPU exceptions 0-31: stubs below
.set IRQ_VECTOR,    0x30            # the `irq` check's interrupts (src/irq.rs)
.set SPURIOUS_VECTOR, 0x3f          # the LAPIC's spurious vector (src/irq.rs)
.set NUM_VECTORS,   0x40            # IDT entries; 32-0x3f are absent but these two
.set LAPIC_EOI,     0xfee000b0      # LAPIC end-of-interrupt register
.set PIC1_DATA,     0x21            # 8259 interrupt mask registers (OCW1)
.set PIC2_DATA,     0xa1
.set ISR_STUB_SIZE, 16              # every stub below is padded to 16 bytes
.set USER_STACK_SIZE, 0x100000      # 1 MiB for all the Rust code (virtio-drivers' queues live on it)
.set KERNEL_STACK_SIZE, 0x1000      # only the fault handler uses it

# ---- the PVH entry note ---------------------------------------------------
# An ELF note: namesz, descsz, type, then the name and the descriptor, each
# padded to 4 bytes. Type 18 = XEN_ELFNOTE_PHYS32_ENTRY, desc = the 32-bit
# physical address of the entry point. agent.ld puts .note.Xen into the
# (only) PT_NOTE program header, where kiln's loader looks for it.
.pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                         # namesz: "Xen\0"
    .long 4                         # descsz: a 4-byte address
    .long 18                        # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .long pvh_start32
.popsection

# ==========================================================================
.pushsection .text.boot, "ax"

# ---- 32-bit entry (PVH) ---------------------------------------------------
    .code32
    .globl pvh_start32
pvh_start32:
    cld
    movl    %ebx, %esi              # keep hvm_start_info for ring 3
    lgdt    gdt_ptr                 # our GDT (flat; selectors as above)

    movl    $pml4, %eax             # identity map of the first 4 GiB
    movl    %eax, %cr3

    movl    %cr4, %eax
    orl     $(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
    movl    %eax, %cr4

    movl    $MSR_EFER, %ecx         # EFER.LME: long mode once paging is on
    rdmsr
    orl     $EFER_LME, %eax
    wrmsr

    movl    %cr0, %eax
    andl    $~(CR0_EM | CR0_TS), %eax
    orl     $(CR0_PE | CR0_MP | CR0_NE | CR0_PG), %eax
    movl    %eax, %cr0              # paging on: we are in compatibility mode

    ljmp    $KERNEL_CS, $start64    # load a 64-bit CS: long mode proper

# ---- 64-bit, still ring 0 -------------------------------------------------
    .code64
start64:
    movl    $KERNEL_DS, %eax
    movl    %eax, %ds
    movl    %eax, %es
    movl    %eax, %ss
    xorl    %eax, %eax
    movl    %eax, %fs
    movl    %eax, %gs
    movq    $kernel_stack_top, %rsp

    # TSS descriptor: scatter the TSS address into base 15:0, 23:16 and
    # 31:24 (limit, type and the upper base half are static). Then load TR.
    movl    $tss, %eax
    movw    %ax, gdt_tss + 2
    shrl    $16, %eax
    movb    %al, gdt_tss + 4
    movb    %ah, gdt_tss + 7
    movw    $TSS_SEL, %ax
    ltr     %ax

    # IDT: one 16-byte interrupt gate per exception vector, pointing at the
    # stubs below (isr_stubs + 16 * vector), and one each for IRQ_VECTOR
    # and SPURIOUS_VECTOR. The table is in .bss (zeroed), so offset 63:32
    # (we live below 4 GiB) and the reserved dword stay 0, and the other
    # vectors are not present (#NP: reported as a fault).
    movl    $isr_stubs, %eax
    movl    $idt, %edi
    movl    $NUM_EXCEPTIONS, %ecx
1:  call    set_gate
    addl    $ISR_STUB_SIZE, %eax
    addq    $16, %rdi
    decl    %ecx
    jnz     1b
    movl    $irq_handler, %eax
    movl    $idt + IRQ_VECTOR * 16, %edi
    call    set_gate
    movl    $spurious_handler, %eax
    movl    $idt + SPURIOUS_VECTOR * 16, %edi
    call    set_gate
    lidt    idt_ptr

    # Mask every line of both 8259 PICs (OCW1). KVM's in-kernel PIC starts
    # unmasked with vector base 0, and a BSP's LAPIC accepts its ExtINT
    # from reset: a virtio device's interrupt would arrive as vector 5+i.
    movb    $0xff, %al
    outb    %al, $PIC1_DATA
    outb    %al, $PIC2_DATA

    # Drop to ring 3: iretq pops RIP, CS, RFLAGS, RSP, SS. CS/SS with RPL 3
    # select the DPL-3 descriptors; RFLAGS = 0x202 (IF and the reserved
    # bit) enables interrupts and keeps IOPL=0, so ring 3 reaches only the
    # ports the TSS bitmap allows.
    movl    %esi, %edi              # 1st argument of agent_start
    pushq   $USER_DS                # SS
    pushq   $user_stack_top         # RSP
    pushq   $0x202                  # RFLAGS
    pushq   $USER_CS                # CS
    pushq   $ring3_entry            # RIP
    iretq

# set_gate: an interrupt gate to the handler at %eax in the IDT entry at
# %rdi. Clobbers %edx.
set_gate:
    movw    %ax, (%rdi)             # offset 15:0
    movw    $KERNEL_CS, 2(%rdi)     # code segment of the handler
    movw    $0x8e00, 4(%rdi)        # P=1 DPL=0 type=0xE (interrupt gate), IST 0
    movl    %eax, %edx
    shrl    $16, %edx
    movw    %dx, 6(%rdi)            # offset 31:16
    ret

# ---- first instructions at ring 3 ------------------------------------------
# A call (not a jump) so that agent_start sees the stack alignment the ABI
# promises (RSP+8 a multiple of 16) and a return address to stop
# backtraces. agent_start never returns; ud2 would fault if it did.
ring3_entry:
    xorl    %ebp, %ebp
    call    agent_start
    ud2

# ---- exception handlers (ring 0) ------------------------------------------
# One 16-byte stub per vector: push a dummy error code where the CPU pushes
# none, push the vector number, jump to the common code. Vectors 8, 10-14,
# 17, 21, 29 and 30 come with an error code from the CPU.
    .balign ISR_STUB_SIZE
isr_stubs:
.irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign ISR_STUB_SIZE
    .if (\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    pushq   $0                      # no CPU error code: push a zero instead
    .endif
    pushq   $\vec
    jmp     isr_common
.endr

# ---- interrupt handlers (ring 0) --------------------------------------------
# IRQ_VECTOR: count the interrupt and signal end-of-interrupt to the LAPIC
# (any write to its EOI register). The counter is read at ring 3 by
# src/irq.rs. Interrupt gates clear IF, so nothing nests.
    .globl agent_irq_count
irq_handler:
    incq    agent_irq_count
    pushq   %rax
    movl    $LAPIC_EOI, %eax        # zero-extended: 0x00000000fee000b0
    movl    $0, (%rax)
    popq    %rax
    iretq

# SPURIOUS_VECTOR: the LAPIC sends it without setting an in-service bit,
# so no EOI.
spurious_handler:
    iretq

# Stack at entry: vector, error code, then the CPU's frame RIP, CS, RFLAGS,
# RSP, SS. A fault at ring 3 switched to TSS.RSP0 (kernel_stack_top).
isr_common:
    movq    %rsp, %rbp
    movq    $msg_vector, %rsi
    movq    0(%rbp), %rbx
    movl    $2, %ecx
    call    print_field
    movq    $msg_error, %rsi
    movq    8(%rbp), %rbx
    movl    $8, %ecx
    call    print_field
    movq    $msg_rip, %rsi
    movq    16(%rbp), %rbx
    movl    $16, %ecx
    call    print_field
    movq    $msg_cs, %rsi
    movq    24(%rbp), %rbx
    movl    $2, %ecx
    call    print_field
    movq    $msg_rsp, %rsi
    movq    40(%rbp), %rbx
    movl    $16, %ecx
    call    print_field
    movq    $msg_cr2, %rsi
    movq    %cr2, %rbx
    movl    $16, %ecx
    call    print_field
    movb    $10, %al                # '\n'
    call    putc
    movb    $I8042_RESET, %al       # reset: kiln stops the VM and exits 0
    outb    %al, $I8042_CMD
2:  hlt                             # not reached on kiln
    jmp     2b

# print_field: the NUL-terminated string at %rsi, then the low %ecx hex
# digits of %rbx. Clobbers %rax, %rcx, %rsi.
print_field:
1:  lodsb
    testb   %al, %al
    jz      2f
    call    putc
    jmp     1b
2:  decl    %ecx
    movq    %rbx, %rax
    shlb    $2, %cl                 # bit position = digit * 4 (< 64)
    shrq    %cl, %rax
    shrb    $2, %cl
    andl    $0xf, %eax
    movb    hex_digits(%rax), %al
    call    putc
    testl   %ecx, %ecx
    jnz     2b
    ret

# putc: write %al to COM1 once the transmitter is ready. Keeps other registers.
putc:
    pushq   %rdx
    pushq   %rax
    movw    $COM1_LSR, %dx
1:  inb     %dx, %al
    testb   $LSR_THRE, %al
    jz      1b
    popq    %rax
    movw    $COM1, %dx
    outb    %al, %dx
    popq    %rdx
    ret

.popsection

# ---- read-only strings ------------------------------------------------------
.pushsection .rodata.boot, "a"
msg_vector: .asciz "\nAGENT: fault vector=0x"
msg_error:  .asciz " error=0x"
msg_rip:    .asciz " rip=0x"
msg_cs:     .asciz " cs=0x"
msg_rsp:    .asciz " rsp=0x"
msg_cr2:    .asciz " cr2=0x"
hex_digits: .ascii "0123456789abcdef"
.popsection

# ==========================================================================
# Tables built at assembly time. They live in .data (not .rodata): the CPU
# writes the accessed/dirty bits of page table entries and the busy bit of
# the TSS descriptor.
.pushsection .data.boot, "aw"

# ---- identity map of the first 4 GiB, 2 MiB pages, all user-accessible ----
# PML4[0] -> PDPT; PDPT[0..3] -> four page directories of 512 entries each.
# RAM (0-3 GiB) is cached; 3-4 GiB (boot timer, virtio-mmio, APICs...) is
# uncached. Everything has U/S set because the Rust code runs at ring 3.
    .balign 4096
pml4:
    .quad pdpt + PTE_TABLE
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0000 + PTE_TABLE
    .quad pd + 0x1000 + PTE_TABLE
    .quad pd + 0x2000 + PTE_TABLE
    .quad pd + 0x3000 + PTE_TABLE
    .fill 508, 8, 0
pd:
    .set page, 0
    .rept 3 * 512                   # 0 - 3 GiB: RAM
    .quad page | PTE_RAM
    .set page, page + 0x200000
    .endr
    .rept 512                       # 3 - 4 GiB: devices
    .quad page | PTE_MMIO
    .set page, page + 0x200000
    .endr

# ---- GDT ------------------------------------------------------------------
    .balign 16
gdt:
    .quad 0                         # 0x00: the null descriptor
    .quad 0x00af9a000000ffff        # 0x08: ring-0 code, 64-bit (L=1), DPL 0
    .quad 0x00cf92000000ffff        # 0x10: ring-0 data, flat
    .quad 0x00cff2000000ffff        # 0x18: ring-3 data, flat, DPL 3
    .quad 0x00affa000000ffff        # 0x20: ring-3 code, 64-bit, DPL 3
gdt_tss:                            # 0x28: 64-bit TSS descriptor, 16 bytes
    .word tss_end - tss - 1         # limit 15:0 (covers the whole I/O bitmap)
    .word 0                         # base 15:0   (filled in by start64)
    .byte 0                         # base 23:16  (filled in by start64)
    .byte 0x89                      # present, DPL 0, type 9: available 64-bit TSS
    .byte 0                         # limit 19:16, flags
    .byte 0                         # base 31:24  (filled in by start64)
    .long 0                         # base 63:32
    .long 0                         # reserved
gdt_end:

# Operand of lgdt/lidt: 16-bit limit, then the base (32-bit mode reads the
# low 4 bytes of it, 64-bit mode all 8).
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
idt_ptr:
    .word NUM_VECTORS * 16 - 1
    .quad idt

# ---- TSS --------------------------------------------------------------------
# In long mode the TSS only holds stack pointers and the I/O permission
# bitmap. RSP0 is the stack the CPU switches to on a fault at ring 3.
    .balign 16
tss:
    .long 0                         # reserved
    .quad kernel_stack_top          # RSP0
    .quad 0, 0                      # RSP1, RSP2
    .quad 0                         # reserved
    .quad 0, 0, 0, 0, 0, 0, 0       # IST1-7 (unused)
    .quad 0                         # reserved
    .word 0                         # reserved
    .word iobitmap - tss            # where the I/O permission bitmap starts
# One bit per port, 1 = denied at CPL > IOPL (IOPL is 0, and a kvm_pvm host
# strips it anyway). Allowed: 0x60-0x64 (i8042), 0xf4 (QEMU's debug exit,
# unclaimed on kiln) and 0x3f8-0x3ff (COM1).
iobitmap:
    .fill 0x60 / 8, 1, 0xff                 # ports 0x000-0x05f: denied
    .byte 0xe0                              # 0x060-0x064 allowed, 0x065-0x067 denied
    .fill 0xf0 / 8 - 0x68 / 8, 1, 0xff      # ports 0x068-0x0ef: denied
    .byte 0xef                              # 0x0f4 allowed, 0x0f0-0x0f7 else denied
    .fill 0x3f8 / 8 - 0xf8 / 8, 1, 0xff     # ports 0x0f8-0x3f7: denied
    .byte 0x00                              # 0x3f8-0x3ff allowed
    .fill 0x10000 / 8 - 0x400 / 8, 1, 0xff  # ports 0x400-0xffff: denied
    .byte 0xff                      # the CPU may read one byte past the map
tss_end:
.popsection

# ---- zero-filled memory -----------------------------------------------------
.pushsection .bss.boot, "aw", @nobits
    .balign 4096
idt:
    .skip NUM_VECTORS * 16
    .balign 8
agent_irq_count:                    # interrupts seen at IRQ_VECTOR
    .skip 8
    .balign 16
kernel_stack:
    .skip KERNEL_STACK_SIZE
kernel_stack_top:
    .balign 4096
user_stack:                         # no guard page: keep recursion shallow
    .skip USER_STACK_SIZE
user_stack_top:
.popsection

# Leave the assembler as the compiler expects to find it.
    .code64
    .text
