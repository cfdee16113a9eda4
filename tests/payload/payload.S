/*
 * kiln test payload: a tiny bare-metal x86-64 "kernel" for kiln's
 * integration tests (GNU as, AT&T syntax, run through the C preprocessor).
 *
 * How it is booted (the Linux 64-bit boot protocol, without a PVH note):
 * kiln loads the PT_LOAD segments at their physical addresses (we are linked
 * at 1 MiB, see payload.ld) and jumps to _start in 64-bit long mode, ring 0,
 * interrupts off, with the first 4 GiB identity mapped and
 *   %rsi = guest-physical address of the Linux boot_params ("zero page").
 * The kernel command line is a NUL-terminated string whose 32-bit address
 * is at boot_params + 0x228 (cmd_line_ptr).
 *
 * The payload looks for "payload=MODE" on the command line (default: hello),
 * prints "kiln-payload: mode=MODE" on COM1 and then does what MODE says (see
 * the mode table near the end of the file). Every line ends in "\n" only.
 *
 * Everything here runs at ring 0, where a nested "kvm_pvm" host emulates
 * each instruction in software (about 240 ns apiece), so the code is short
 * and does no busy work beyond polling the UART.
 */

/* ---- the devices kiln provides ---------------------------------------- */
#define COM1            0x3f8           /* 8250 UART */
#define COM1_LSR        (COM1 + 5)      /* line status register */
#define LSR_DATA_READY  0x01            /* a received byte is waiting in RBR */
#define LSR_THR_EMPTY   0x20            /* we may write the next byte to THR */
#define I8042_CMD       0x64            /* i8042 command port */
#define I8042_RESET     0xfe            /* "pulse the reset line": kiln exits 0 */
#define BOOT_TIMER      0xc0000000      /* MMIO: write 123 to record boot time */
#define PVPANIC_PORT    0x505           /* pvpanic: write 1 = panicked */
#define UNASSIGNED_PORT 0x510           /* no device behind it in kiln */
#define UNASSIGNED_MMIO 0xd0000000      /* first virtio-mmio slot, left empty */
#define ACPI_RSDP       0xe0000         /* where kiln puts the ACPI root pointer */
#define ACPI_SLEEP_CTL  0x600           /* FADT sleep-control register (port) */
#define ACPI_S5_SLEEP   0x34            /* SLP_TYP 5 (\_S5) << 2 | SLP_EN */

#define BP_CMD_LINE_PTR 0x228           /* boot_params.hdr.cmd_line_ptr (u32) */
#define IDT_VECTORS     64              /* the exceptions and TIMER_VECTOR */

/* ---- CPU bits the tests look at --------------------------------------- */
#define CPUID1_ECX_CX16    13           /* CMPXCHG16B */
#define CPUID1_ECX_POPCNT  23
#define CPUID1_ECX_XSAVE   26
#define CPUID1_ECX_OSXSAVE 27           /* mirrors CR4.OSXSAVE */
#define CPUID7_EBX_SMAP    20           /* CLAC/STAC exist */
#define CR4_OSXSAVE     (1 << 18)
#define RFLAGS_AC       (1 << 18)
#define RFLAGS_ZF       0x40
/* CF|PF|AF|ZF|SF|OF: the six status flags POPCNT and CMPXCHG16B write */
#define STATUS_FLAGS    0x8d5
#define MSR_GS_BASE     0xc0000101
#define CPUID1_ECX_X2APIC       21
#define CPUID1_ECX_TSC_DEADLINE 24
#define MSR_APIC_BASE   0x1b
#define APIC_BASE_X2APIC 0xc00          /* global enable | x2APIC mode */
#define MSR_X2APIC_EOI  0x80b
#define MSR_X2APIC_SVR  0x80f
#define MSR_X2APIC_LVTT 0x832
#define MSR_TSC_DEADLINE 0x6e0
#define TIMER_VECTOR    0x30
#define LVTT_TSC_DEADLINE (2 << 17)
#define COUNT_PERIOD    200000000       /* TSC cycles between counts (~0.1 s) */

/* Test results, returned in %eax by every insn_* routine. */
#define OK      0
#define FAIL    1
#define SKIPPED 2

/* Set the six status flags to 1 (bit 1 of RFLAGS is reserved and must be
 * 1; IF and TF stay 0), so we can see which ones an instruction clears. */
.macro set_status_flags
        pushq   $(STATUS_FLAGS | 2)
        popfq
.endm

/* %edx = the six status flags as the last instruction left them. */
.macro get_status_flags
        pushfq
        popq    %rdx
        andl    $STATUS_FLAGS, %edx
.endm

/* Jump to \label unless CPUID leaf 1 reports feature bit \bit in ECX.
 * Clobbers %eax, %ebx, %ecx, %edx. */
.macro need_cpuid1_ecx bit, label
        movl    $1, %eax
        cpuid
        btl     $\bit, %ecx
        jnc     \label
.endm

/* ======================================================================= */
        .section .text.entry, "ax"
        .code64
        .globl  _start
_start:
        cli
        cld
        /* Switch to our own stack (in .bss) and remember boot_params. */
        leaq    stack_top(%rip), %rsp
        movq    %rsi, boot_params(%rip)

        /* Find "payload=MODE"; %rsi/%rcx = the MODE token and its length. */
        call    find_mode
        movq    %rsi, mode_ptr(%rip)
        movq    %rcx, mode_len(%rip)

        /* "kiln-payload: mode=MODE\n" */
        leaq    s_mode(%rip), %rsi
        call    puts
        movq    mode_ptr(%rip), %rsi
        movq    mode_len(%rip), %rcx
        call    putn
        movb    $'\n', %al
        call    putc

        /* Look the token up in mode_table: pairs of (name, handler). */
        leaq    mode_table(%rip), %rbx
