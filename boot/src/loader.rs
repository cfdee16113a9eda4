//! Loading the guest kernel (ELF vmlinux, with or without a PVH entry note,
//! or a bzImage) and the initrd, through linux-loader.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

use crate::cpu::EntryMode;
use crate::layout;
use crate::zero_page::InitrdPlacement;

/// Errors loading a kernel or an initrd.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The file is neither an ELF nor a bzImage.
    #[error("not a Linux kernel: neither an ELF (vmlinux) nor a bzImage")]
    UnknownFormat,
    /// Reading the file failed.
    #[error("cannot read the file: {0}")]
    Read(#[source] std::io::Error),
    /// The ELF loader refused the image.
    #[error("cannot load the ELF kernel: {0}")]
    Elf(linux_loader::loader::Error),
    /// The bzImage loader refused the image.
    #[error("cannot load the bzImage: {0}")]
    BzImage(linux_loader::loader::Error),
    /// A bzImage that cannot be entered in 64-bit mode.
    #[error("this bzImage has no 64-bit entry point (boot protocol {0:#x}); kiln boots 64-bit kernels only")]
    No64BitEntry(u16),
    /// The initrd does not fit where the kernel can use it.
    #[error("the initrd ({size} bytes) does not fit in guest RAM between the kernel end ({kernel_end:#x}) and {limit:#x}; give the guest more --memory or use a smaller initrd")]
    InitrdTooBig {
        /// initrd size.
        size: u64,
        /// End of the loaded kernel.
        kernel_end: u64,
        /// Highest address the initrd may reach.
        limit: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("cannot copy the initrd into guest memory")]
    WriteInitrd,
    /// The file ends before what its headers describe.
    #[error("it is truncated: its headers describe {need} bytes, the file has {have}")]
    Truncated {
        /// Bytes the headers call for.
        need: u64,
        /// Bytes in the file.
        have: u64,
    },
    /// An ELF file that is not a kernel.
    #[error("it is an ELF file but not a kernel: {0}")]
    NotKernelElf(&'static str),
}

/// Which format a kernel file has, decided from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF executable (vmlinux or a test payload).
    Elf,
    /// A bzImage (x86 boot protocol, "HdrS" at 0x202).
    BzImage,
}

/// Bytes of a kernel file needed by [`detect_format`].
pub const DETECT_LEN: usize = 0x206;

