//! SYSCALL repair. On a kvm_pvm host a guest's SYSCALL from ring 3 loads
//! RIP = LSTAR, RCX and R11 as it should but leaves CS/SS at their user
//! values, so the kernel's entry code runs at ring 3 and faults on its
//! first instruction. kiln puts a hardware breakpoint on the guest's
//! page-fault handler (read from IDT[14]); when it fires with a user-mode
//! fault at RIP == LSTAR, kiln drops the exception frame and finishes the
//! SYSCALL itself: kernel CS/SS from STAR, RSP and RFLAGS from the frame,
//! RIP = LSTAR at ring 0. Every other page fault is passed on untouched by
//! single-stepping past the breakpoint.
//!
//! The decisions are pure functions of memory and register snapshots,
//! unit-tested below; `HostRepairs` does the ioctls.

use kvm_bindings::kvm_segment;

/// MSR holding the SYSCALL/SYSRET segment selectors.
pub const MSR_STAR: u32 = 0xc000_0081;
/// MSR holding the 64-bit SYSCALL entry point.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// The page-fault vector.
pub const PF_VECTOR: u64 = 14;
/// Size of a 64-bit IDT gate.
pub const GATE_SIZE: u64 = 16;
/// DR7 for DR0: local enable, break on execution, length 1.
pub const DR7_EXEC_DR0: u64 = 0x401;

/// The handler address of a present 64-bit interrupt or trap gate.
pub fn gate_handler(gate: &[u8; 16]) -> Option<u64> {
    let type_attr = gate[5];
    let present = type_attr & 0x80 != 0;
    let kind = type_attr & 0xf;
    if !present || (kind != 0xe && kind != 0xf) {
        return None;
    }
    let lo = u64::from(u16::from_le_bytes([gate[0], gate[1]]));
    let mid = u64::from(u16::from_le_bytes([gate[6], gate[7]]));
    let hi = u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]]));
    Some(lo | (mid << 16) | (hi << 32))
}

/// The frame the CPU pushed for a page fault taken from user mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultFrame {
    /// Page-fault error code.
    pub error_code: u64,
    /// Faulting RIP.
    pub rip: u64,
    /// CS at the fault.
    pub cs: u64,
    /// RFLAGS at the fault.
    pub rflags: u64,
    /// RSP at the fault.
    pub rsp: u64,
    /// SS at the fault.
    pub ss: u64,
}

impl FaultFrame {
    /// Size of the frame on the stack.
    pub const SIZE: usize = 48;

    /// Parses the six quadwords at the handler's RSP.
    pub fn parse(b: &[u8; Self::SIZE]) -> FaultFrame {
        let q = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        FaultFrame {
            error_code: q(0),
            rip: q(1),
            cs: q(2),
            rflags: q(3),
            rsp: q(4),
            ss: q(5),
        }
    }

    /// A fault at ring 3 on the SYSCALL entry point: the broken SYSCALL.
    pub fn is_broken_syscall(&self, lstar: u64) -> bool {
        lstar != 0 && self.cs & 3 == 3 && self.rip == lstar
    }
}

/// The kernel's CS and SS for a SYSCALL, from STAR[47:32]: a flat 64-bit
/// code segment and the flat data segment 8 bytes above it, both DPL 0.
pub fn syscall_segments(star: u64) -> (kvm_segment, kvm_segment) {
    let cs_sel = ((star >> 32) & 0xfffc) as u16;
    let flat = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        present: 1,
        dpl: 0,
        s: 1,
        g: 1,
        ..Default::default()
    };
    let cs = kvm_segment {
        selector: cs_sel,
        type_: 0xb, // execute/read, accessed
        l: 1,
        db: 0,
        ..flat
    };
    let ss = kvm_segment {
        selector: cs_sel + 8,
        type_: 0x3, // read/write, accessed
        l: 0,
        db: 1,
        ..flat
    };
    (cs, ss)
}

/// RFLAGS.DF, cleared by CLD.
const RFLAGS_DF: u64 = 1 << 10;
/// RFLAGS.AC, cleared by CLAC.
const RFLAGS_AC: u64 = 1 << 18;