1:      movq    (%rbx), %rdi            /* name, or 0 at the end */
        testq   %rdi, %rdi
        jz      mode_unknown
        movq    mode_ptr(%rip), %rsi
        movq    mode_len(%rip), %rcx
        call    token_equals            /* ZF=1 if equal */
        je      2f
        addq    $16, %rbx
        jmp     1b
2:      jmpq    *8(%rbx)

/* ---- the modes ---------------------------------------------------------- */

/* hello: greet, poke the boot timer, say done, reset. */
mode_hello:
        leaq    s_hello(%rip), %rsi
        call    puts
        movl    $BOOT_TIMER, %eax       /* zero-extended: 0x00000000c0000000 */
        movb    $123, (%rax)            /* one MMIO write: the boot-timer mark */
        leaq    s_done(%rip), %rsi
        call    puts
        jmp     reset

/* echo: copy UART input to UART output until a 'q' arrives ('q' itself
 * is not echoed), then "\nkiln-payload: echo done\n" and reset. */
mode_echo:
        call    getc
        cmpb    $'q', %al
        je      1f
        call    putc
        jmp     mode_echo
1:      leaq    s_echo_done(%rip), %rsi
        call    puts
        jmp     reset

/* halt: what Linux does on "poweroff" without ACPI. */
mode_halt:
        leaq    s_halt(%rip), %rsi
        call    puts
1:      cli
        hlt
        jmp     1b

/* triple: #UD with no usable IDT -> #GP -> double fault -> triple fault.
 * We load an empty IDT ourselves rather than trust the boot state. */
mode_triple:
        leaq    s_triple(%rip), %rsi
        call    puts
        lidt    empty_idtr(%rip)
        ud2
        jmp     reset                   /* not reached */

/* spin: loop forever with nothing to exit on (SIGTERM / timeout tests). */
mode_spin:
        leaq    s_spin(%rip), %rsi
        call    puts
1:      jmp     1b

/* pvpanic: report a kernel panic the way Linux's pvpanic driver does
 * (write "panicked" to port 0x505), then spin as a panicked kernel would. */
mode_pvpanic:
        leaq    s_pvpanic(%rip), %rsi
        call    puts
        movw    $PVPANIC_PORT, %dx
        movb    $1, %al
        outb    %al, %dx
1:      jmp     1b

/* flood: print a line forever (a console nobody reads any more). */
mode_flood:
        leaq    s_flood(%rip), %rsi
        call    puts
        jmp     mode_flood

/* exits: 100000 reads of a port nothing answers, then reset: the cost of
 * an exit round trip (KVM_RUN returns, kiln dispatches, KVM_RUN again),
 * for resources/bench-trace.sh. */
mode_exits:
        leaq    s_exits(%rip), %rsi
        call    puts
        movl    $100000, %ecx
        movw    $UNASSIGNED_PORT, %dx
1:      inb     %dx, %al
        decl    %ecx
        jnz     1b
        leaq    s_done(%rip), %rsi
        call    puts
        jmp     reset

/* badport: I/O to a port and MMIO to an address with no device behind
 * them; kiln must ignore writes, return something for reads, and go on. */
mode_badport:
        leaq    s_badport(%rip), %rsi
        call    puts
        movw    $UNASSIGNED_PORT, %dx
        movb    $0x42, %al
        outb    %al, %dx
        inb     %dx, %al
        movl    $UNASSIGNED_MMIO, %edi  /* zero-extended to 64 bits */
        movb    $0x42, (%rdi)           /* MMIO write */
        movb    (%rdi), %al             /* MMIO read */
        leaq    s_survived(%rip), %rsi
        call    puts
        jmp     reset

/* acpi: say whether kiln wrote an ACPI root pointer ("acpi rsdp=yes" or
 * "=no"), then power off through the FADT's sleep-control register the
 * way Linux does (S5); should kiln not stop, halt with interrupts off. */
mode_acpi:
        leaq    s_acpi_rsdp(%rip), %rsi
        call    puts
        leaq    s_no(%rip), %rsi
        movl    $ACPI_RSDP, %edi
        movabsq $0x2052545020445352, %rax /* "RSD PTR " */
        cmpq    %rax, (%rdi)
        jne     1f
        leaq    s_yes(%rip), %rsi
1:      call    puts
        movw    $ACPI_SLEEP_CTL, %dx
        movb    $ACPI_S5_SLEEP, %al
        outb    %al, %dx
2:      cli
        hlt
        jmp     2b

mode_unknown:
        leaq    s_unknown(%rip), %rsi
        call    puts
        /* fall through */

/* Ask the i8042 to reset the machine; kiln then exits with status 0. */
reset:
        movb    $I8042_RESET, %al
        outb    %al, $I8042_CMD
1:      cli                             /* should not get here */
        hlt
        jmp     1b

/* timer: arm the local APIC's TSC-deadline timer 1,000 TSC cycles ahead,
 * wait for its interrupt with HLT and report how many cycles it took
 * ("timer fired after N cycles"), then reset. kiln's pacing on kvm_pvm
 * hosts must make that at least its minimum gap; elsewhere it is short.
 * Without x2APIC or the TSC-deadline timer: "timer skipped". */