/// Decides the kernel format from the file's first [`DETECT_LEN`] bytes.
pub fn detect_format(head: &[u8]) -> Option<KernelFormat> {
    if head.len() >= 4 && head[..4] == *b"\x7fELF" {
        return Some(KernelFormat::Elf);
    }
    if head.len() >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// Reads the start of a file and detects its format.
pub fn detect_file(file: &mut File) -> Result<KernelFormat, LoaderError> {
    let mut head = vec![0u8; DETECT_LEN];
    file.seek(SeekFrom::Start(0)).map_err(LoaderError::Read)?;
    let n = read_up_to(file, &mut head).map_err(LoaderError::Read)?;
    detect_format(&head[..n]).ok_or(LoaderError::UnknownFormat)
}

/// As [`detect_file`], and checks that the file holds everything its
/// headers describe, so that a truncated or foreign file is refused
/// before a guest runs off its end.
pub fn check_file(file: &mut File) -> Result<KernelFormat, LoaderError> {
    let have = file.metadata().map_err(LoaderError::Read)?.len();
    file.seek(SeekFrom::Start(0)).map_err(LoaderError::Read)?;
    let mut head = vec![0u8; ELF_HEADER_READ.max(DETECT_LEN)];
    let n = read_up_to(file, &mut head).map_err(LoaderError::Read)?;
    head.truncate(n);
    let format = detect_format(&head).ok_or(LoaderError::UnknownFormat)?;
    let need = match format {
        KernelFormat::BzImage => bzimage_len(&head),
        KernelFormat::Elf => {
            let (phoff, count) = elf_program_headers(&head)?;
            let size = count * ELF_PHDR_LEN;
            if phoff + size > have {
                return Err(LoaderError::Truncated {
                    need: phoff + size,
                    have,
                });
            }
            let mut table = vec![0u8; size as usize];
            file.seek(SeekFrom::Start(phoff))
                .map_err(LoaderError::Read)?;
            file.read_exact(&mut table).map_err(LoaderError::Read)?;
            elf_segments_end(&table)
        }
    };
    file.seek(SeekFrom::Start(0)).map_err(LoaderError::Read)?;
    if need > have {
        return Err(LoaderError::Truncated { need, have });
    }
    Ok(format)
}

/// Bytes of an ELF64 header.
const ELF_HEADER_READ: usize = 64;
/// Bytes of one ELF64 program header.
const ELF_PHDR_LEN: u64 = 56;
/// The most program headers kiln accepts (a vmlinux has a handful).
const ELF_MAX_PHDRS: u64 = 64;

fn le(bytes: &[u8], at: usize, len: usize) -> u64 {
    bytes
        .get(at..at + len)
        .map(|b| {
            b.iter()
                .rev()
                .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
        })
        .unwrap_or(0)
}

/// The length a bzImage's setup header promises: the setup sectors plus
/// the boot sector, then `syssize` 16-byte paragraphs of protected-mode
/// code (Linux's boot protocol, "THE REAL-MODE KERNEL HEADER").
fn bzimage_len(head: &[u8]) -> u64 {
    let setup_sects = match le(head, 0x1f1, 1) {
        0 => 4,
        n => n,
    };
    (setup_sects + 1) * 512 + le(head, 0x1f4, 4) * 16
}

/// Where an ELF kernel's program headers are and how many there are,
/// after checking that it is a 64-bit x86 executable.
fn elf_program_headers(head: &[u8]) -> Result<(u64, u64), LoaderError> {
    if head.len() < ELF_HEADER_READ {
        return Err(LoaderError::Truncated {
            need: ELF_HEADER_READ as u64,
            have: head.len() as u64,
        });
    }
    if head[4] != 2 {
        return Err(LoaderError::NotKernelElf(
            "32-bit (kiln boots 64-bit kernels)",
        ));
    }
    if le(head, 0x12, 2) != 62 {
        return Err(LoaderError::NotKernelElf("not built for x86-64"));
    }
    if le(head, 0x10, 2) != 2 {
        return Err(LoaderError::NotKernelElf(
            "not an executable (a program or library, say; a kernel is the vmlinux a kernel build leaves)",
        ));
    }
    let count = le(head, 0x38, 2);
    if count == 0 || count > ELF_MAX_PHDRS || le(head, 0x36, 2) != ELF_PHDR_LEN {
        return Err(LoaderError::NotKernelElf("no usable program headers"));
    }
    Ok((le(head, 0x20, 8), count))
}

/// The end of the last loadable segment's bytes in the file.
fn elf_segments_end(table: &[u8]) -> u64 {
    table
        .chunks_exact(ELF_PHDR_LEN as usize)
        .filter(|ph| le(ph, 0, 4) == 1) // PT_LOAD
        .map(|ph| le(ph, 0x08, 8).saturating_add(le(ph, 0x20, 8)))
        .max()
        .unwrap_or(0)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What the loader found out about a loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Address the boot vCPU starts at.
    pub entry: u64,
    /// Mode it starts in.
    pub mode: EntryMode,
    /// First byte after the kernel image in guest memory.
    pub kernel_end: u64,
    /// Setup header to put into boot_params (a bzImage's own, or a default).
    pub setup_header: Option<setup_header>,
    /// Format of the file.
    pub format: KernelFormat,
}

impl LoadedKernel {
    /// Highest address (inclusive) the kernel accepts for its initrd.
    pub fn initrd_addr_max(&self) -> u64 {
        match self.setup_header {
            Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
            // Linux's value for 2.03+ kernels; ELF/PVH kernels have no header.
            _ => 0x7fff_ffff,
        }
    }

    /// Longest command line the kernel accepts, without the terminating NUL.
    pub fn cmdline_max(&self) -> usize {
        match self.setup_header {
            Some(h) if h.version >= 0x0206 && h.cmdline_size != 0 => h.cmdline_size as usize,
            Some(_) => 255,
            // x86's COMMAND_LINE_SIZE (2048) less the NUL.
            None => 2047,
        }
    }
}

/// Loads a kernel of either format into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, file: &mut File) -> Result<LoadedKernel, LoaderError> {
    let format = detect_file(file)?;
    let himem = Some(GuestAddress(layout::HIMEM_START));
    match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, file, himem).map_err(LoaderError::Elf)?;
            let (entry, mode) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (addr.0, EntryMode::Pvh32),
                _ => (r.kernel_load.0, EntryMode::Long64),
            };
            Ok(LoadedKernel {
                entry,
                mode,
                kernel_end: r.kernel_end,
                setup_header: None,
                format,
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, file, himem).map_err(LoaderError::BzImage)?;
            let hdr = r.setup_header.ok_or(LoaderError::UnknownFormat)?;
            // 64-bit entry needs protocol 2.12+ with XLF_KERNEL_64 (xloadflags bit 0).
            if hdr.version < 0x020c || hdr.xloadflags & 1 == 0 {
                return Err(LoaderError::No64BitEntry(hdr.version));
            }
            let kernel_end = r.kernel_load.0 + u64::from(hdr.init_size).max(r.kernel_end);
            Ok(LoadedKernel {
                // The 64-bit entry point is 0x200 bytes into the protected-mode kernel.
                entry: r.kernel_load.0 + 0x200,
                mode: EntryMode::Long64,
                kernel_end,
                setup_header: Some(hdr),
                format,
            })
        }
    }
}

