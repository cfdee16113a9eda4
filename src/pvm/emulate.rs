//! User-space emulation of the few instructions that the `kvm_pvm` host's
//! instruction emulator rejects (see shared/PLATFORM.md).
//!
//! On `KVM_EXIT_INTERNAL_ERROR` (suberror `KVM_INTERNAL_ERROR_EMULATION`) the
//! exit carries up to 15 instruction bytes fetched at RIP. The caller wraps the
//! stopped vCPU in a [`Machine`] and calls [`emulate`]. This module is pure: no
//! ioctls, no KVM types.
//!
//! Assumptions: the vCPU is in 64-bit long mode (CS.L = 1) at CPL 0; callers
//! must only call [`emulate`] there. CPL, CR0.TS/EM, CR4.OSFXSR/OSXSAVE and
//! pending x87 exceptions (for FWAIT) are not checked.
//!
//! # Instructions
//! INT3, FWAIT, POPCNT, CLAC, STAC, XGETBV, LSL, CMPXCHG (0f b0/b1),
//! CMPXCHG8B/16B, LDMXCSR, STMXCSR, MOVD/MOVQ (66 0f 6e/7e, f3 0f 7e,
//! 66 0f d6), MOVDQA/MOVDQU (0f 6f/7f) and PXOR. Prefixes: 66, 67, f0, f2, f3,
//! segment overrides (only FS/GS have a base) and REX. Everything else,
//! XSAVE/XRSTOR/XSAVEOPT and VMCALL ([`is_vmcall`]) included, is
//! [`EmulateError::Unsupported`].
//!
//! # Results, and who advances RIP
//! - `Ok(Outcome::Completed { len })`: executed. The emulator itself has set
//!   RIP += len and cleared RFLAGS.RF; the caller writes the state back.
//! - `Ok(Outcome::InjectException { vector, error_code, len })`: NOTHING was
//!   changed, RIP included. The caller adds `len` to RIP (1 for INT3, a
//!   software exception; 0 for faults: #GP, #UD) and injects `vector`
//!   (KVM_SET_VCPU_EVENTS: exception.injected = 1, nr = vector).
//! - `Ok(Outcome::PageFault { gva, error_code })`: a [`Machine::read_mem`] or
//!   [`Machine::write_mem`] failed. Nothing was changed; the caller sets
//!   CR2 = gva and injects #PF (vector 14) with `error_code`, RIP unchanged.
//! - `Err(EmulateError)`: not emulated, nothing changed; stop the VM with it.
//!
//! # Atomicity
//! LOCK CMPXCHG / CMPXCHG8B / CMPXCHG16B are a read, a compare and a write
//! through the [`Machine`] while this vCPU is stopped. That is atomic for this
//! vCPU only; with several vCPUs the caller must pause the others (or accept
//! the race). A failed compare does not write the memory back.

use thiserror::Error;

/// #BP, breakpoint (INT3).
pub const VECTOR_BP: u8 = 3;
/// #UD, invalid opcode (e.g. LOCK on an instruction that cannot take it).
pub const VECTOR_UD: u8 = 6;
/// #GP, general protection (reported with error code 0).
pub const VECTOR_GP: u8 = 13;
/// #PF, page fault; reported as [`Outcome::PageFault`].
pub const VECTOR_PF: u8 = 14;

const MAX_INSN_LEN: usize = 15;

// RFLAGS bits.
const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
const RF: u64 = 1 << 16;
const AC: u64 = 1 << 18;
const ARITH_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;

// GPR indices (x86 encoding order).
const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RBX: usize = 3;

/// A guest page fault met while accessing guest-virtual memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemFault {
    /// The faulting guest-virtual address (becomes CR2).
    pub gva: u64,
    /// The #PF error code (P, W/R, U/S, ... bits) from the caller's page walk.
    pub error_code: u32,
}

/// The state of one stopped vCPU, as the emulator sees it.
pub trait Machine {
    /// GPR `index` in encoding order: rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15.
    fn get_gpr(&self, index: usize) -> u64;
    fn set_gpr(&mut self, index: usize, value: u64);
    fn get_rip(&self) -> u64;
    fn set_rip(&mut self, value: u64);
    fn get_rflags(&self) -> u64;
    fn set_rflags(&mut self, value: u64);
    /// Segment bases used by the 0x64 (FS) and 0x65 (GS) override prefixes.
    fn fs_base(&self) -> u64;
    fn gs_base(&self) -> u64;
    /// Reads guest-virtual memory; should fail before reading anything.
    fn read_mem(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), MemFault>;
    /// Writes guest-virtual memory; should check every page before writing.
    fn write_mem(&mut self, gva: u64, data: &[u8]) -> Result<(), MemFault>;
    /// Extended control register `index` (for XGETBV), `None` if invalid.
    fn xcr(&self, index: u32) -> Option<u64>;
    /// XMM register 0..15 (the caller keeps the upper YMM halves intact).
    fn get_xmm(&self, index: usize) -> u128;
    fn set_xmm(&mut self, index: usize, value: u128);
    fn get_mxcsr(&self) -> u32;
    fn set_mxcsr(&mut self, value: u32);
    /// MXCSR bits LDMXCSR may set (FXSAVE's MXCSR_MASK); others raise #GP(0).
    fn mxcsr_mask(&self) -> u32 {
        0xffff
    }
    /// Current privilege level (CS.RPL).
    fn cpl(&self) -> u8;
    /// Base (guest-virtual) and limit of the GDT, or of the LDT when `ldt`;
    /// `None` when no LDT is loaded.
    fn descriptor_table(&self, ldt: bool) -> Option<(u64, u32)>;
}

/// What the caller must do after [`emulate`]; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Executed; RIP already advanced by `len`, RFLAGS.RF cleared.
    Completed { len: usize },
    /// Nothing changed. Caller: RIP += len, then inject `vector`.
    InjectException {
        vector: u8,
        error_code: Option<u32>,
        len: usize,
    },
    /// Nothing changed. Caller: CR2 = gva, inject #PF(error_code); RIP stays.
    PageFault { gva: u64, error_code: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EmulateError {
    #[error("cannot emulate instruction (bytes at RIP: {})", hex(.bytes))]
    Unsupported { bytes: Vec<u8> },
    #[error("instruction bytes end too early (bytes at RIP: {})", hex(.bytes))]
    Truncated { bytes: Vec<u8> },
}

fn hex(bytes: &[u8]) -> String {
    let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(" ")
}

/// VMCALL (0f 01 c1): never emulated here, the caller handles it.
pub fn is_vmcall(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x0f, 0x01, 0xc1])
}

/// Decodes and executes the instruction in `bytes` (fetched at RIP, at most
/// 15 are used) against `m`. Long mode only; see the module docs.
pub fn emulate(m: &mut impl Machine, bytes: &[u8]) -> Result<Outcome, EmulateError> {
    let mut d = Decoder::new(bytes);
    match execute(m, &mut d) {
        Ok(()) => {
            m.set_rip(m.get_rip().wrapping_add(d.pos as u64));
            m.set_rflags(m.get_rflags() & !RF);
            Ok(Outcome::Completed { len: d.pos })
        }
        Err(Exit::Exception(outcome)) => Ok(outcome),
        Err(Exit::Error(e)) => Err(e),
    }
}