mode_timer:
        leaq    s_timer(%rip), %rsi
        call    puts
        movl    $1, %eax
        cpuid
        btl     $CPUID1_ECX_X2APIC, %ecx
        jnc     1f
        btl     $CPUID1_ECX_TSC_DEADLINE, %ecx
        jnc     1f
        call    setup_idt
        movl    $TIMER_VECTOR, %edi
        leaq    irq_timer(%rip), %rax
        call    set_gate
        call    setup_x2apic_timer
        rdtsc
        shlq    $32, %rdx
        orq     %rax, %rdx
        movq    %rdx, timer_armed(%rip)
        leaq    1000(%rdx), %rax
        movq    %rax, %rdx
        shrq    $32, %rdx
        movl    $MSR_TSC_DEADLINE, %ecx
        wrmsr
2:      cli                             /* sti;hlt: no wake-up is lost */
        cmpq    $0, timer_fired(%rip)
        jne     3f
        sti
        hlt
        jmp     2b
3:      leaq    s_timer_fired(%rip), %rsi
        call    puts
        movq    timer_fired(%rip), %rax
        subq    timer_armed(%rip), %rax
        call    putu
        leaq    s_cycles(%rip), %rsi
        call    puts
        jmp     reset
1:      leaq    s_timer_skipped(%rip), %rsi
        call    puts
        jmp     reset

/* count: count TSC-deadline timer interrupts in memory, one every
 * COUNT_PERIOD cycles (~0.1 s), and print "kiln-payload: count N" for each,
 * forever. A snapshot taken mid-run and restored in a new kiln continues
 * the sequence: registers, memory, the local APIC's timer, the interrupt
 * controllers and the UART all came through. */
mode_count:
        call    setup_idt
        movl    $TIMER_VECTOR, %edi
        leaq    irq_count(%rip), %rax
        call    set_gate
        call    setup_x2apic_timer
        call    arm_count_timer
1:      cli                             /* sti;hlt: no wake-up is lost */
        movq    count(%rip), %rax
        cmpq    count_printed(%rip), %rax
        jne     2f
        sti
        hlt
        jmp     1b
2:      movq    %rax, count_printed(%rip)
        sti
        leaq    s_count(%rip), %rsi
        call    puts
        movq    count_printed(%rip), %rax
        call    putu
        movb    $'\n', %al
        call    putc
        jmp     1b

/* setup_x2apic_timer: x2APIC mode, software-enabled, the LAPIC timer in
 * TSC-deadline mode on TIMER_VECTOR. Clobbers %eax, %ecx, %edx. */
setup_x2apic_timer:
        movl    $MSR_APIC_BASE, %ecx
        rdmsr
        orl     $APIC_BASE_X2APIC, %eax
        wrmsr
        movl    $MSR_X2APIC_SVR, %ecx   /* software-enable, spurious 0xff */
        movl    $0x1ff, %eax
        xorl    %edx, %edx
        wrmsr
        movl    $MSR_X2APIC_LVTT, %ecx
        movl    $(TIMER_VECTOR | LVTT_TSC_DEADLINE), %eax
        wrmsr
        ret

/* arm_count_timer: TSC deadline = now + COUNT_PERIOD. Clobbers %eax,
 * %ecx, %edx. */
arm_count_timer:
        rdtsc
        shlq    $32, %rdx
        orq     %rdx, %rax
        addq    $COUNT_PERIOD, %rax
        movq    %rax, %rdx
        shrq    $32, %rdx
        movl    $MSR_TSC_DEADLINE, %ecx
        wrmsr
        ret

/* The count mode's timer interrupt: count, re-arm, end the interrupt. */
irq_count:
        pushq   %rax
        pushq   %rcx
        pushq   %rdx
        incq    count(%rip)
        call    arm_count_timer
        movl    $MSR_X2APIC_EOI, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        popq    %rdx
        popq    %rcx
        popq    %rax
        iretq

/* The timer interrupt: note the TSC, end the interrupt. */
irq_timer:
        pushq   %rax
        pushq   %rcx
        pushq   %rdx
        rdtsc
        shlq    $32, %rdx
        orq     %rdx, %rax
        movq    %rax, timer_fired(%rip)
        movl    $MSR_X2APIC_EOI, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        popq    %rdx
        popq    %rcx
        popq    %rax
        iretq

/* ---- serial I/O --------------------------------------------------------- */

/* putc: write the byte in %al to COM1. Clobbers %dx. */
putc:
        pushq   %rax
        movw    $COM1_LSR, %dx
1:      inb     %dx, %al                /* wait until THR is empty */
        testb   $LSR_THR_EMPTY, %al
        jz      1b
        popq    %rax
        movw    $COM1, %dx
        outb    %al, %dx
        ret

/* getc: wait for a byte from COM1 and return it in %al. Clobbers %dx. */
getc:
        movw    $COM1_LSR, %dx
1:      inb     %dx, %al
        testb   $LSR_DATA_READY, %al
        jz      1b
        movw    $COM1, %dx
        inb     %dx, %al
        ret

/* puts: write the NUL-terminated string at %rsi. Clobbers %rax, %rdx, %rsi. */
puts:
        movb    (%rsi), %al
        testb   %al, %al
        jz      1f
        call    putc
        incq    %rsi
        jmp     puts
1:      ret

/* putn: write %rcx bytes from %rsi. Clobbers %rax, %rcx, %rdx, %rsi. */
putn:
        testq   %rcx, %rcx
        jz      1f
        movb    (%rsi), %al
        call    putc
        incq    %rsi
        decq    %rcx
        jmp     putn
1:      ret

/* putu: write %rax in decimal. Clobbers %rax, %rcx, %rdx, %rsi, %rdi. */
putu:
        leaq    numbuf_end(%rip), %rsi
        movl    $10, %edi