/// Chooses where the initrd goes: as high as possible (page aligned) below
/// both the kernel's `initrd_addr_max` and the end of low RAM, above the kernel.
pub fn place_initrd(
    size: u64,
    kernel_end: u64,
    addr_max: u64,
    low_ram_end: u64,
) -> Result<InitrdPlacement, LoaderError> {
    let limit = (addr_max + 1).min(low_ram_end);
    let too_big = LoaderError::InitrdTooBig {
        size,
        kernel_end,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or(too_big)? & !0xfff;
    if addr < kernel_end {
        return Err(LoaderError::InitrdTooBig {
            size,
            kernel_end,
            limit,
        });
    }
    Ok(InitrdPlacement { addr, size })
}

/// Copies an initrd file into guest memory at `place`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    file: &mut File,
    place: InitrdPlacement,
) -> Result<(), LoaderError> {
    file.seek(SeekFrom::Start(0)).map_err(LoaderError::Read)?;
    let mut left = place.size as usize;
    let mut addr = GuestAddress(place.addr);
    while left > 0 {
        let slice = mem
            .get_slice(addr, left)
            .map_err(|_| LoaderError::WriteInitrd)?;
        let n = file
            .read_volatile(&mut slice.clone())
            .map_err(|e| LoaderError::Read(std::io::Error::other(e.to_string())))?;
        if n == 0 {
            return Err(LoaderError::WriteInitrd);
        }
        left -= n;
        addr = GuestAddress(addr.0 + n as u64);
    }
    Ok(())
}

