//! The emulator's view of a stopped vCPU: registers, segment bases, XCRs,
//! SSE state and guest-virtual memory (translated with KVM_TRANSLATE),
//! loaded on demand and written back once.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::emulate::{self, Machine, MemFault, Outcome};
use super::syscall::{self, FaultFrame};
use super::PvmError;

const PAGE: u64 = 4096;
const RFLAGS_RF: u64 = 1 << 16;
/// -KVM_ENOSYS: what KVM returns for an unknown hypercall.
const KVM_ENOSYS: u64 = 1000;

/// Reads one MSR of vCPU `fd` (None if KVM does not return it).
pub fn read_msr(fd: &VcpuFd, index: u32) -> Option<u64> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .ok()?;
    match fd.get_msrs(&mut msrs) {
        Ok(1) => Some(msrs.as_slice()[0].data),
        _ => None,
    }
}

/// A vCPU snapshot the emulator works on.
pub struct VcpuMachine<'a> {
    fd: &'a VcpuFd,
    mem: &'a GuestMemoryMmap,
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: Option<kvm_fpu>,
    fpu_dirty: bool,
}

impl<'a> VcpuMachine<'a> {
    /// Reads registers and special registers.
    pub fn load(fd: &'a VcpuFd, mem: &'a GuestMemoryMmap) -> Result<Self, PvmError> {
        Ok(VcpuMachine {
            fd,
            mem,
            regs: fd.get_regs().map_err(|e| PvmError::VcpuState("read", e))?,
            sregs: fd.get_sregs().map_err(|e| PvmError::VcpuState("read", e))?,
            fpu: None,
            fpu_dirty: false,
        })
    }

    fn fpu(&mut self) -> &mut kvm_fpu {
        if self.fpu.is_none() {
            self.fpu = Some(self.fd.get_fpu().unwrap_or_default());
        }
        self.fpu.as_mut().expect("loaded above")
    }

    /// Guest-physical address of `gva`, checking write permission if asked.
    fn translate(&self, gva: u64, write: bool) -> Result<u64, MemFault> {
        let t = self.fd.translate_gva(gva).map_err(|_| MemFault {
            gva,
            error_code: u32::from(write) << 1,
        })?;
        if t.valid == 0 {
            return Err(MemFault {
                gva,
                error_code: u32::from(write) << 1,
            });
        }
        if write && t.writeable == 0 {
            return Err(MemFault {
                gva,
                error_code: 0b11,
            });
        }
        Ok(t.physical_address)
    }

    /// Splits `[gva, gva+len)` at page boundaries into (gpa, offset, len) pieces.
    fn pieces(
        &self,
        gva: u64,
        len: usize,
        write: bool,
    ) -> Result<Vec<(u64, usize, usize)>, MemFault> {
        let mut out = Vec::new();
        let mut done = 0usize;
        while done < len {
            let va = gva.wrapping_add(done as u64);
            let chunk = ((PAGE - (va % PAGE)) as usize).min(len - done);
            out.push((self.translate(va, write)?, done, chunk));
            done += chunk;
        }
        Ok(out)
    }

    /// Writes the results back and resumes according to `outcome`.
    pub fn apply(&mut self, outcome: Outcome) -> Result<(), PvmError> {
        match outcome {
            Outcome::Completed { .. } => {}
            Outcome::InjectException {
                vector,
                error_code,
                len,
            } => {
                self.regs.rip = self.regs.rip.wrapping_add(len as u64);
                self.inject(vector, error_code)?;
            }
            Outcome::PageFault { gva, error_code } => {
                self.sregs.cr2 = gva;
                self.store_sregs()?;
                self.inject(emulate::VECTOR_PF, Some(error_code))?;
            }
        }
        if self.fpu_dirty {
            if let Some(fpu) = &self.fpu {
                self.fd
                    .set_fpu(fpu)
                    .map_err(|e| PvmError::VcpuState("write", e))?;
            }
        }
        self.store_regs()
    }