1:      xorl    %edx, %edx
        divq    %rdi
        addb    $'0', %dl
        decq    %rsi
        movb    %dl, (%rsi)
        testq   %rax, %rax
        jnz     1b
        leaq    numbuf_end(%rip), %rcx
        subq    %rsi, %rcx
        jmp     putn                    /* tail call */

/* ---- command line ------------------------------------------------------- */

/* find_mode: return in %rsi/%rcx the start and length of MODE in the first
 * space-separated word "payload=MODE" of the command line, or the string
 * "hello" if there is none (or no command line at all). */
find_mode:
        movq    boot_params(%rip), %rsi
        movl    BP_CMD_LINE_PTR(%rsi), %esi     /* 32-bit pointer, zero-extended */
        testq   %rsi, %rsi
        jz      .Ldefault
.Lword:                                 /* skip spaces before a word */
        movb    (%rsi), %al
        cmpb    $' ', %al
        jne     1f
        incq    %rsi
        jmp     .Lword
1:      testb   %al, %al
        jz      .Ldefault               /* end of the command line */
        leaq    s_key(%rip), %rdi       /* does the word start with "payload="? */
        movq    %rsi, %r8
2:      movb    (%rdi), %al
        testb   %al, %al
        jz      .Lfound                 /* all of the key matched */
        cmpb    (%r8), %al
        jne     .Lskip
        incq    %rdi
        incq    %r8
        jmp     2b
.Lskip:                                 /* no: skip to the end of this word */
        movb    (%rsi), %al
        testb   %al, %al
        jz      .Ldefault
        cmpb    $' ', %al
        je      .Lword
        incq    %rsi
        jmp     .Lskip
.Lfound:                                /* MODE runs from %r8 to a space or NUL */
        movq    %r8, %rsi
        xorl    %ecx, %ecx
3:      movb    (%rsi,%rcx), %al
        testb   %al, %al
        jz      4f
        cmpb    $' ', %al
        je      4f
        incq    %rcx
        jmp     3b
4:      ret
.Ldefault:
        leaq    s_hello_mode(%rip), %rsi
        movl    $5, %ecx                /* strlen("hello") */
        ret

/* token_equals: ZF=1 if the %rcx bytes at %rsi equal the NUL-terminated
 * string at %rdi (same length, same bytes). Clobbers %rax, %rcx, %rsi, %rdi. */
token_equals:
        testq   %rcx, %rcx
        jz      1f
        movb    (%rdi), %al             /* name shorter, or a byte differs? */
        testb   %al, %al
        jz      2f
        cmpb    (%rsi), %al
        jne     2f
        incq    %rsi
        incq    %rdi
        decq    %rcx
        jmp     token_equals
1:      cmpb    $0, (%rdi)              /* token used up: name must end too */
        ret
2:      testq   %rsp, %rsp              /* ZF=0: %rsp is never 0 */
        ret

/* ======================================================================= */
/* insns: instructions that the kvm_pvm host's ring-0 emulator rejects and
 * kiln must emulate. Each check is an insn_* routine that runs the
 * instruction, checks its architectural result itself and returns OK, FAIL
 * or SKIPPED in %eax; run_test prints "kiln-payload: insn NAME <result>".
 * If the instruction faults (#UD or #GP), the exception handler abandons
 * the routine and the line reads "insn NAME FAIL (#UD)" or "(#GP)". */

/* RUN name, routine */
.macro RUN name, routine
        leaq    \name(%rip), %rsi
        leaq    \routine(%rip), %rdi
        call    run_test
.endm

mode_insns:
        leaq    s_insns(%rip), %rsi
        call    puts
        call    setup_idt

        RUN     n_popcnt_r32, insn_popcnt_r32
        RUN     n_popcnt_r64, insn_popcnt_r64
        RUN     n_popcnt_m32, insn_popcnt_m32
        RUN     n_popcnt_m64, insn_popcnt_m64
        RUN     n_popcnt_zero, insn_popcnt_zero
        RUN     n_fwait, insn_fwait
        RUN     n_clac, insn_clac
        RUN     n_stac, insn_stac
        RUN     n_xgetbv, insn_xgetbv
        RUN     n_cx16_eq, insn_cmpxchg16b_eq
        RUN     n_cx16_ne, insn_cmpxchg16b_ne
        RUN     n_cx16_gs, insn_cmpxchg16b_gs
        RUN     n_int3, insn_int3
        RUN     n_lsl, insn_lsl

        leaq    s_insns_done(%rip), %rsi
        call    puts
        jmp     reset

/* run_test: call the routine at %rdi and report its result under the
 * name at %rsi. The exception handlers resume at .Lfaulted with %rsp =
 * fault_rsp if the routine faults. */
run_test:
        pushq   %rsi                    /* the name */
        movq    $0, fault_vector(%rip)
        movq    %rsp, fault_rsp(%rip)
        leaq    .Lfaulted(%rip), %rax
        movq    %rax, fault_resume(%rip)
        call    *%rdi
        jmp     .Lreport
.Lfaulted:
        movl    $FAIL, %eax
.Lreport:
        movq    $0, fault_resume(%rip)  /* faults are unexpected again */
        movl    %eax, %ebx              /* puts leaves %rbx alone */
        leaq    s_insn(%rip), %rsi      /* "kiln-payload: insn " */
        call    puts
        popq    %rsi                    /* NAME */
        call    puts
        leaq    s_ok(%rip), %rsi
        cmpl    $OK, %ebx
        je      1f
        leaq    s_fail(%rip), %rsi
        cmpl    $FAIL, %ebx
        je      1f
        leaq    s_skipped(%rip), %rsi