/// Why execution stopped early. Handlers change state only after their last
/// fallible step, so an `Exit` always leaves the machine untouched.
enum Exit {
    Exception(Outcome),
    Error(EmulateError),
}

impl From<MemFault> for Exit {
    fn from(f: MemFault) -> Self {
        Exit::Exception(Outcome::PageFault {
            gva: f.gva,
            error_code: f.error_code,
        })
    }
}

fn fault(vector: u8, error_code: Option<u32>) -> Exit {
    Exit::Exception(Outcome::InjectException {
        vector,
        error_code,
        len: 0,
    })
}

fn gp0() -> Exit {
    fault(VECTOR_GP, Some(0))
}

/// The SSE "mandatory prefix" that selects among opcodes sharing 0f xx.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mandatory {
    None,
    P66,
    F3,
    F2,
}

#[derive(Clone, Copy, Debug)]
enum Operand {
    Reg(usize),
    /// A linear (guest-virtual) address, segment base included.
    Mem(u64),
}

struct ModRm {
    reg: usize,
    rm: Operand,
}

#[derive(Default)]
struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    opsize: bool,    // 0x66
    addr32: bool,    // 0x67
    lock: bool,      // 0xf0
    rep: Option<u8>, // last of 0xf2 / 0xf3
    seg: u8,         // last segment override prefix, 0 if none
    rex: u8,         // 0 if none
}

impl<'a> Decoder<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Decoder {
            bytes,
            ..Default::default()
        }
    }

    fn byte(&mut self) -> Result<u8, Exit> {
        if self.pos >= MAX_INSN_LEN {
            return Err(gp0()); // longer than 15 bytes
        }
        let b = *self.bytes.get(self.pos).ok_or_else(|| {
            Exit::Error(EmulateError::Truncated {
                bytes: self.bytes.to_vec(),
            })
        })?;
        self.pos += 1;
        Ok(b)
    }

    fn disp32(&mut self) -> Result<u64, Exit> {
        let mut v = [0u8; 4];
        for b in &mut v {
            *b = self.byte()?;
        }
        Ok(i32::from_le_bytes(v) as i64 as u64)
    }

    fn unsupported(&self) -> Exit {
        let end = self.bytes.len().min(MAX_INSN_LEN);
        Exit::Error(EmulateError::Unsupported {
            bytes: self.bytes[..end].to_vec(),
        })
    }

    /// Consumes the prefixes and returns the first opcode byte.
    fn prefixes_and_opcode(&mut self) -> Result<u8, Exit> {
        loop {
            let b = self.byte()?;
            match b {
                0x66 => self.opsize = true,
                0x67 => self.addr32 = true,
                0xf0 => self.lock = true,
                0xf2 | 0xf3 => self.rep = Some(b),
                0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => self.seg = b,
                0x40..=0x4f => {
                    self.rex = b;
                    continue;
                }
                _ => return Ok(b),
            }
            self.rex = 0; // REX only counts right before the opcode
        }
    }

    /// 8 if REX bit `bit` is set (R = 4, X = 2, B = 1), else 0.
    fn rex_bit(&self, bit: u8) -> usize {
        usize::from(self.rex & bit != 0) * 8
    }

    fn rex_w(&self) -> bool {
        self.rex & 8 != 0
    }

    /// Integer operand size in bytes: REX.W beats 0x66.
    fn opsize(&self) -> usize {
        match (self.rex_w(), self.opsize) {
            (true, _) => 8,
            (false, true) => 2,
            (false, false) => 4,
        }
    }

    fn mandatory(&self) -> Mandatory {
        match (self.rep, self.opsize) {
            (Some(0xf3), _) => Mandatory::F3,
            (Some(_), _) => Mandatory::F2,
            (None, true) => Mandatory::P66,
            (None, false) => Mandatory::None,
        }
    }

    fn no_lock(&self) -> Result<(), Exit> {
        if self.lock {
            Err(fault(VECTOR_UD, None))
        } else {
            Ok(())
        }
    }

    /// Decodes ModRM, SIB and displacement and resolves a memory operand to
    /// its linear address. RIP-relative operands are relative to the end of
    /// the ModRM bytes, which is the next instruction: nothing emulated here
    /// has an immediate operand after them.
    fn modrm(&mut self, m: &impl Machine) -> Result<ModRm, Exit> {
        let b = self.byte()?;
        let (md, rm) = (b >> 6, (b & 7) as usize);
        let reg = ((b >> 3) & 7) as usize | self.rex_bit(4);
        if md == 3 {
            return Ok(ModRm {
                reg,
                rm: Operand::Reg(rm | self.rex_bit(1)),
            });
        }
        let mut ea = 0u64;
        let mut disp32 = md == 2;
        let mut rip_relative = false;
        if rm == 4 {
            let sib = self.byte()?;
            let index = ((sib >> 3) & 7) as usize | self.rex_bit(2);
            if index != 4 {
                ea = m.get_gpr(index) << (sib >> 6);
            }
            if sib & 7 == 5 && md == 0 {
                disp32 = true; // no base register
            } else {
                ea = ea.wrapping_add(m.get_gpr((sib & 7) as usize | self.rex_bit(1)));
            }
        } else if rm == 5 && md == 0 {
            (disp32, rip_relative) = (true, true);
        } else {
            ea = m.get_gpr(rm | self.rex_bit(1));
        }
        let disp = match (md, disp32) {
            (1, _) => self.byte()? as i8 as u64,
            (_, true) => self.disp32()?,
            _ => 0,
        };
        ea = ea.wrapping_add(disp);
        if rip_relative {
            ea = ea.wrapping_add(m.get_rip().wrapping_add(self.pos as u64));
        }
        if self.addr32 {
            ea &= 0xffff_ffff;
        }
        let base = match self.seg {
            0x64 => m.fs_base(),
            0x65 => m.gs_base(),
            _ => 0, // ES, CS, SS, DS: base 0 in long mode
        };
        Ok(ModRm {
            reg,
            rm: Operand::Mem(base.wrapping_add(ea)),
        })
    }
}

fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1 << (size * 8)) - 1
    }
}

/// Without a REX prefix, byte registers 4..7 are AH, CH, DH, BH.
fn high_byte(idx: usize, size: usize, rex: bool) -> bool {
    size == 1 && !rex && (4..8).contains(&idx)
}

fn get_reg(m: &impl Machine, idx: usize, size: usize, rex: bool) -> u64 {
    if high_byte(idx, size, rex) {
        return (m.get_gpr(idx - 4) >> 8) & 0xff;
    }
    m.get_gpr(idx) & mask(size)
}

/// 64- and 32-bit writes replace the whole register (32 zero-extends);
/// 16- and 8-bit writes merge.
fn set_reg(m: &mut impl Machine, idx: usize, size: usize, rex: bool, value: u64) {
    let (idx, shift) = if high_byte(idx, size, rex) {
        (idx - 4, 8)
    } else {
        (idx, 0)
    };
    let new = if size >= 4 {
        value & mask(size)
    } else {
        let field = mask(size) << shift;
        (m.get_gpr(idx) & !field) | ((value << shift) & field)
    };
    m.set_gpr(idx, new);
}