    fn inject(&self, vector: u8, error_code: Option<u32>) -> Result<(), PvmError> {
        let mut ev = self
            .fd
            .get_vcpu_events()
            .map_err(|e| PvmError::VcpuState("read", e))?;
        ev.exception.injected = 1;
        ev.exception.nr = vector;
        ev.exception.has_error_code = u8::from(error_code.is_some());
        ev.exception.error_code = error_code.unwrap_or(0);
        self.fd
            .set_vcpu_events(&ev)
            .map_err(|e| PvmError::VcpuState("write", e))
    }

    /// Writes the general registers back to the vCPU.
    fn store_regs(&self) -> Result<(), PvmError> {
        self.fd
            .set_regs(&self.regs)
            .map_err(|e| PvmError::VcpuState("write", e))
    }

    /// Writes the special registers back to the vCPU.
    fn store_sregs(&self) -> Result<(), PvmError> {
        self.fd
            .set_sregs(&self.sregs)
            .map_err(|e| PvmError::VcpuState("write", e))
    }

    /// Reads one MSR.
    pub fn read_msr(&self, index: u32) -> Option<u64> {
        read_msr(self.fd, index)
    }

    /// The guest's page-fault handler, from IDT[14], once it has an IDT.
    pub fn page_fault_handler(&mut self) -> Option<u64> {
        let idt = self.sregs.idt;
        let offset = syscall::PF_VECTOR * syscall::GATE_SIZE;
        if u64::from(idt.limit) < offset + syscall::GATE_SIZE - 1 {
            return None;
        }
        let mut gate = [0u8; 16];
        self.read_mem(idt.base + offset, &mut gate).ok()?;
        syscall::gate_handler(&gate)
    }

    /// The exception frame at RSP (the vCPU sits on a handler's first instruction).
    pub fn fault_frame(&mut self) -> Option<FaultFrame> {
        let mut b = [0u8; FaultFrame::SIZE];
        self.read_mem(self.regs.rsp, &mut b).ok()?;
        Some(FaultFrame::parse(&b))
    }

    /// Finishes a SYSCALL the host left at ring 3: drop the fault frame
    /// and enter LSTAR at ring 0 with the kernel's CS/SS from STAR.
    pub fn complete_syscall(
        &mut self,
        frame: &FaultFrame,
        lstar: u64,
        star: u64,
    ) -> Result<(), PvmError> {
        let (cs, ss) = syscall::syscall_segments(star);
        self.sregs.cs = cs;
        self.sregs.ss = ss;
        self.regs.rip = lstar;
        self.regs.rsp = frame.rsp;
        self.regs.rflags = (frame.rflags & !RFLAGS_RF) | 2;
        self.store_sregs()?;
        self.store_regs()
    }

    /// Steps over the instruction at RIP without executing it, when
    /// [`syscall::skip_first_instruction`] knows it; returns whether it did.
    pub fn skip_first_instruction(&mut self) -> Result<bool, PvmError> {
        let mut b = [0u8; 9];
        if self.read_mem(self.regs.rip, &mut b).is_err() {
            return Ok(false);
        }
        let Some((len, clear)) = syscall::skip_first_instruction(&b) else {
            return Ok(false);
        };
        self.regs.rip += len;
        self.regs.rflags &= !clear;
        self.store_regs()?;
        Ok(true)
    }

    /// If RIP is parked on a VMCALL, completes it with -KVM_ENOSYS.
    pub fn complete_vmcall(&mut self) -> Result<bool, PvmError> {
        // Only ring 0 makes hypercalls.
        if self.sregs.cs.selector & 3 != 0 {
            return Ok(false);
        }
        let mut b = [0u8; 3];
        let rip = self.regs.rip;
        if self.read_mem(rip, &mut b).is_err() || !emulate::is_vmcall(&b) {
            return Ok(false);
        }
        self.regs.rax = KVM_ENOSYS.wrapping_neg();
        self.regs.rip = rip + 3;
        self.store_regs()?;
        Ok(true)
    }
}