1:      call    puts
        leaq    s_ud(%rip), %rsi        /* say which exception, if any */
        cmpq    $6, fault_vector(%rip)
        je      2f
        leaq    s_gp(%rip), %rsi
        cmpq    $13, fault_vector(%rip)
        je      2f
        leaq    s_empty(%rip), %rsi
2:      call    puts
        movb    $'\n', %al
        jmp     putc                    /* tail call */

/* ---- POPCNT (f3 [REX.W] 0f b8 /r) ---------------------------------------
 * Result = number of set bits; OF SF AF CF PF are cleared and ZF is set
 * iff the source is 0. A 32-bit destination zero-extends into 64 bits, so
 * the destination starts out holding garbage. */

insn_popcnt_r32:
        need_cpuid1_ecx CPUID1_ECX_POPCNT, skip
        movabsq $0xffffffff80000003, %rax       /* low 32 bits: 3 bits set */
        movabsq $0xdeadbeefdeadbeef, %rcx
        set_status_flags
        popcntl %eax, %ecx                      /* f3 0f b8 c8 */
        get_status_flags
        cmpq    $3, %rcx
        jne     fail
        testl   %edx, %edx
        jnz     fail
        jmp     ok

insn_popcnt_r64:
        need_cpuid1_ecx CPUID1_ECX_POPCNT, skip
        movabsq $0xf0f0000000000001, %rax       /* 9 bits set */
        movabsq $0xdeadbeefdeadbeef, %rcx
        set_status_flags
        popcntq %rax, %rcx                      /* f3 48 0f b8 c8 */
        get_status_flags
        cmpq    $9, %rcx
        jne     fail
        testl   %edx, %edx
        jnz     fail
        jmp     ok

insn_popcnt_m32:                                /* RIP-relative operand */
        need_cpuid1_ecx CPUID1_ECX_POPCNT, skip
        movabsq $0xdeadbeefdeadbeef, %rcx
        set_status_flags
        popcntl popcnt_m32_val(%rip), %ecx      /* 0x12345678: 13 bits set */
        get_status_flags
        cmpq    $13, %rcx
        jne     fail
        testl   %edx, %edx
        jnz     fail
        jmp     ok

insn_popcnt_m64:                                /* base-register operand */
        need_cpuid1_ecx CPUID1_ECX_POPCNT, skip
        leaq    popcnt_m64_val(%rip), %rdi
        movabsq $0xdeadbeefdeadbeef, %rcx
        set_status_flags
        popcntq (%rdi), %rcx                    /* 0xffff0000000000ff: 24 */
        get_status_flags
        cmpq    $24, %rcx
        jne     fail
        testl   %edx, %edx
        jnz     fail
        jmp     ok

insn_popcnt_zero:                               /* source 0: result 0, ZF=1 */
        need_cpuid1_ecx CPUID1_ECX_POPCNT, skip
        xorl    %eax, %eax
        movabsq $0xdeadbeefdeadbeef, %rcx
        set_status_flags
        popcntq %rax, %rcx
        get_status_flags
        testq   %rcx, %rcx
        jnz     fail
        cmpl    $RFLAGS_ZF, %edx
        jne     fail
        movabsq $0xdeadbeefdeadbeef, %rcx       /* and from memory, 32-bit */
        set_status_flags
        popcntl zero_val(%rip), %ecx
        get_status_flags
        testq   %rcx, %rcx
        jnz     fail
        cmpl    $RFLAGS_ZF, %edx
        jne     fail
        jmp     ok

/* ---- FWAIT (9b): no pending x87 exception, so it does nothing but must
 * continue with the very next instruction and leave registers alone. */
insn_fwait:
        movabsq $0x0123456789abcdef, %rax
        xorl    %ecx, %ecx
        fwait                                   /* 9b */
        incl    %ecx                    /* missed if RIP moves past it */
        cmpl    $1, %ecx
        jne     fail
        movabsq $0x0123456789abcdef, %rdx
        cmpq    %rdx, %rax
        jne     fail
        jmp     ok

/* ---- CLAC (0f 01 ca) / STAC (0f 01 cb): clear / set RFLAGS.AC.
 * They #UD unless CPUID.(7,0):EBX.SMAP says they exist. */

/* ZF=0 (jne) if SMAP is not reported. Clobbers %eax-%edx. */
have_smap:
        xorl    %eax, %eax
        cpuid
        cmpl    $7, %eax                /* is leaf 7 there at all? */
        jb      1f
        movl    $7, %eax
        xorl    %ecx, %ecx
        cpuid
        btl     $CPUID7_EBX_SMAP, %ebx
        jnc     1f
        cmpl    %eax, %eax              /* ZF=1: yes */
        ret
1:      testl   %esp, %esp              /* ZF=0: no (%esp is never 0) */
        ret

insn_clac:
        call    have_smap
        jne     skip
        pushfq                          /* set AC the ordinary way... */
        orq     $RFLAGS_AC, (%rsp)
        popfq
        clac                            /* 0f 01 ca ...and clear it */
        pushfq
        popq    %rax
        testl   $RFLAGS_AC, %eax
        jnz     fail
        jmp     ok

insn_stac:
        call    have_smap
        jne     skip
        pushfq                          /* clear AC the ordinary way... */
        andq    $~RFLAGS_AC, (%rsp)
        popfq
        stac                            /* 0f 01 cb ...and set it */
        pushfq
        popq    %rax
        pushfq                          /* leave AC clear again */
        andq    $~RFLAGS_AC, (%rsp)
        popfq
        testl   $RFLAGS_AC, %eax
        jz      fail
        jmp     ok