fn canonical(addr: u64) -> bool {
    (((addr << 16) as i64) >> 16) as u64 == addr
}

fn check_access(addr: u64, size: usize) -> Result<(), Exit> {
    if canonical(addr) && canonical(addr.wrapping_add(size as u64 - 1)) {
        Ok(())
    } else {
        Err(gp0()) // (an SS-based access would really raise #SS)
    }
}

fn load(m: &mut impl Machine, addr: u64, size: usize) -> Result<u128, Exit> {
    check_access(addr, size)?;
    let mut buf = [0u8; 16];
    m.read_mem(addr, &mut buf[..size])?;
    Ok(u128::from_le_bytes(buf))
}

fn store(m: &mut impl Machine, addr: u64, size: usize, value: u128) -> Result<(), Exit> {
    check_access(addr, size)?;
    m.write_mem(addr, &value.to_le_bytes()[..size])?;
    Ok(())
}

fn read_rm(m: &mut impl Machine, op: Operand, size: usize, rex: bool) -> Result<u64, Exit> {
    match op {
        Operand::Reg(i) => Ok(get_reg(m, i, size, rex)),
        Operand::Mem(a) => Ok(load(m, a, size)? as u64),
    }
}

fn write_rm(m: &mut impl Machine, op: Operand, size: usize, rex: bool, v: u64) -> Result<(), Exit> {
    match op {
        Operand::Reg(i) => set_reg(m, i, size, rex, v),
        Operand::Mem(a) => store(m, a, size, v as u128)?,
    }
    Ok(())
}

/// Reads an XMM register or `size` bytes of memory (16-byte aligned if asked).
fn read_xmm_rm(
    m: &mut impl Machine,
    op: Operand,
    size: usize,
    aligned: bool,
) -> Result<u128, Exit> {
    match op {
        Operand::Reg(i) => Ok(m.get_xmm(i) & (u128::MAX >> (128 - size * 8))),
        Operand::Mem(a) if aligned && a % 16 != 0 => Err(gp0()),
        Operand::Mem(a) => load(m, a, size),
    }
}

fn set_arith_flags(m: &mut impl Machine, flags: u64) {
    m.set_rflags((m.get_rflags() & !ARITH_FLAGS) | flags);
}

/// Flags of `a - b` at `size` bytes, as CMP sets them.
fn sub_flags(a: u64, b: u64, size: usize) -> u64 {
    let res = a.wrapping_sub(b) & mask(size);
    let sign = 1 << (size * 8 - 1);
    let mut f = 0;
    if a < b {
        f |= CF;
    }
    if (res as u8).count_ones().is_multiple_of(2) {
        f |= PF;
    }
    if (a ^ b ^ res) & 0x10 != 0 {
        f |= AF;
    }
    if res == 0 {
        f |= ZF;
    }
    if res & sign != 0 {
        f |= SF;
    }
    if (a ^ b) & (a ^ res) & sign != 0 {
        f |= OF;
    }
    f
}

fn execute(m: &mut impl Machine, d: &mut Decoder) -> Result<(), Exit> {
    match d.prefixes_and_opcode()? {
        0xcc => {
            d.no_lock()?;
            let len = d.pos; // INT3 is a trap: the caller steps over it
            Err(Exit::Exception(Outcome::InjectException {
                vector: VECTOR_BP,
                error_code: None,
                len,
            }))
        }
        0x9b => d.no_lock(), // FWAIT: no x87 exception is ever pending for us
        0x0f => two_byte(m, d),
        _ => Err(d.unsupported()),
    }
}

fn two_byte(m: &mut impl Machine, d: &mut Decoder) -> Result<(), Exit> {
    use Mandatory::{None as NP, F3, P66};
    let op = d.byte()?;
    match (op, d.mandatory()) {
        (0x01, NP) => group7(m, d),
        (0x03, _) => lsl(m, d),
        (0xb0 | 0xb1, _) => cmpxchg(m, d, op),
        (0xb8, F3) => popcnt(m, d),
        (0xc7, _) => cmpxchg8b_16b(m, d),
        (0xae, NP) => ldmxcsr_stmxcsr(m, d),
        (0x6e | 0x7e | 0x6f | 0x7f | 0xd6 | 0xef, P66 | F3) => sse(m, d, op),
        _ => Err(d.unsupported()),
    }
}

/// 0f 01 with a register ModRM: CLAC, STAC, XGETBV.
fn group7(m: &mut impl Machine, d: &mut Decoder) -> Result<(), Exit> {
    match d.byte()? {
        0xca => {
            d.no_lock()?;
            m.set_rflags(m.get_rflags() & !AC);
        }
        0xcb => {
            d.no_lock()?;
            m.set_rflags(m.get_rflags() | AC);
        }
        0xd0 => {
            d.no_lock()?;
            let value = m.xcr(m.get_gpr(RCX) as u32).ok_or_else(gp0)?;
            m.set_gpr(RAX, value & 0xffff_ffff);
            m.set_gpr(RDX, value >> 32);
        }
        _ => return Err(d.unsupported()), // VMCALL, SGDT, SWAPGS, ...
    }
    Ok(())
}

/// 0f 03: LSL r, r/m16 (load segment limit). Linux's paranoid NMI/#MC
/// entry runs `lsl` on the CPUNODE GDT entry to find its CPU number.
/// Only ZF changes: set when the selector names a descriptor that LSL may
/// read, in which case the destination gets the byte-granular limit.
fn lsl(m: &mut impl Machine, d: &mut Decoder) -> Result<(), Exit> {
    let size = d.opsize();
    let rex = d.rex != 0;
    let mr = d.modrm(m)?;
    d.no_lock()?;
    let selector = read_rm(m, mr.rm, 2, rex)? as u16;
    let limit = segment_limit(m, selector)?;
    let mut flags = m.get_rflags() & !ZF;
    if let Some(limit) = limit {
        set_reg(m, mr.reg, size, rex, limit as u64);
        flags |= ZF;
    }
    m.set_rflags(flags);
    Ok(())
}

/// The limit LSL reports for `selector`, or `None` where LSL clears ZF:
/// a null selector, one past its table's limit, a descriptor type LSL
/// does not accept in long mode, or a DPL below CPL or RPL (conforming
/// code segments excepted). LSL does not check the present bit.
fn segment_limit(m: &mut impl Machine, selector: u16) -> Result<Option<u32>, Exit> {
    let ldt = selector & 4 != 0;
    if !ldt && selector & !3 == 0 {
        return Ok(None);
    }
    let Some((base, table_limit)) = m.descriptor_table(ldt) else {
        return Ok(None);
    };
    let offset = u64::from(selector & !7);
    if offset + 7 > u64::from(table_limit) {
        return Ok(None);
    }
    let desc = load(m, base.wrapping_add(offset), 8)? as u64;
    let kind = (desc >> 40) & 0xf;
    let system = desc & (1 << 44) == 0;
    let dpl = ((desc >> 45) & 3) as u8;
    // LDT, available and busy 64-bit TSS.
    if system && !matches!(kind, 0x2 | 0x9 | 0xb) {
        return Ok(None);
    }
    let conforming_code = !system && kind & 0xc == 0xc;
    if !conforming_code && (dpl < m.cpl() || dpl < (selector & 3) as u8) {
        return Ok(None);
    }
    let raw = ((desc & 0xffff) | ((desc >> 32) & 0xf_0000)) as u32;
    let granular = desc & (1 << 55) != 0;
    Ok(Some(if granular { (raw << 12) | 0xfff } else { raw }))
}

