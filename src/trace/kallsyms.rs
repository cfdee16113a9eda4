//! Function names from the kallsyms table inside a Linux `vmlinux`, for
//! kernels whose ELF symbol table was stripped (Debian's): the kernel
//! carries its own table for /proc/kallsyms in .rodata. Found the way
//! vmlinux-to-elf (and resources/kallsyms.py) find it, without knowing the
//! layout's addresses:
//!
//! - `kallsyms_token_table`: 256 NUL-terminated strings; the digits
//!   '0'..'9' stand for themselves, in a row;
//! - `kallsyms_token_index`: 256 u16 offsets into the token table, just
//!   after it;
//! - `kallsyms_markers`: a u32 per 256 symbols (the first 0), before the
//!   token table (since 6.2, and in Debian's 6.1, `kallsyms_seqs_of_names`
//!   sits in between);
//! - `kallsyms_names`: per symbol a length byte (two for long names) and
//!   token bytes, the first character the symbol's type; right after
//!   `kallsyms_num_syms`;
//! - `kallsyms_offsets`: an i32 per symbol, relative to
//!   `kallsyms_relative_base` (a value >= 0 is absolute, a negative one is
//!   base - 1 - value).

/// Reads a little-endian u32 at `at`.
fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// (token table offset, tokens, token index offset).
fn token_table(d: &[u8]) -> Option<(usize, Vec<Vec<u8>>, usize)> {
    let digits: Vec<u8> = (b'0'..=b'9').flat_map(|c| [c, 0]).collect();
    let mut from = 0;
    loop {
        let pos = find(d, &digits, from)?;
        from = pos + 1;
        // Walk back 0x30 strings to token 0.
        let mut p = pos;
        let mut ok = true;
        for _ in 0..0x30 {
            if p < 2 || d[p - 1] != 0 {
                ok = false;
                break;
            }
            p = d[..p - 1]
                .iter()
                .rposition(|&b| b == 0)
                .map_or(0, |z| z + 1);
        }
        if !ok {
            continue;
        }
        let table = p;
        let (mut tokens, mut offs) = (Vec::with_capacity(256), Vec::with_capacity(256));
        let mut q = table;
        for _ in 0..256 {
            let e = d.get(q..).and_then(|r| r.iter().position(|&b| b == 0))?;
            offs.push(q - table);
            tokens.push(d[q..q + e].to_vec());
            q += e + 1;
        }
        if tokens.iter().any(Vec::is_empty) || offs[255] >= 65536 {
            continue;
        }
        let index: Vec<u8> = offs
            .iter()
            .flat_map(|&o| (o as u16).to_le_bytes())
            .collect();
        let window = d.get(q..(q + 64 + index.len()).min(d.len()))?;
        if let Some(i) = find(window, &index, 0) {
            return Some((table, tokens, q + i));
        }
    }
}

/// `kallsyms_markers`: (start, values).
fn markers(d: &[u8], table: usize) -> Option<(usize, Vec<u32>)> {
    let mut p = table.checked_sub(4)?;
    let floor = table.saturating_sub(16 << 20);
    while p > floor {
        if u32_at(d, p) == Some(0) {
            let mut vals = vec![0u32];
            let mut q = p + 4;
            while let Some(v) = u32_at(d, q) {
                let step = v.wrapping_sub(*vals.last().expect("not empty"));
                if !(256..=256 * 260).contains(&step) {
                    break;
                }
                vals.push(v);
                q += 4;
            }
            if vals.len() > 16 {
                return Some((p, vals));
            }
        }
        p -= 4;
    }
    None
}

/// Decodes `count` names at `start`; (names, end) unless they run past
/// `limit`.
fn names(
    d: &[u8],
    start: usize,
    count: usize,
    tokens: &[Vec<u8>],
    limit: usize,
) -> Option<(Vec<String>, usize)> {
    let mut out = Vec::with_capacity(count);
    let mut p = start;
    for _ in 0..count {
        if p >= limit {
            return None;
        }
        let mut n = usize::from(d[p]);
        p += 1;
        if n & 0x80 != 0 {
            n = (n & 0x7f) | (usize::from(*d.get(p)?) << 7);
            p += 1;
        }
        if n == 0 || p + n > limit {
            return None;
        }
        let name: Vec<u8> = d[p..p + n]
            .iter()
            .flat_map(|&t| tokens[usize::from(t)].iter().copied())
            .collect();
        out.push(String::from_utf8_lossy(&name).into_owned());
        p += n;
    }
    Some((out, p))
}