/* ---- XGETBV with ECX=0 (0f 01 d0): EDX:EAX = XCR0, whose bit 0 (x87)
 * is always 1; the upper halves of RAX and RDX are cleared. It needs
 * CR4.OSXSAVE, which we set if CPUID says XSAVE exists. */
insn_xgetbv:
        movl    $1, %eax
        cpuid
        btl     $CPUID1_ECX_OSXSAVE, %ecx
        jc      1f                      /* CR4.OSXSAVE is already on */
        btl     $CPUID1_ECX_XSAVE, %ecx
        jnc     skip
        movq    %cr4, %rax
        orq     $CR4_OSXSAVE, %rax
        movq    %rax, %cr4
        movl    $1, %eax                /* CPUID.1:ECX.OSXSAVE follows CR4 */
        cpuid
        btl     $CPUID1_ECX_OSXSAVE, %ecx
        jnc     skip
1:      movq    $-1, %rax               /* garbage in the upper halves */
        movq    $-1, %rdx
        xorl    %ecx, %ecx              /* XCR0 */
        xgetbv                          /* 0f 01 d0 */
        testl   $1, %eax                /* XCR0.x87 */
        jz      fail
        movq    %rax, %rbx
        orq     %rdx, %rbx
        shrq    $32, %rbx               /* upper halves must be 0 */
        jnz     fail
        jmp     ok

/* ---- LOCK CMPXCHG16B m128 (f0 48 0f c7 /1): if RDX:RAX == m128 then
 * ZF=1 and m128 = RCX:RBX, else ZF=0 and RDX:RAX = m128. */

insn_cmpxchg16b_eq:
        need_cpuid1_ecx CPUID1_ECX_CX16, skip
        leaq    cx16_buf(%rip), %rsi    /* 16-byte aligned */
        movabsq $0x1111111111111111, %rax
        movabsq $0x2222222222222222, %rdx
        movq    %rax, (%rsi)            /* m128 = RDX:RAX: they match */
        movq    %rdx, 8(%rsi)
        movabsq $0x3333333333333333, %rbx
        movabsq $0x4444444444444444, %rcx
        lock cmpxchg16b (%rsi)          /* f0 48 0f c7 0e */
        pushfq
        popq    %r8
        testl   $RFLAGS_ZF, %r8d
        jz      fail
        cmpq    %rbx, (%rsi)            /* m128 now RCX:RBX */
        jne     fail
        cmpq    %rcx, 8(%rsi)
        jne     fail
        movabsq $0x1111111111111111, %r8 /* RDX:RAX untouched */
        cmpq    %r8, %rax
        jne     fail
        movabsq $0x2222222222222222, %r8
        cmpq    %r8, %rdx
        jne     fail
        jmp     ok

insn_cmpxchg16b_ne:
        need_cpuid1_ecx CPUID1_ECX_CX16, skip
        leaq    cx16_buf(%rip), %rsi
        movabsq $0x5555555555555555, %r8
        movabsq $0x6666666666666666, %r9
        movq    %r8, (%rsi)             /* m128 = 0x6666..:0x5555.. */
        movq    %r9, 8(%rsi)
        movabsq $0x1111111111111111, %rax /* RDX:RAX does not match */
        movabsq $0x2222222222222222, %rdx
        movabsq $0x3333333333333333, %rbx
        movabsq $0x4444444444444444, %rcx
        lock cmpxchg16b (%rsi)          /* f0 48 0f c7 0e */
        pushfq
        popq    %r10
        testl   $RFLAGS_ZF, %r10d
        jnz     fail
        cmpq    %r8, %rax               /* RDX:RAX = old m128 */
        jne     fail
        cmpq    %r9, %rdx
        jne     fail
        cmpq    %r8, (%rsi)             /* m128 unchanged */
        jne     fail
        cmpq    %r9, 8(%rsi)
        jne     fail
        jmp     ok

/* Same as the equal case, but through the GS-relative operand %gs:0 with
 * GS.base pointing at gs_buf (the per-CPU style Linux's slab code uses). */
insn_cmpxchg16b_gs:
        need_cpuid1_ecx CPUID1_ECX_CX16, skip
        leaq    gs_buf(%rip), %rsi
        movq    %rsi, %rax              /* GS.base = &gs_buf (EDX:EAX) */
        movq    %rsi, %rdx
        shrq    $32, %rdx
        movl    $MSR_GS_BASE, %ecx
        wrmsr
        movabsq $0x7777777777777777, %rax
        movabsq $0x8888888888888888, %rdx
        movq    %rax, (%rsi)            /* gs_buf = RDX:RAX: they match */
        movq    %rdx, 8(%rsi)
        movabsq $0x3333333333333333, %rbx
        movabsq $0x4444444444444444, %rcx
        lock cmpxchg16b %gs:0           /* 65 f0 48 0f c7 0c 25 00000000 */
        pushfq
        popq    %r8
        xorl    %eax, %eax              /* GS.base = 0 again */
        xorl    %edx, %edx
        movl    $MSR_GS_BASE, %ecx
        wrmsr
        testl   $RFLAGS_ZF, %r8d
        jz      fail
        movabsq $0x3333333333333333, %rbx
        cmpq    %rbx, (%rsi)            /* gs_buf now RCX:RBX */
        jne     fail
        movabsq $0x4444444444444444, %rcx
        cmpq    %rcx, 8(%rsi)
        jne     fail
        jmp     ok