/// How to step over the handler's first instruction without executing it:
/// its length and the RFLAGS bits it clears. Known for the instructions a
/// Linux exception entry starts with (NOPs that alternatives left, ENDBR64,
/// CLAC, CLD); `None` means single-step it instead. Passing a fault on this
/// way costs one exit instead of two.
pub fn skip_first_instruction(bytes: &[u8]) -> Option<(u64, u64)> {
    match bytes {
        [0x90, ..] => Some((1, 0)),
        [0xfc, ..] => Some((1, RFLAGS_DF)),
        [0x0f, 0x01, 0xca, ..] => Some((3, RFLAGS_AC)),
        [0xf3, 0x0f, 0x1e, 0xfa, ..] => Some((4, 0)),
        // Multi-byte NOPs: 0f 1f /0 with the usual ModRM forms, optionally 66-prefixed.
        [0x66, 0x0f, 0x1f, modrm, ..] => nop_len(*modrm).map(|l| (l + 1, 0)),
        [0x0f, 0x1f, modrm, ..] => nop_len(*modrm).map(|l| (l, 0)),
        _ => None,
    }
}

/// Length of `0f 1f <modrm> ...` for the ModRM bytes compilers emit.
fn nop_len(modrm: u8) -> Option<u64> {
    match modrm {
        0x00 => Some(3),
        0x40 => Some(4),
        0x44 => Some(5),
        0x80 => Some(7),
        0x84 => Some(8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(handler: u64, type_attr: u8) -> [u8; 16] {
        let mut g = [0u8; 16];
        g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
        g[2..4].copy_from_slice(&0x10u16.to_le_bytes());
        g[5] = type_attr;
        g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
        g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
        g
    }

    #[test]
    fn reads_gate_handlers() {
        let h = 0xffff_ffff_8160_0b20;
        assert_eq!(gate_handler(&gate(h, 0x8e)), Some(h));
        assert_eq!(gate_handler(&gate(h, 0x8f)), Some(h));
        assert_eq!(gate_handler(&gate(h, 0x0e)), None, "not present");
        assert_eq!(gate_handler(&gate(h, 0x85)), None, "task gate");
    }

    fn frame(rip: u64, cs: u64) -> [u8; 48] {
        let mut b = [0u8; 48];
        for (i, v) in [4u64, rip, cs, 0x246, 0x7ffd_0000, 0x2b].iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn recognises_only_the_broken_syscall() {
        let lstar = 0xffff_ffff_8180_0000;
        let f = FaultFrame::parse(&frame(lstar, 0x33));
        assert_eq!(
            (f.error_code, f.rflags, f.rsp, f.ss),
            (4, 0x246, 0x7ffd_0000, 0x2b)
        );
        assert!(f.is_broken_syscall(lstar));
        // An ordinary user page fault elsewhere.
        assert!(!FaultFrame::parse(&frame(0x40_1000, 0x33)).is_broken_syscall(lstar));
        // A kernel-mode fault at LSTAR is not ours either.
        assert!(!FaultFrame::parse(&frame(lstar, 0x10)).is_broken_syscall(lstar));
        // No LSTAR yet.
        assert!(!FaultFrame::parse(&frame(0, 0x33)).is_broken_syscall(0));
    }

    #[test]
    fn skips_only_harmless_first_instructions() {
        assert_eq!(
            skip_first_instruction(&[0x90, 0x90, 0x90, 0xfc]),
            Some((1, 0))
        );
        assert_eq!(skip_first_instruction(&[0xfc, 0xe8]), Some((1, 1 << 10)));
        assert_eq!(
            skip_first_instruction(&[0x0f, 0x01, 0xca]),
            Some((3, 1 << 18))
        );
        assert_eq!(
            skip_first_instruction(&[0xf3, 0x0f, 0x1e, 0xfa]),
            Some((4, 0))
        );
        assert_eq!(
            skip_first_instruction(&[0x0f, 0x1f, 0x44, 0, 0]),
            Some((5, 0))
        );
        assert_eq!(
            skip_first_instruction(&[0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0]),
            Some((9, 0))
        );
        // A call, a push, an unknown NOP form: single-step those.
        assert_eq!(skip_first_instruction(&[0xe8, 0, 0, 0, 0]), None);
        assert_eq!(skip_first_instruction(&[0x56]), None);
        assert_eq!(skip_first_instruction(&[0x0f, 0x1f, 0x05]), None);
        assert_eq!(skip_first_instruction(&[]), None);
    }

    #[test]
    fn kernel_segments_from_star() {
        // Linux: STAR = (USER32_CS << 48) | (KERNEL_CS << 32) = 0x0023_0010_0000_0000.
        let (cs, ss) = syscall_segments(0x0023_0010_0000_0000);
        assert_eq!((cs.selector, cs.l, cs.dpl, cs.type_), (0x10, 1, 0, 0xb));
        assert_eq!((ss.selector, ss.db, ss.dpl, ss.type_), (0x18, 1, 0, 0x3));
        // RPL bits in STAR are ignored.
        assert_eq!(syscall_segments(0x0013_0000_0000).0.selector, 0x10);
    }
}
