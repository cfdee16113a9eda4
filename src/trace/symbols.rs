//! Guest addresses to function names, from the ELF symbol table of the
//! kernel kiln boots (a `vmlinux`, or the test payload), or, when that was
//! stripped (Debian's vmlinux), from the kallsyms table inside the kernel
//! image. A bzImage gives none (its kernel is compressed): the trace then
//! shows bare addresses.

use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

/// Function symbols, sorted by address.
#[derive(Debug)]
pub struct Symbols {
    /// (address, size, name).
    funcs: Vec<(u64, u64, String)>,
    /// The ELF symbol table or the kallsyms table.
    source: &'static str,
}

impl Symbols {
    /// The text symbols of the ELF file at `path`; an error says why there
    /// are none.
    pub fn from_elf(path: &Path) -> Result<Symbols, String> {
        let data =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Symbols::parse(&data).map_err(|why| format!("{}: {why}", path.display()))
    }

    fn parse(data: &[u8]) -> Result<Symbols, String> {
        let file = object::File::parse(data).map_err(|_| {
            "not an ELF file (a bzImage carries no symbols: give the vmlinux)".to_string()
        })?;
        // Functions, and labels in code (hand-written assembly has no
        // symbol types).
        let in_code = |s: &object::Symbol| {
            s.section_index()
                .and_then(|i| file.section_by_index(i).ok())
                .is_some_and(|sec| sec.kind() == SectionKind::Text)
        };
        let mut funcs: Vec<(u64, u64, String)> = file
            .symbols()
            .filter(|s| {
                s.address() != 0
                    && matches!(
                        s.kind(),
                        SymbolKind::Text | SymbolKind::Label | SymbolKind::Unknown
                    )
                    && in_code(s)
            })
            .filter_map(|s| {
                let name = s.name().ok()?;
                // Rust symbols (the test agent) read as paths; C names stay.
                Some((
                    s.address(),
                    s.size(),
                    format!("{:#}", rustc_demangle::demangle(name)),
                ))
            })
            .filter(|(_, _, name)| !name.is_empty() && !name.starts_with(".L"))
            .collect();
        let mut source = "ELF symbol table";
        if funcs.is_empty() {
            // A stripped Linux vmlinux still carries /proc/kallsyms' table.
            funcs = super::kallsyms::parse(data)
                .unwrap_or_default()
                .into_iter()
                .filter(|(addr, kind, _)| addr >> 48 == 0xffff && "TtWw".contains(*kind))
                .map(|(addr, _, name)| (addr, 0, name))
                .collect();
            source = "kernel's kallsyms table";
        }
        if funcs.is_empty() {
            return Err("no symbol table (stripped) and no kallsyms table".into());
        }
        funcs.sort_by_key(|&(addr, _, _)| addr);
        funcs.dedup_by_key(|s| s.0);
        Ok(Symbols { funcs, source })
    }

    /// Where the names came from.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// How many functions are known.
    pub fn len(&self) -> usize {
        self.funcs.len()
    }

    /// `name+0xoff` for `addr`, when it falls inside (or, for symbols
    /// without a size, after) a known function.
    pub fn name(&self, addr: u64) -> Option<String> {
        let i = self.funcs.partition_point(|&(a, _, _)| a <= addr);
        let (start, size, name) = self.funcs.get(i.checked_sub(1)?)?;
        let off = addr - start;
        let next = self.funcs.get(i).map_or(u64::MAX, |f| f.0);
        if (*size != 0 && off >= *size) || (*size == 0 && addr >= next) {
            return None;
        }
        Some(if off == 0 {
            name.clone()
        } else {
            format!("{name}+{off:#x}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_addresses_inside_functions() {
        let s = Symbols {
            source: "test",
            funcs: vec![
                (0x1000, 0x10, "a".into()),
                (0x1010, 0, "label".into()),
                (0x1020, 0x8, "b".into()),
            ],
        };
        assert_eq!(s.name(0x1000).as_deref(), Some("a"));
        assert_eq!(s.name(0x100f).as_deref(), Some("a+0xf"));
        assert_eq!(s.name(0x1018).as_deref(), Some("label+0x8"));
        assert_eq!(s.name(0x1024).as_deref(), Some("b+0x4"));
        assert_eq!(s.name(0x1028), None);
        assert_eq!(s.name(0xfff), None);
    }

    #[test]
    fn a_non_elf_file_says_why() {
        let e = Symbols::parse(b"MZ not an elf").unwrap_err();
        assert!(e.contains("bzImage"), "{e}");
    }

    #[test]
    fn reads_its_own_executable() {
        // The test binary is an ELF file with symbols.
        let me = std::env::current_exe().unwrap();
        let s = Symbols::from_elf(&me).unwrap();
        assert!(s.len() > 100);
        let main_addr = s.funcs.iter().find(|f| f.2 == "main").map(|f| f.0);
        if let Some(a) = main_addr {
            assert_eq!(s.name(a).as_deref(), Some("main"));
        }
    }
}