/* ---- INT3 (cc): a breakpoint trap through IDT vector 3. The handler
 * counts it and records the return RIP, which must be the instruction
 * right after the int3; then iretq continues there. */
insn_int3:
        movq    $0, int3_count(%rip)
        movq    $0, int3_rip(%rip)
        int3                            /* cc */
.Lafter_int3:
        cmpq    $1, int3_count(%rip)
        jne     fail
        leaq    .Lafter_int3(%rip), %rax
        cmpq    %rax, int3_rip(%rip)
        jne     fail
        jmp     ok

/* ---- LSL r, r/m16 (0f 03 /r): load the limit of the segment a selector
 * names and set ZF, or clear ZF and leave the destination alone. Linux's
 * paranoid NMI entry does this on its CPUNODE GDT entry. kiln's boot GDT
 * (boot/src/cpu.rs) has a flat data segment at 0x10 and a busy TSS at
 * 0x18, both with limit 0xfffff in 4K units: 0xffffffff. (The unit tests
 * in src/pvm/emulate.rs cover byte-granular limits.) */
insn_lsl:
        movq    $-1, %rax               /* garbage in the upper half */
        movl    $0x10, %ecx
        set_status_flags
        lsll    %ecx, %eax              /* 0f 03 c1 */
        jnz     fail
        movl    $0xffffffff, %r8d       /* 32-bit result, zero-extended */
        cmpq    %r8, %rax
        jne     fail
        movl    $0x18, %ebx
        leaq    lsl_sel(%rip), %rsi
        movw    %bx, (%rsi)
        lslq    (%rsi), %rdx            /* 48 0f 03 16 */
        jnz     fail
        cmpq    %r8, %rdx
        jne     fail
        movq    $0x1234, %rdx           /* the null selector: ZF=0 */
        xorl    %ecx, %ecx
        lslq    %rcx, %rdx              /* 48 0f 03 d1 */
        jz      fail
        cmpq    $0x1234, %rdx
        jne     fail
        jmp     ok

/* Shared exits of the insn_* routines. */
ok:     movl    $OK, %eax
        ret
fail:   movl    $FAIL, %eax
        ret
skip:   movl    $SKIPPED, %eax
        ret

/* ---- a minimal 64-bit IDT ------------------------------------------------
 * 32 interrupt gates for the CPU exceptions (room for IDT_VECTORS: the
 * timer mode adds its interrupt). Vector 3 counts breakpoints, 6 (#UD)
 * and 13 (#GP) let run_test survive a faulting instruction, and every
 * other exception is reported as unexpected. The gates are filled in at
 * run time because the assembler cannot split a symbol's address into
 * the gate's three offset fields. */

setup_idt:
        xorl    %edi, %edi
1:      leaq    exc_unexpected(%rip), %rax
        call    set_gate
        incl    %edi
        cmpl    $32, %edi
        jb      1b
        movl    $3, %edi
        leaq    exc_breakpoint(%rip), %rax
        call    set_gate
        movl    $6, %edi
        leaq    exc_invalid_opcode(%rip), %rax
        call    set_gate
        movl    $13, %edi
        leaq    exc_general_protection(%rip), %rax
        call    set_gate
        lidt    idtr(%rip)
        ret

/* set_gate: point IDT vector %edi at the handler at %rax. A 16-byte gate:
 * offset[15:0], selector, IST, type (0x8e: present, DPL 0, 64-bit
 * interrupt gate), offset[31:16], offset[63:32], reserved.
 * Clobbers %rax, %rcx, %rdx. */
set_gate:
        movl    %edi, %edx
        shlq    $4, %rdx
        leaq    idt(%rip), %rcx
        addq    %rcx, %rdx
        movw    %ax, 0(%rdx)
        movw    %cs, %cx                /* our code segment (0x08) */
        movw    %cx, 2(%rdx)
        movw    $0x8e00, 4(%rdx)        /* IST 0, type 0x8e */
        shrq    $16, %rax
        movw    %ax, 6(%rdx)
        shrq    $16, %rax
        movl    %eax, 8(%rdx)
        movl    $0, 12(%rdx)
        ret

/* Breakpoint: the frame at %rsp is RIP, CS, RFLAGS, RSP, SS. */
exc_breakpoint:
        incq    int3_count(%rip)
        pushq   %rax
        movq    8(%rsp), %rax           /* the RIP the trap will return to */
        movq    %rax, int3_rip(%rip)
        popq    %rax
        iretq

/* #UD has no error code; #GP pushes one, which we drop. Both rewrite the
 * frame so that iretq "returns" to fault_resume on the stack fault_rsp. */
exc_invalid_opcode:
        movq    $6, fault_vector(%rip)
        jmp     1f
exc_general_protection:
        addq    $8, %rsp                /* drop the error code */
        movq    $13, fault_vector(%rip)
1:      cmpq    $0, fault_resume(%rip)
        je      exc_unexpected          /* not inside run_test */
        pushq   %rax
        movq    fault_resume(%rip), %rax
        movq    %rax, 8(%rsp)           /* frame RIP */
        movq    fault_rsp(%rip), %rax
        movq    %rax, 32(%rsp)          /* frame RSP */
        popq    %rax
        iretq

exc_unexpected:
        leaq    s_unexpected(%rip), %rsi
        call    puts
        jmp     reset

/* ======================================================================= */
        .section .rodata
/* Mode table: (name, handler) pairs, ended by a 0 name. */
        .balign 8