/// Writes the NUL-terminated command line.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), LoaderError> {
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(|_| LoaderError::WriteInitrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        assert_eq!(detect_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; DETECT_LEN];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_format(b"#!/bin/sh\n"), None);
        assert_eq!(detect_format(&[]), None);
    }

    fn file_with(bytes: &[u8]) -> File {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn bzimage(setup_sects: u8, syssize: u32, len: usize) -> Vec<u8> {
        let mut bz = vec![0u8; len];
        bz[0x1f1] = setup_sects;
        bz[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz
    }

    #[test]
    fn a_truncated_bzimage_is_refused() {
        // 3 setup sectors + boot sector = 2048 bytes, then 100 paragraphs.
        let whole = bzimage(3, 100, 2048 + 1600);
        assert_eq!(
            check_file(&mut file_with(&whole)).unwrap(),
            KernelFormat::BzImage
        );
        let cut = &whole[..2048 + 1599];
        match check_file(&mut file_with(cut)) {
            Err(LoaderError::Truncated { need, have }) => assert_eq!((need, have), (3648, 3647)),
            other => panic!("{other:?}"),
        }
        // setup_sects 0 means 4.
        assert_eq!(bzimage_len(&bzimage(0, 0, 0x206)), 2560);
    }

    fn elf(kind: u16, segments: &[(u64, u64)], len: usize) -> Vec<u8> {
        let mut e = vec![0u8; len];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[0x10..0x12].copy_from_slice(&kind.to_le_bytes());
        e[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (i, &(offset, size)) in segments.iter().enumerate() {
            let ph = 64 + i * 56;
            e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
            e[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            e[ph + 0x20..ph + 0x28].copy_from_slice(&size.to_le_bytes());
        }
        e
    }

    #[test]
    fn a_truncated_or_foreign_elf_is_refused() {
        let whole = elf(2, &[(0x1000, 0x800), (0x2000, 0x1000)], 0x3000);
        assert_eq!(
            check_file(&mut file_with(&whole)).unwrap(),
            KernelFormat::Elf
        );
        assert!(matches!(
            check_file(&mut file_with(&whole[..0x2fff])),
            Err(LoaderError::Truncated { need: 0x3000, .. })
        ));
        assert!(matches!(
            check_file(&mut file_with(&whole[..100])),
            Err(LoaderError::Truncated { need: 176, .. })
        ));
        assert!(matches!(
            check_file(&mut file_with(&whole[..40])),
            Err(LoaderError::Truncated { need: 64, have: 40 })
        ));
        let program = elf(3, &[(0, 0x100)], 0x100);
        assert!(matches!(
            check_file(&mut file_with(&program)),
            Err(LoaderError::NotKernelElf(_))
        ));
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let p = place_initrd(0x1234, 0x200_0000, 0x7fff_ffff, 256 << 20).unwrap();
        assert_eq!(p.addr, ((256 << 20) - 0x1234) & !0xfff);
        assert_eq!(p.addr % 0x1000, 0);
        assert!(p.addr + p.size <= 256 << 20);
        // initrd_addr_max below the end of RAM wins.
        let p = place_initrd(0x1000, 0x200_0000, 0x37ff_ffff, 2 << 30).unwrap();
        assert_eq!(p.addr + p.size, 0x3800_0000);
    }

    #[test]
    fn initrd_that_does_not_fit_is_an_error() {
        assert!(place_initrd(300 << 20, 0x200_0000, 0x7fff_ffff, 256 << 20).is_err());
        assert!(place_initrd(250 << 20, 0x200_0000 + (10 << 20), 0x7fff_ffff, 256 << 20).is_err());
    }

    #[test]
    fn cmdline_limits() {
        let k = LoadedKernel {
            entry: 0,
            mode: EntryMode::Long64,
            kernel_end: 0,
            setup_header: None,
            format: KernelFormat::Elf,
        };
        assert_eq!(k.cmdline_max(), 2047);
        let hdr = setup_header {
            version: 0x020f,
            cmdline_size: 2047,
            ..Default::default()
        };
        let k = LoadedKernel {
            setup_header: Some(hdr),
            ..k
        };
        assert_eq!(k.cmdline_max(), 2047);
    }
}