impl Machine for VcpuMachine<'_> {
    fn get_gpr(&self, index: usize) -> u64 {
        let r = &self.regs;
        [
            r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ][index & 15]
    }

    fn set_gpr(&mut self, index: usize, value: u64) {
        let r = &mut self.regs;
        let slot = match index & 15 {
            0 => &mut r.rax,
            1 => &mut r.rcx,
            2 => &mut r.rdx,
            3 => &mut r.rbx,
            4 => &mut r.rsp,
            5 => &mut r.rbp,
            6 => &mut r.rsi,
            7 => &mut r.rdi,
            8 => &mut r.r8,
            9 => &mut r.r9,
            10 => &mut r.r10,
            11 => &mut r.r11,
            12 => &mut r.r12,
            13 => &mut r.r13,
            14 => &mut r.r14,
            _ => &mut r.r15,
        };
        *slot = value;
    }

    fn get_rip(&self) -> u64 {
        self.regs.rip
    }

    fn set_rip(&mut self, value: u64) {
        self.regs.rip = value;
    }

    fn get_rflags(&self) -> u64 {
        self.regs.rflags
    }

    fn set_rflags(&mut self, value: u64) {
        self.regs.rflags = value;
    }

    fn fs_base(&self) -> u64 {
        self.sregs.fs.base
    }

    fn gs_base(&self) -> u64 {
        self.sregs.gs.base
    }

    fn read_mem(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        for (gpa, off, len) in self.pieces(gva, buf.len(), false)? {
            self.mem
                .read_slice(&mut buf[off..off + len], GuestAddress(gpa))
                .map_err(|_| MemFault { gva, error_code: 0 })?;
        }
        Ok(())
    }

    fn write_mem(&mut self, gva: u64, data: &[u8]) -> Result<(), MemFault> {
        // All pages are translated before any byte is written.
        for (gpa, off, len) in self.pieces(gva, data.len(), true)? {
            self.mem
                .write_slice(&data[off..off + len], GuestAddress(gpa))
                .map_err(|_| MemFault { gva, error_code: 2 })?;
        }
        Ok(())
    }

    fn xcr(&self, index: u32) -> Option<u64> {
        let xcrs = self.fd.get_xcrs().ok()?;
        xcrs.xcrs[..xcrs.nr_xcrs as usize]
            .iter()
            .find(|x| x.xcr == index)
            .map(|x| x.value)
    }

    fn get_xmm(&self, index: usize) -> u128 {
        let fpu = match &self.fpu {
            Some(f) => *f,
            None => self.fd.get_fpu().unwrap_or_default(),
        };
        u128::from_le_bytes(fpu.xmm[index & 15])
    }

    fn set_xmm(&mut self, index: usize, value: u128) {
        self.fpu().xmm[index & 15] = value.to_le_bytes();
        self.fpu_dirty = true;
    }

    fn get_mxcsr(&self) -> u32 {
        match &self.fpu {
            Some(f) => f.mxcsr,
            None => self.fd.get_fpu().map(|f| f.mxcsr).unwrap_or(0x1f80),
        }
    }

    fn set_mxcsr(&mut self, value: u32) {
        self.fpu().mxcsr = value;
        self.fpu_dirty = true;
    }

    fn cpl(&self) -> u8 {
        (self.sregs.cs.selector & 3) as u8
    }

    fn descriptor_table(&self, ldt: bool) -> Option<(u64, u32)> {
        if !ldt {
            return Some((self.sregs.gdt.base, self.sregs.gdt.limit.into()));
        }
        let l = self.sregs.ldt;
        (l.present != 0 && l.unusable == 0 && l.selector & !7 != 0).then_some((l.base, l.limit))
    }
}