/// Every symbol of the kallsyms table in the ELF image `d`: (address,
/// type character, name). None when there is no table to be found.
pub fn parse(d: &[u8]) -> Option<Vec<(u64, char, String)>> {
    let (table, tokens, index) = token_table(d)?;
    let (mstart, marks) = markers(d, table)?;
    let m = marks.len();
    let last = *marks.last()? as usize;
    let top = mstart.checked_sub(last)?;
    let mut found = None;
    'search: for names_start in (top.saturating_sub(256 * 300)..=top).rev() {
        for num_pos in [names_start.wrapping_sub(8), names_start.wrapping_sub(4)] {
            let Some(num) = u32_at(d, num_pos).map(|n| n as usize) else {
                continue;
            };
            if num == 0 || num.div_ceil(256) != m {
                continue;
            }
            if let Some((n, end)) = names(d, names_start, num, &tokens, mstart) {
                if mstart - end < 16 {
                    found = Some((num_pos, num, n));
                    break 'search;
                }
            }
        }
    }
    let (num_pos, num, n) = found?;
    // kallsyms_offsets and kallsyms_relative_base: before kallsyms_num_syms
    // up to 6.1, after kallsyms_token_index since.
    let off_len = num * 4;
    let after = (index + 512 + 7) & !7;
    let mut places = vec![(after, after + ((off_len + 7) & !7))];
    for pad in [0, 4] {
        if let Some(start) = num_pos.checked_sub(8 + pad + off_len) {
            places.push((start, num_pos - 8));
        }
    }
    let mut best: Option<(usize, Vec<u64>)> = None;
    for (start, base_pos) in places {
        let Some(base) = u64_at(d, base_pos) else {
            continue;
        };
        if base >> 48 != 0xffff {
            continue;
        }
        let Some(raw) = d.get(start..start + off_len) else {
            continue;
        };
        let addrs: Vec<u64> = raw
            .chunks_exact(4)
            .map(|c| {
                let o = i32::from_le_bytes(c.try_into().expect("4 bytes"));
                if o >= 0 {
                    o as u64
                } else {
                    base.wrapping_sub(1).wrapping_sub(i64::from(o) as u64)
                }
            })
            .collect();
        let sorted = addrs.windows(2).filter(|w| w[0] <= w[1]).count();
        if best.as_ref().is_none_or(|(s, _)| sorted > *s) {
            best = Some((sorted, addrs));
        }
    }
    let (_, addrs) = best?;
    Some(
        addrs
            .into_iter()
            .zip(n)
            .filter_map(|(a, name)| {
                let mut c = name.chars();
                let kind = c.next()?;
                Some((a, kind, c.as_str().to_string()))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up image holding a kallsyms table in the 6.1 layout: offsets,
    /// relative base, num_syms, names, markers, token table, token index.
    fn image(syms: &[(u64, &str)]) -> Vec<u8> {
        // Tokens: token i is the single character i for printable ones,
        // digits standing for themselves as the kernel's table has them.
        let tokens: Vec<Vec<u8>> = (0..=255u8)
            .map(|i| {
                if (0x21..0x7f).contains(&i) {
                    vec![i]
                } else {
                    vec![b'~', i | 0x80]
                }
            })
            .collect();
        let base: u64 = 0xffff_ffff_8100_0000;
        let mut d = vec![0xaau8; 64];
        // Offsets (negative: base - 1 - value), then the base, then num.
        for (a, _) in syms {
            let o = -((a - base + 1) as i64) as i32;
            d.extend_from_slice(&o.to_le_bytes());
        }
        while !d.len().is_multiple_of(8) {
            d.push(0);
        }
        d.extend_from_slice(&base.to_le_bytes());
        d.extend_from_slice(&(syms.len() as u64).to_le_bytes());
        let mut marks = vec![];
        let names_start = d.len();
        for (i, (_, name)) in syms.iter().enumerate() {
            if i % 256 == 0 {
                marks.push((d.len() - names_start) as u32);
            }
            let bytes: Vec<u8> = format!("T{name}").into_bytes();
            d.push(bytes.len() as u8);
            d.extend_from_slice(&bytes);
        }
        while !d.len().is_multiple_of(4) {
            d.push(0);
        }
        for m in &marks {
            d.extend_from_slice(&m.to_le_bytes());
        }
        let table = d.len();
        let mut offs = vec![];
        for t in &tokens {
            offs.push((d.len() - table) as u16);
            d.extend_from_slice(t);
            d.push(0);
        }
        for o in offs {
            d.extend_from_slice(&o.to_le_bytes());
        }
        d.extend_from_slice(&[0xbb; 64]);
        d
    }

    #[test]
    fn finds_the_table_and_its_addresses() {
        // Enough symbols for 17 markers (the finder wants more than 16).
        let syms: Vec<(u64, String)> = (0..17 * 256 + 5)
            .map(|i| (0xffff_ffff_8100_0000 + 0x10 * i as u64, format!("func_{i}")))
            .collect();
        let refs: Vec<(u64, &str)> = syms.iter().map(|(a, n)| (*a, n.as_str())).collect();
        let got = parse(&image(&refs)).expect("the table is found");
        assert_eq!(got.len(), syms.len());
        assert_eq!(got[0], (0xffff_ffff_8100_0000, 'T', "func_0".into()));
        assert_eq!(got[4000].2, "func_4000");
        assert_eq!(got[4000].0, 0xffff_ffff_8100_0000 + 0x10 * 4000);
    }

    #[test]
    fn no_table_no_symbols() {
        assert_eq!(parse(&[0u8; 4096]), None);
    }
}