/// f3 0f b8: POPCNT r, r/m.
fn popcnt(m: &mut impl Machine, d: &mut Decoder) -> Result<(), Exit> {
    let size = d.opsize();
    let mr = d.modrm(m)?;
    d.no_lock()?;
    let src = read_rm(m, mr.rm, size, d.rex != 0)?;
    set_reg(m, mr.reg, size, d.rex != 0, src.count_ones() as u64);
    set_arith_flags(m, if src == 0 { ZF } else { 0 });
    Ok(())
}

/// 0f b0 / 0f b1: CMPXCHG r/m, r (compare with AL/AX/EAX/RAX).
fn cmpxchg(m: &mut impl Machine, d: &mut Decoder, op: u8) -> Result<(), Exit> {
    let size = if op == 0xb0 { 1 } else { d.opsize() };
    let rex = d.rex != 0;
    let mr = d.modrm(m)?;
    if d.lock && matches!(mr.rm, Operand::Reg(_)) {
        return Err(fault(VECTOR_UD, None));
    }
    let dest = read_rm(m, mr.rm, size, rex)?;
    let acc = get_reg(m, RAX, size, rex);
    if acc == dest {
        let src = get_reg(m, mr.reg, size, rex);
        write_rm(m, mr.rm, size, rex, src)?;
    } else {
        set_reg(m, RAX, size, rex, dest);
    }
    set_arith_flags(m, sub_flags(acc, dest, size));
    Ok(())
}

/// 0f c7 /1: CMPXCHG8B m64, or with REX.W CMPXCHG16B m128.
fn cmpxchg8b_16b(m: &mut impl Machine, d: &mut Decoder) -> Result<(), Exit> {
    let mr = d.modrm(m)?;
    let Operand::Mem(addr) = mr.rm else {
        return Err(d.unsupported());
    };
    if mr.reg & 7 != 1 {
        return Err(d.unsupported()); // XRSTORS, XSAVEC, XSAVES, VMPTRLD, ...
    }
    let half = if d.rex_w() { 8 } else { 4 };
    if half == 8 && addr % 16 != 0 {
        return Err(gp0());
    }
    let old = load(m, addr, half * 2)?;
    let (lo, hi) = (old as u64 & mask(half), (old >> (half * 8)) as u64);
    let (rax, rdx) = (get_reg(m, RAX, half, true), get_reg(m, RDX, half, true));
    let flags = m.get_rflags();
    if lo == rax && hi == rdx {
        let (rbx, rcx) = (get_reg(m, RBX, half, true), get_reg(m, RCX, half, true));
        store(
            m,
            addr,
            half * 2,
            ((rcx as u128) << (half * 8)) | rbx as u128,
        )?;
        m.set_rflags(flags | ZF);
    } else {
        set_reg(m, RAX, half, true, lo);
        set_reg(m, RDX, half, true, hi);
        m.set_rflags(flags & !ZF);
    }
    Ok(())
}

/// 0f ae /2 LDMXCSR m32, 0f ae /3 STMXCSR m32. (/4../6 XSAVE etc. are not ours.)
fn ldmxcsr_stmxcsr(m: &mut impl Machine, d: &mut Decoder) -> Result<(), Exit> {
    let mr = d.modrm(m)?;
    match (mr.reg & 7, mr.rm) {
        (2, Operand::Mem(addr)) => {
            d.no_lock()?;
            let value = load(m, addr, 4)? as u32;
            if value & !m.mxcsr_mask() != 0 {
                return Err(gp0());
            }
            m.set_mxcsr(value);
        }
        (3, Operand::Mem(addr)) => {
            d.no_lock()?;
            store(m, addr, 4, m.get_mxcsr() as u128)?;
        }
        _ => return Err(d.unsupported()),
    }
    Ok(())
}