mode_table:
        .quad   m_hello, mode_hello
        .quad   m_echo, mode_echo
        .quad   m_halt, mode_halt
        .quad   m_triple, mode_triple
        .quad   m_spin, mode_spin
        .quad   m_badport, mode_badport
        .quad   m_acpi, mode_acpi
        .quad   m_insns, mode_insns
        .quad   m_timer, mode_timer
        .quad   m_flood, mode_flood
        .quad   m_pvpanic, mode_pvpanic
        .quad   m_count, mode_count
        .quad   m_exits, mode_exits
        .quad   0, 0

/* An IDT with limit 0: no vector is usable (for the triple mode). */
        .balign 8
empty_idtr:
        .word   0
        .quad   0

/* The IDT descriptor: limit, base. */
        .balign 8
idtr:
        .word   IDT_VECTORS * 16 - 1
        .quad   idt

m_hello:        .asciz "hello"
m_echo:         .asciz "echo"
m_halt:         .asciz "halt"
m_triple:       .asciz "triple"
m_spin:         .asciz "spin"
m_badport:      .asciz "badport"
m_acpi:         .asciz "acpi"
m_insns:        .asciz "insns"
m_timer:        .asciz "timer"
m_flood:        .asciz "flood"
m_pvpanic:      .asciz "pvpanic"
m_count:        .asciz "count"
m_exits:        .asciz "exits"

s_key:          .asciz "payload="
s_hello_mode:   .asciz "hello"
s_mode:         .asciz "kiln-payload: mode="
s_hello:        .asciz "kiln-payload: hello from the guest\n"
s_done:         .asciz "kiln-payload: done\n"
s_echo_done:    .asciz "\nkiln-payload: echo done\n"
s_halt:         .asciz "kiln-payload: halting\n"
s_triple:       .asciz "kiln-payload: triple faulting\n"
s_spin:         .asciz "kiln-payload: spinning\n"
s_flood:        .asciz "kiln-payload: flooding the console\n"
s_pvpanic:      .asciz "kiln-payload: Kernel panic - not syncing: test panic\n"
s_badport:      .asciz "kiln-payload: poking unassigned port and MMIO\n"
s_exits:        .asciz "kiln-payload: 100000 port reads\n"
s_survived:     .asciz "kiln-payload: survived\n"
s_acpi_rsdp:    .asciz "kiln-payload: acpi rsdp="
s_yes:          .asciz "yes\n"
s_no:           .asciz "no\n"
s_unknown:      .asciz "kiln-payload: unknown mode\n"
s_insns:        .asciz "kiln-payload: testing instructions\n"
s_insns_done:   .asciz "kiln-payload: insns done\n"
s_unexpected:   .asciz "kiln-payload: unexpected exception\n"
s_count:        .asciz "kiln-payload: count "
s_timer:        .asciz "kiln-payload: arming the TSC-deadline timer\n"
s_timer_fired:  .asciz "kiln-payload: timer fired after "
s_cycles:       .asciz " cycles\n"
s_timer_skipped: .asciz "kiln-payload: timer skipped\n"
s_insn:         .asciz "kiln-payload: insn "
s_ok:           .asciz " ok"
s_fail:         .asciz " FAIL"
s_skipped:      .asciz " skipped"
s_ud:           .asciz " (#UD)"
s_gp:           .asciz " (#GP)"
s_empty:        .asciz ""

n_popcnt_r32:   .asciz "popcnt_r32"
n_popcnt_r64:   .asciz "popcnt_r64"
n_popcnt_m32:   .asciz "popcnt_m32"
n_popcnt_m64:   .asciz "popcnt_m64"
n_popcnt_zero:  .asciz "popcnt_zero"
n_fwait:        .asciz "fwait"
n_clac:         .asciz "clac"
n_stac:         .asciz "stac"
n_xgetbv:       .asciz "xgetbv"
n_cx16_eq:      .asciz "cmpxchg16b_eq"
n_cx16_ne:      .asciz "cmpxchg16b_ne"
n_cx16_gs:      .asciz "cmpxchg16b_gs"
n_int3:         .asciz "int3"
n_lsl:          .asciz "lsl"

        .balign 4
popcnt_m32_val: .long  0x12345678
zero_val:       .long  0
        .balign 8
popcnt_m64_val: .quad  0xffff0000000000ff

/* ======================================================================= */
        .section .data
        .balign 8
boot_params:    .quad 0         /* %rsi at entry */
mode_ptr:       .quad 0         /* the MODE token */
mode_len:       .quad 0
fault_resume:   .quad 0         /* where #UD/#GP continue (0: nowhere) */
fault_rsp:      .quad 0         /* with this stack pointer */
fault_vector:   .quad 0         /* which exception it was (6 or 13) */
int3_count:     .quad 0
count:          .quad 0         /* count mode: timer interrupts so far */
count_printed:  .quad 0         /* and the last one printed */
int3_rip:       .quad 0
lsl_sel:        .quad 0         /* LSL's memory operand */
        .balign 16
cx16_buf:       .quad 0, 0      /* CMPXCHG16B needs 16-byte alignment */
gs_buf:         .quad 0, 0
idt:            .fill IDT_VECTORS * 16, 1, 0
timer_armed:    .quad 0         /* TSC when the timer was armed */
timer_fired:    .quad 0         /* TSC in its interrupt (0: not yet) */
numbuf:         .fill 20, 1, 0  /* putu's digits */
numbuf_end:

/* ======================================================================= */
        .section .bss
        .balign 16
stack:          .skip 16384
stack_top:

/* No executable stack wanted (keeps ld quiet; the section is discarded). */
        .section .note.GNU-stack, "", @progbits