/// The SSE register moves and PXOR (66 or f3 prefixed 0f xx).
fn sse(m: &mut impl Machine, d: &mut Decoder, op: u8) -> Result<(), Exit> {
    let p66 = d.mandatory() == Mandatory::P66;
    let mr = d.modrm(m)?;
    d.no_lock()?;
    let xmm = mr.reg;
    let gpr_size = if d.rex_w() { 8 } else { 4 };
    match (op, p66) {
        (0x6e, true) => {
            // MOVD/MOVQ xmm, r/m32/64: zero-extends into the XMM register.
            let v = read_rm(m, mr.rm, gpr_size, true)?;
            m.set_xmm(xmm, v as u128);
        }
        (0x7e, true) => {
            // MOVD/MOVQ r/m32/64, xmm.
            let v = m.get_xmm(xmm) as u64 & mask(gpr_size);
            write_rm(m, mr.rm, gpr_size, true, v)?;
        }
        (0x7e, false) => {
            // f3: MOVQ xmm, xmm/m64: clears bits 127:64.
            let v = read_xmm_rm(m, mr.rm, 8, false)?;
            m.set_xmm(xmm, v);
        }
        (0xd6, true) => {
            // MOVQ xmm/m64, xmm: a register destination gets bits 127:64 cleared.
            let v = m.get_xmm(xmm) as u64;
            match mr.rm {
                Operand::Reg(r) => m.set_xmm(r, v as u128),
                Operand::Mem(a) => store(m, a, 8, v as u128)?,
            }
        }
        (0x6f, aligned) => {
            // MOVDQA (66, aligned) / MOVDQU (f3) xmm, xmm/m128.
            let v = read_xmm_rm(m, mr.rm, 16, aligned)?;
            m.set_xmm(xmm, v);
        }
        (0x7f, aligned) => {
            // MOVDQA / MOVDQU xmm/m128, xmm.
            let v = m.get_xmm(xmm);
            match mr.rm {
                Operand::Reg(r) => m.set_xmm(r, v),
                Operand::Mem(a) if aligned && a % 16 != 0 => return Err(gp0()),
                Operand::Mem(a) => store(m, a, 16, v)?,
            }
        }
        (0xef, true) => {
            // PXOR xmm, xmm/m128 (legacy SSE: memory must be aligned).
            let v = read_xmm_rm(m, mr.rm, 16, true)?;
            m.set_xmm(xmm, m.get_xmm(xmm) ^ v);
        }
        _ => return Err(d.unsupported()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ops::Range;

    const RSP: usize = 4;
    const RSI: usize = 6;
    const RDI: usize = 7;
    const START_RIP: u64 = 0x1000;
    const GDT: u64 = 0x8000;

    /// A vCPU with sparse memory: `unmapped` faults on any access,
    /// `read_only` faults on writes.
    struct Fake {
        gpr: [u64; 16],
        rip: u64,
        rflags: u64,
        fs: u64,
        gs: u64,
        mem: HashMap<u64, u8>,
        unmapped: Range<u64>,
        read_only: Range<u64>,
        xmm: [u128; 16],
        mxcsr: u32,
        cpl: u8,
        gdt: (u64, u32),
        ldt: Option<(u64, u32)>,
    }

    impl Fake {
        fn new() -> Self {
            Fake {
                gpr: [0; 16],
                rip: START_RIP,
                rflags: 0x2 | RF,
                fs: 0,
                gs: 0,
                mem: HashMap::new(),
                unmapped: 0xdead_0000..0xdead_1000,
                read_only: 0xbeef_0000..0xbeef_1000,
                xmm: [0; 16],
                mxcsr: 0x1f80,
                cpl: 0,
                gdt: (GDT, 16 * 8 - 1),
                ldt: None,
            }
        }
        fn put(&mut self, addr: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                self.mem.insert(addr + i as u64, *b);
            }
        }
        fn get(&self, addr: u64, n: usize) -> Vec<u8> {
            (0..n as u64)
                .map(|i| *self.mem.get(&(addr + i)).unwrap_or(&0))
                .collect()
        }
        fn get64(&self, addr: u64) -> u64 {
            u64::from_le_bytes(self.get(addr, 8).try_into().unwrap())
        }
        fn check(&self, gva: u64, len: usize, write: bool) -> Result<(), MemFault> {
            for a in gva..gva.saturating_add(len as u64) {
                if self.unmapped.contains(&a) {
                    return Err(MemFault {
                        gva: a,
                        error_code: if write { 2 } else { 0 },
                    });
                }
                if write && self.read_only.contains(&a) {
                    return Err(MemFault {
                        gva: a,
                        error_code: 3,
                    });
                }
            }
            Ok(())
        }
    }

    impl Machine for Fake {
        fn get_gpr(&self, i: usize) -> u64 {
            self.gpr[i]
        }
        fn set_gpr(&mut self, i: usize, v: u64) {
            self.gpr[i] = v;
        }
        fn get_rip(&self) -> u64 {
            self.rip
        }
        fn set_rip(&mut self, v: u64) {
            self.rip = v;
        }
        fn get_rflags(&self) -> u64 {
            self.rflags
        }
        fn set_rflags(&mut self, v: u64) {
            self.rflags = v;
        }
        fn fs_base(&self) -> u64 {
            self.fs
        }
        fn gs_base(&self) -> u64 {
            self.gs
        }
        fn read_mem(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), MemFault> {
            self.check(gva, buf.len(), false)?;
            buf.copy_from_slice(&self.get(gva, buf.len()));
            Ok(())
        }
        fn write_mem(&mut self, gva: u64, data: &[u8]) -> Result<(), MemFault> {
            self.check(gva, data.len(), true)?;
            self.put(gva, data);
            Ok(())
        }
        fn xcr(&self, index: u32) -> Option<u64> {
            (index == 0).then_some(0x2_0000_0007)
        }
        fn get_xmm(&self, i: usize) -> u128 {
            self.xmm[i]
        }
        fn set_xmm(&mut self, i: usize, v: u128) {
            self.xmm[i] = v;
        }
        fn get_mxcsr(&self) -> u32 {
            self.mxcsr
        }
        fn set_mxcsr(&mut self, v: u32) {
            self.mxcsr = v;
        }
        fn cpl(&self) -> u8 {
            self.cpl
        }
        fn descriptor_table(&self, ldt: bool) -> Option<(u64, u32)> {
            if ldt {
                self.ldt
            } else {
                Some(self.gdt)
            }
        }
    }

    /// Runs `bytes`, expects Completed with `len` and checks RIP and RF.
    fn ok(f: &mut Fake, bytes: &[u8], len: usize) {
        let rip = f.rip;
        assert_eq!(
            emulate(f, bytes),
            Ok(Outcome::Completed { len }),
            "{bytes:02x?}"
        );
        assert_eq!(f.rip, rip + len as u64);
        assert_eq!(f.rflags & RF, 0);
    }

    /// Runs `bytes`, expects an exception or page fault and an unchanged machine.
    fn stops(f: &mut Fake, bytes: &[u8]) -> Outcome {
        let (rip, gpr, rflags, xmm, mxcsr) = (f.rip, f.gpr, f.rflags, f.xmm, f.mxcsr);
        let mem = f.mem.clone();
        let out = emulate(f, bytes).unwrap();
        assert!(!matches!(out, Outcome::Completed { .. }), "{bytes:02x?}");
        assert_eq!(
            (f.rip, f.gpr, f.rflags, f.xmm, f.mxcsr),
            (rip, gpr, rflags, xmm, mxcsr)
        );
        assert_eq!(f.mem, mem);
        out
    }

    fn gp() -> Outcome {
        Outcome::InjectException {
            vector: VECTOR_GP,
            error_code: Some(0),
            len: 0,
        }
    }

    #[test]
    fn int3_is_injected_and_caller_advances() {
        let mut f = Fake::new();
        let out = stops(&mut f, &[0xcc, 0x90]);
        assert_eq!(
            out,
            Outcome::InjectException {
                vector: 3,
                error_code: None,
                len: 1
            }
        );
    }

    #[test]
    fn fwait_is_a_noop() {
        ok(&mut Fake::new(), &[0x9b, 0xdb, 0xe3], 1);
    }

    /// A GDT like Linux's: kernel code (0x10), user data (0x2b), a 64-bit
    /// TSS (0x40), the CPUNODE entry (0x7b: byte-granular limit = CPU 1,
    /// node 2 as (node << 12) | cpu), and a non-system type-0 slot (0x70).
    fn gdt_machine() -> Fake {
        let mut f = Fake::new();
        let entries: [(u16, u64); 5] = [
            (0x10, 0x00af_9b00_0000_ffff),
            (0x28, 0x00cf_f300_0000_ffff),
            (0x40, 0x0000_8b00_0000_206f),
            (0x70, 0x0000_0000_0000_0000),
            (0x78, 0x0040_f500_0000_2001),
        ];
        for (sel, desc) in entries {
            f.put(GDT + u64::from(sel), &desc.to_le_bytes());
        }
        f
    }

    /// Runs `lsl rax, rbx` with RBX = `selector`; returns RAX.
    fn lsl_rax_rbx(f: &mut Fake, selector: u64) -> u64 {
        f.gpr[RBX] = selector;
        ok(f, &[0x48, 0x0f, 0x03, 0xc3], 4);
        f.gpr[RAX]
    }

    #[test]
    fn lsl_reads_the_cpunode_limit_like_linux_paranoid_entry() {
        let mut f = gdt_machine();
        // lsl rax, rax with rax = __CPUNODE_SEG (0x7b)
        f.gpr[RAX] = 0x7b;
        ok(&mut f, &[0x48, 0x0f, 0x03, 0xc0], 4);
        assert_eq!(f.gpr[RAX], 0x2001);
        assert_ne!(f.rflags & ZF, 0);
        // lsl ecx, [rsp]: 32-bit destination is zero-extended
        f.gpr[RCX] = u64::MAX;
        f.gpr[RSP] = 0x3000;
        f.put(0x3000, &0x7bu16.to_le_bytes());
        ok(&mut f, &[0x0f, 0x03, 0x0c, 0x24], 4);
        assert_eq!(f.gpr[RCX], 0x2001);
    }

    #[test]
    fn lsl_scales_granular_limits_and_accepts_a_tss() {
        let mut f = gdt_machine();
        assert_eq!(lsl_rax_rbx(&mut f, 0x10), 0xffff_ffff); // 4K-granular code
        assert_eq!(lsl_rax_rbx(&mut f, 0x40), 0x206f); // 64-bit TSS
        assert_ne!(f.rflags & ZF, 0);
        // 16-bit operand size keeps the upper bits
        f.gpr[RAX] = 0xaaaa_bbbb_cccc_dddd;
        f.gpr[RBX] = 0x2b;
        ok(&mut f, &[0x66, 0x0f, 0x03, 0xc3], 4);
        assert_eq!(f.gpr[RAX], 0xaaaa_bbbb_cccc_ffff);
    }

    #[test]
    fn lsl_clears_zf_and_keeps_the_destination_when_it_may_not_read() {
        let mut f = gdt_machine();
        f.cpl = 3;
        // Null (RPL 0 and 3), past the GDT limit, a type-0 system slot,
        // DPL 0 seen from CPL 3, and an LDT selector with no LDT loaded.
        for sel in [0x0u64, 0x3, 0x80, 0x70, 0x10, 0x7c] {
            f.gpr[RAX] = 0x1234;
            f.rflags |= ZF | CF;
            assert_eq!(lsl_rax_rbx(&mut f, sel), 0x1234, "selector {sel:#x}");
            assert_eq!(f.rflags & (ZF | CF), CF, "selector {sel:#x}");
        }
        // A DPL-3 segment is readable from CPL 3.
        assert_eq!(lsl_rax_rbx(&mut f, 0x7b), 0x2001);
    }

    #[test]
    fn lsl_faults_without_side_effects() {
        let mut f = gdt_machine();
        f.gdt = (0xdead_0000, 0xffff); // the GDT itself is unmapped
        f.gpr[RBX] = 0x10;
        assert!(matches!(
            stops(&mut f, &[0x48, 0x0f, 0x03, 0xc3]),
            Outcome::PageFault {
                gva: 0xdead_0010,
                ..
            }
        ));
        assert!(matches!(
            stops(&mut f, &[0xf0, 0x0f, 0x03, 0xc3]),
            Outcome::InjectException {
                vector: VECTOR_UD,
                ..
            }
        ));
    }

    #[test]
    fn popcnt_registers_and_flags() {
        let mut f = Fake::new();
        f.gpr[RAX] = u64::MAX;
        f.gpr[RCX] = 0xffff_0000_0000_00ff;
        f.rflags |= CF | OF | SF | AF | PF | ZF;
        ok(&mut f, &[0xf3, 0x0f, 0xb8, 0xc1], 4); // popcnt eax, ecx
        assert_eq!(f.gpr[RAX], 8, "32-bit destination zero-extends");
        assert_eq!(f.rflags & ARITH_FLAGS, 0);
        f.gpr[8] = u64::MAX;
        ok(&mut f, &[0xf3, 0x4d, 0x0f, 0xb8, 0xc8], 5); // popcnt r9, r8
        assert_eq!(f.gpr[9], 64);
        f.gpr[RDX] = 0xaaaa_bbbb_cccc_0000;
        f.gpr[RCX] = 0x0001_0007;
        ok(&mut f, &[0x66, 0xf3, 0x0f, 0xb8, 0xd1], 5); // popcnt dx, cx
        assert_eq!(
            f.gpr[RDX], 0xaaaa_bbbb_cccc_0003,
            "16-bit destination merges"
        );
        f.gpr[RCX] = 0;
        ok(&mut f, &[0xf3, 0x0f, 0xb8, 0xc1], 4);
        assert_eq!((f.gpr[RAX], f.rflags & ARITH_FLAGS), (0, ZF));
        // REX before a legacy prefix is ignored: this is popcnt ax, cx.
        f.gpr[RAX] = 0x1111_0000;
        ok(&mut f, &[0x48, 0x66, 0xf3, 0x0f, 0xb8, 0xc1], 6);
        assert_eq!(f.gpr[RAX], 0x1111_0000);
    }

    #[test]
    fn popcnt_memory_addressing_modes() {
        let mut f = Fake::new();
        f.put(0x2000 + 4 * 3 + 8, &[0xff, 0x0f, 0, 0, 0, 0, 0, 0x80]);
        (f.gpr[RBX], f.gpr[RCX]) = (0x2000, 3);
        ok(&mut f, &[0xf3, 0x48, 0x0f, 0xb8, 0x44, 0x8b, 0x08], 7); // [rbx+rcx*4+8]
        assert_eq!(f.gpr[RAX], 13);
        f.put(START_RIP + 8 + 0x10, &[0x07, 0, 0, 0]);
        f.rip = START_RIP;
        ok(&mut f, &[0xf3, 0x0f, 0xb8, 0x05, 0x10, 0, 0, 0], 8); // [rip+0x10]
        assert_eq!(f.gpr[RAX], 3);
        f.put(0x3000 + 2 * 4 + 0x100, &[0x03, 0, 0, 0, 0, 0, 0, 0]);
        (f.gpr[12], f.gpr[13], f.rip) = (2, 0x3000, START_RIP);
        ok(
            &mut f,
            &[0xf3, 0x4b, 0x0f, 0xb8, 0x84, 0xa5, 0, 1, 0, 0],
            10,
        ); // [r13+r12*4+0x100]
        assert_eq!(f.gpr[RAX], 2);
        f.gs = 0x4000;
        f.put(0x4020, &[0x01, 0, 0, 0]);
        f.rip = START_RIP;
        ok(
            &mut f,
            &[0x65, 0xf3, 0x0f, 0xb8, 0x04, 0x25, 0x20, 0, 0, 0],
            10,
        ); // gs:[0x20]
        assert_eq!(f.gpr[RAX], 1);
        f.fs = 0x5000;
        f.put(0x5020, &[0x0f, 0, 0, 0]);
        f.rip = START_RIP;
        ok(
            &mut f,
            &[0x64, 0xf3, 0x0f, 0xb8, 0x04, 0x25, 0x20, 0, 0, 0],
            10,
        ); // fs:[0x20]
        assert_eq!(f.gpr[RAX], 4);
        f.gpr[RAX] = 0xffff_ffff_0000_4020; // 0x67: [eax]
        ok(&mut f, &[0x67, 0xf3, 0x0f, 0xb8, 0x00], 5);
        assert_eq!(f.gpr[RAX], 1);
    }

    #[test]
    fn memory_faults_and_non_canonical() {
        let mut f = Fake::new();
        f.gpr[RSI] = 0xdead_0ffe;
        let out = stops(&mut f, &[0xf3, 0x48, 0x0f, 0xb8, 0x06]);
        assert_eq!(
            out,
            Outcome::PageFault {
                gva: 0xdead_0ffe,
                error_code: 0
            }
        );
        f.gpr[RSI] = 0x8000_0000_0000_0000;
        assert_eq!(stops(&mut f, &[0xf3, 0x0f, 0xb8, 0x06]), gp());
        f.gpr[RSI] = 0x7fff_ffff_fffc; // the last byte is not canonical
        assert_eq!(stops(&mut f, &[0xf3, 0x48, 0x0f, 0xb8, 0x06]), gp());
        f.gpr[RDI] = 0xbeef_0010;
        let out = stops(&mut f, &[0x0f, 0xae, 0x1f]); // stmxcsr [rdi]
        assert_eq!(
            out,
            Outcome::PageFault {
                gva: 0xbeef_0010,
                error_code: 3
            }
        );
    }

    #[test]
    fn clac_stac() {
        let mut f = Fake::new();
        ok(&mut f, &[0x0f, 0x01, 0xcb], 3);
        assert_ne!(f.rflags & AC, 0);
        ok(&mut f, &[0x0f, 0x01, 0xca], 3);
        assert_eq!(f.rflags & AC, 0);
        let out = stops(&mut f, &[0xf0, 0x0f, 0x01, 0xca]);
        assert_eq!(
            out,
            Outcome::InjectException {
                vector: VECTOR_UD,
                error_code: None,
                len: 0
            }
        );
    }

    #[test]
    fn xgetbv() {
        let mut f = Fake::new();
        (f.gpr[RAX], f.gpr[RDX], f.gpr[RCX]) = (u64::MAX, u64::MAX, 0xffff_ffff_0000_0000);
        ok(&mut f, &[0x0f, 0x01, 0xd0], 3);
        assert_eq!((f.gpr[RAX], f.gpr[RDX]), (7, 2));
        f.gpr[RCX] = 5;
        assert_eq!(stops(&mut f, &[0x0f, 0x01, 0xd0]), gp());
    }

    #[test]
    fn cmpxchg16b_gs_success_and_failure() {
        let mut f = Fake::new();
        (f.gs, f.gpr[RSI]) = (0x10000, 0x20);
        f.put(0x10020, &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        (f.gpr[RAX], f.gpr[RDX], f.gpr[RBX], f.gpr[RCX]) = (1, 2, 0x33, 0x44);
        f.rflags |= CF;
        let insn = [0xf0, 0x65, 0x48, 0x0f, 0xc7, 0x0e]; // lock cmpxchg16b gs:[rsi]
        ok(&mut f, &insn, 6);
        assert_eq!((f.get64(0x10020), f.get64(0x10028)), (0x33, 0x44));
        assert_eq!(f.rflags & (ZF | CF), ZF | CF, "only ZF changes");
        f.rip = START_RIP;
        ok(&mut f, &insn, 6); // now memory differs from rdx:rax
        assert_eq!((f.gpr[RAX], f.gpr[RDX], f.rflags & ZF), (0x33, 0x44, 0));
        assert_eq!((f.get64(0x10020), f.get64(0x10028)), (0x33, 0x44));
    }

    #[test]
    fn cmpxchg16b_faults() {
        let mut f = Fake::new();
        f.gpr[RSI] = 0x2008;
        assert_eq!(stops(&mut f, &[0xf0, 0x48, 0x0f, 0xc7, 0x0e]), gp()); // misaligned
        f.gpr[RSI] = 0xbeef_0000; // readable, compares equal (all zero), not writable
        let out = stops(&mut f, &[0xf0, 0x48, 0x0f, 0xc7, 0x0e]);
        assert_eq!(
            out,
            Outcome::PageFault {
                gva: 0xbeef_0000,
                error_code: 3
            }
        );
        let err = emulate(&mut f, &[0x48, 0x0f, 0xc7, 0xc8]).unwrap_err(); // register form
        assert!(matches!(err, EmulateError::Unsupported { .. }));
    }

    #[test]
    fn cmpxchg8b() {
        let mut f = Fake::new();
        f.gpr[RDI] = 0x2004;
        f.put(0x2004, &[5, 0, 0, 0, 6, 0, 0, 0]);
        (f.gpr[RAX], f.gpr[RDX]) = (0xffff_ffff_0000_0005, 0xffff_ffff_0000_0007);
        ok(&mut f, &[0xf0, 0x0f, 0xc7, 0x0f], 4); // lock cmpxchg8b [rdi]: differs
        assert_eq!((f.gpr[RAX], f.gpr[RDX], f.rflags & ZF), (5, 6, 0));
        (f.gpr[RBX], f.gpr[RCX], f.rip) = (0xaa, 0xbb, START_RIP);
        ok(&mut f, &[0xf0, 0x0f, 0xc7, 0x0f], 4);
        assert_eq!((f.get64(0x2004), f.rflags & ZF), (0xbb_0000_00aa, ZF));
    }

    #[test]
    fn cmpxchg_r_m() {
        let mut f = Fake::new();
        f.gpr[RDI] = 0x2000;
        f.put(0x2000, &[2, 0, 0, 0]);
        (f.gpr[RAX], f.gpr[RCX]) = (0xffff_ffff_0000_0001, 9);
        ok(&mut f, &[0xf0, 0x0f, 0xb1, 0x0f], 4); // lock cmpxchg [rdi], ecx: 1 != 2
        assert_eq!(f.gpr[RAX], 2);
        assert_eq!(f.rflags & ARITH_FLAGS, CF | SF | AF | PF, "flags of 1 - 2");
        f.rip = START_RIP;
        ok(&mut f, &[0xf0, 0x0f, 0xb1, 0x0f], 4);
        assert_eq!(
            (f.get(0x2000, 4), f.rflags & ARITH_FLAGS),
            (vec![9, 0, 0, 0], ZF | PF)
        );
        f.gpr[RAX] = 0x1234;
        ok(&mut f, &[0x0f, 0xb0, 0xe0], 3); // cmpxchg al, ah
        assert_eq!(f.gpr[RAX], 0x1212);
        f.gpr[RSP] = 0x55;
        ok(&mut f, &[0x40, 0x0f, 0xb0, 0xe0], 4); // cmpxchg al, spl
        assert_eq!(f.gpr[RAX], 0x1255);
        let out = stops(&mut f, &[0xf0, 0x0f, 0xb1, 0xc8]); // lock with register dest
        assert_eq!(
            out,
            Outcome::InjectException {
                vector: VECTOR_UD,
                error_code: None,
                len: 0
            }
        );
    }

    #[test]
    fn ldmxcsr_stmxcsr() {
        let mut f = Fake::new();
        f.gpr[RSI] = 0x2000;
        f.put(0x2000, &0x9fc0u32.to_le_bytes());
        ok(&mut f, &[0x0f, 0xae, 0x16], 3);
        assert_eq!(f.mxcsr, 0x9fc0);
        ok(&mut f, &[0x41, 0x0f, 0xae, 0x5d, 0x10], 5); // stmxcsr [r13+0x10]
        assert_eq!(f.get(0x10, 4), 0x9fc0u32.to_le_bytes());
        f.put(0x2000, &0x1_1f80u32.to_le_bytes());
        f.rip = START_RIP;
        assert_eq!(stops(&mut f, &[0x0f, 0xae, 0x16]), gp());
        assert_eq!(f.mxcsr, 0x9fc0);
    }

    #[test]
    fn movd_movq() {
        let mut f = Fake::new();
        f.xmm = [u128::MAX; 16];
        f.gpr[RAX] = 0x1_2345_6789;
        ok(&mut f, &[0x66, 0x0f, 0x6e, 0xc0], 4); // movd xmm0, eax
        assert_eq!(f.xmm[0], 0x2345_6789);
        f.gpr[10] = u64::MAX - 1;
        ok(&mut f, &[0x66, 0x4d, 0x0f, 0x6e, 0xca], 5); // movq xmm9, r10
        assert_eq!(f.xmm[9], (u64::MAX - 1) as u128);
        f.gpr[RAX] = u64::MAX;
        f.xmm[1] = 0x1111_2222_3333_4444_5555_6666;
        ok(&mut f, &[0x66, 0x0f, 0x7e, 0xc8], 4); // movd eax, xmm1
        assert_eq!(f.gpr[RAX], 0x5555_6666);
        f.gpr[RDI] = 0x2000;
        ok(&mut f, &[0x66, 0x48, 0x0f, 0x7e, 0x0f], 5); // movq [rdi], xmm1
        assert_eq!(f.get64(0x2000), 0x3333_4444_5555_6666);
        ok(&mut f, &[0xf3, 0x0f, 0x7e, 0xd1], 4); // movq xmm2, xmm1
        assert_eq!(f.xmm[2], 0x3333_4444_5555_6666);
        ok(&mut f, &[0xf3, 0x0f, 0x7e, 0x1f], 4); // movq xmm3, [rdi]
        assert_eq!(f.xmm[3], 0x3333_4444_5555_6666);
        f.xmm[4] = 0xabcd << 64 | 0x77;
        ok(&mut f, &[0x66, 0x0f, 0xd6, 0x67, 0x08], 5); // movq [rdi+8], xmm4
        assert_eq!(f.get64(0x2008), 0x77);
        ok(&mut f, &[0x66, 0x0f, 0xd6, 0xe5], 4); // movq xmm5, xmm4
        assert_eq!(f.xmm[5], 0x77);
        let err = emulate(&mut f, &[0x0f, 0x6e, 0xc0]).unwrap_err(); // MMX movd
        assert!(matches!(err, EmulateError::Unsupported { .. }));
    }

    #[test]
    fn movdq_and_pxor() {
        let mut f = Fake::new();
        let v: u128 = 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100;
        f.put(0x2001, &v.to_le_bytes());
        f.gpr[RSI] = 0x2001;
        ok(&mut f, &[0xf3, 0x44, 0x0f, 0x6f, 0x3e], 5); // movdqu xmm15, [rsi]
        assert_eq!(f.xmm[15], v);
        assert_eq!(stops(&mut f, &[0x66, 0x0f, 0x6f, 0x06]), gp()); // movdqa misaligned
        f.gpr[RDI] = 0x3000;
        ok(&mut f, &[0x66, 0x44, 0x0f, 0x7f, 0x3f], 5); // movdqa [rdi], xmm15
        assert_eq!(f.get(0x3000, 16), v.to_le_bytes());
        ok(&mut f, &[0xf3, 0x41, 0x0f, 0x7f, 0xff], 5); // movdqu xmm15, xmm7 (store form)
        assert_eq!(f.xmm[15], 0);
        f.xmm[1] = v;
        f.xmm[2] = u128::MAX;
        ok(&mut f, &[0x66, 0x0f, 0xef, 0xd1], 4); // pxor xmm2, xmm1
        assert_eq!(f.xmm[2], !v);
        ok(&mut f, &[0x66, 0x0f, 0xef, 0x17], 4); // pxor xmm2, [rdi]
        assert_eq!(f.xmm[2], u128::MAX);
    }

    #[test]
    fn unsupported_and_vmcall() {
        let mut f = Fake::new();
        for bytes in [
            &[0x0f, 0x0b][..],         // ud2
            &[0x0f, 0xae, 0x27],       // xsave [rdi]
            &[0x48, 0x0f, 0xae, 0x2f], // xrstor64 [rdi]
            &[0x0f, 0xae, 0x37],       // xsaveopt [rdi]
            &[0x0f, 0x01, 0xc1],       // vmcall
            &[0x0f, 0xb8, 0xc1],       // popcnt without f3 (jmpe)
            &[0xf4],                   // hlt
        ] {
            let err = emulate(&mut f, bytes).unwrap_err();
            assert_eq!(
                err,
                EmulateError::Unsupported {
                    bytes: bytes.to_vec()
                }
            );
            assert_eq!(f.rip, START_RIP);
        }
        assert!(is_vmcall(&[0x0f, 0x01, 0xc1, 0x90]));
        assert!(!is_vmcall(&[0x0f, 0x01, 0xd0]));
        let msg = EmulateError::Unsupported {
            bytes: vec![0x0f, 0x0b],
        }
        .to_string();
        assert_eq!(msg, "cannot emulate instruction (bytes at RIP: 0f 0b)");
    }

    #[test]
    fn truncated_and_too_long() {
        let mut f = Fake::new();
        for bytes in [
            &[][..],
            &[0xf3, 0x0f, 0xb8],
            &[0xf3, 0x0f, 0xb8, 0x05, 0x10, 0],
            &[0xf3, 0x0f, 0xb8, 0x44, 0x8b],
            &[0xf0, 0x48, 0x0f, 0xc7],
            &[0x0f, 0x01],
        ] {
            let err = emulate(&mut f, bytes).unwrap_err();
            assert_eq!(
                err,
                EmulateError::Truncated {
                    bytes: bytes.to_vec()
                }
            );
        }
        assert_eq!(stops(&mut f, &[0x66; 20]), gp()); // over 15 bytes
    }

    /// Random bytes never panic, and RIP moves only on Completed.
    #[test]
    fn random_bytes_never_panic() {
        const LIKELY: [u8; 16] = [
            0x0f, 0x01, 0x66, 0xf3, 0xf0, 0x48, 0x4d, 0x65, 0x67, 0xc7, 0xb8, 0xae, 0x6e, 0x7e,
            0xd6, 0xcc,
        ];
        let mut rng = crate::testing::Rng(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next();
        for _ in 0..100_000 {
            let mut f = Fake::new();
            for r in f.gpr.iter_mut() {
                *r = if next() % 2 == 0 {
                    next()
                } else {
                    next() % 0x1_0000
                };
            }
            let mut bytes = [0u8; 15];
            for b in bytes.iter_mut() {
                let r = next();
                *b = if r % 2 == 0 {
                    LIKELY[(r >> 8) as usize % 16]
                } else {
                    (r >> 8) as u8
                };
            }
            let n = next() as usize % 16;
            match emulate(&mut f, &bytes[..n]) {
                Ok(Outcome::Completed { len }) => assert_eq!(f.rip, START_RIP + len as u64),
                _ => assert_eq!(f.rip, START_RIP),
            }
        }
    }
}
