#!/usr/bin/env python3
"""Name kernel addresses from the kallsyms table inside a vmlinux.

Distribution kernels ship without a symbol table (Debian's System.map is a
stub), but the kernel carries its own symbol table for /proc/kallsyms in
.rodata. This script finds it the way vmlinux-to-elf does, without knowing
the layout's addresses:

  kallsyms_token_table   256 NUL-terminated strings; the digits '0'..'9'
                         usually stand for themselves, in a row
  kallsyms_token_index   256 u16 offsets into the token table
  kallsyms_markers       offset in kallsyms_names of every 256th symbol
                         (u32, the first one 0); since 6.2 (and in
                         Debian's 6.1) kallsyms_seqs_of_names follows
  kallsyms_names         per symbol: length byte (two for long names),
                         then token bytes; first token char is the type
  kallsyms_num_syms      just before kallsyms_names
  kallsyms_offsets       i32 per symbol, relative to kallsyms_relative_base
                         (x86-64, absolute per-CPU: a value >= 0 is absolute,
                         a negative one is base - 1 - value)

Usage:
  kallsyms.py VMLINUX                 print "ADDR TYPE NAME" (System.map)
  kallsyms.py VMLINUX ADDR...         name each address (symbol+off/size)
  kallsyms.py VMLINUX -               name every 0xffff... word in stdin
                                      lines (e.g. kiln -vv "rip=" lines)
  kallsyms.py VMLINUX --profile       read stdin, count rip= values per
                                      function, print a histogram

Python 3 standard library only.
"""

import bisect
import collections
import re
import struct
import sys


def load_segments(data):
    """(vaddr, file offset, size) of the ELF's PT_LOAD segments."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise SystemExit("not an ELF64 file")
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    segs = []
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == 1:
            segs.append((vaddr, off, filesz))
    return segs


def find_token_table(data):
    """Returns (token_table offset, tokens, token_index offset)."""
    digits = b"".join(bytes([c]) + b"\0" for c in b"0123456789")
    start = 0
    while True:
        pos = data.find(digits, start)
        if pos < 0:
            raise SystemExit("kallsyms token table not found")
        start = pos + 1
        # Walk back 0x30 strings to token 0.
        p = pos
        ok = True
        for _ in range(0x30):
            if p < 2 or data[p - 1] != 0:
                ok = False
                break
            p = data.rfind(b"\0", 0, p - 1) + 1
        if not ok:
            continue
        table = p
        tokens, offs = [], []
        q = table
        for _ in range(256):
            e = data.find(b"\0", q)
            offs.append(q - table)
            tokens.append(data[q:e])
            q = e + 1
        if any(len(t) == 0 for t in tokens):
            continue
        index_bytes = struct.pack("<256H", *offs) if offs[-1] < 65536 else None
        if index_bytes is None:
            continue
        idx = data.find(index_bytes, q, q + 64 + len(index_bytes))
        if idx < 0:
            continue
        return table, tokens, idx


def decode_names(data, start, count, tokens, limit):
    """Decodes `count` names from kallsyms_names at `start`; returns
    (names, end offset) or None when it runs past `limit`."""
    names = []
    p = start
    for _ in range(count):
        if p >= limit:
            return None
        n = data[p]
        p += 1
        if n & 0x80:  # two-byte length (6.1+ for long names)
            n = (n & 0x7F) | (data[p] << 7)
            p += 1
        if n == 0 or p + n > limit:
            return None
        names.append(b"".join(tokens[b] for b in data[p : p + n]))
        p += n
    return names, p


def find_markers(data, table):
    """kallsyms_markers: u32 entries, the first 0, then one every 256
    symbols (a few KiB apart). It lies before the token table; since 6.2
    (and in Debian's 6.1) kallsyms_seqs_of_names (3 bytes per symbol) sits
    in between, so scan back up to 16 MiB. Returns (start, markers)."""
    p = table - 4
    while p > max(table - (16 << 20), 0):
        if data[p : p + 4] == b"\0\0\0\0":
            vals, q = [0], p + 4
            while True:
                (v,) = struct.unpack_from("<I", data, q)
                if not 256 <= v - vals[-1] <= 256 * 260:
                    break
                vals.append(v)
                q += 4
            if len(vals) > 16:
                return p, vals
        p -= 4
    raise SystemExit("kallsyms_markers not found")


def parse(path):
    data = open(path, "rb").read()
    segs = load_segments(data)
    table, tokens, index = find_token_table(data)
    mstart, markers = find_markers(data, table)
    m = len(markers)
    # kallsyms_names ends at (or a few bytes before) mstart; it starts
    # after kallsyms_num_syms. Try candidate starts before the last marker.
    last = markers[-1]
    found = None
    for names_start in range(mstart - last, max(mstart - last - 256 * 300, 0), -1):
        (num,) = struct.unpack_from("<I", data, names_start - 8)
        cand = [(num, names_start - 8)]
        (num4,) = struct.unpack_from("<I", data, names_start - 4)
        cand.append((num4, names_start - 4))
        for num, num_pos in cand:
            if num == 0 or (num + 255) // 256 != m:
                continue
            r = decode_names(data, names_start, num, tokens, mstart)
            if r is None:
                continue
            names, end = r
            if mstart - end < 16:
                found = (names_start, num_pos, num, names)
                break
        if found:
            break
    if not found:
        raise SystemExit("kallsyms_names not found")
    names_start, num_pos, num, names = found
    # kallsyms_offsets (num i32) and kallsyms_relative_base (u64): before
    # kallsyms_num_syms up to 6.1, after kallsyms_token_index since.
    off_len = num * 4
    candidates = []
    after = (index + 512 + 7) & ~7
    places = [(after, after + ((off_len + 7) & ~7))]
    for pad in (0, 4):
        places.append((num_pos - 8 - pad - off_len, num_pos - 8))
    for start, base_pos in places:
        if start < 0 or base_pos + 8 > len(data):
            continue
        (base,) = struct.unpack_from("<Q", data, base_pos)
        if base >> 48 != 0xFFFF:
            continue
        offs = struct.unpack_from("<%di" % num, data, start)
        addrs = [o if o >= 0 else base - 1 - o for o in offs]
        # Symbols are sorted by address: count the ascending pairs.
        good = sum(1 for x, y in zip(addrs, addrs[1:]) if x <= y)
        candidates.append((good, addrs))
    if not candidates:
        raise SystemExit("kallsyms_offsets not found")
    candidates.sort(key=lambda c: -c[0])
    addrs = candidates[0][1]
    syms = []
    for a, n in zip(addrs, names):
        s = n.decode("latin-1")
        syms.append((a, s[0], s[1:]))
    return syms, segs


class Namer:
    def __init__(self, syms):
        text = sorted((a, t, n) for a, t, n in syms if a >> 48 == 0xFFFF)
        self.addrs = [a for a, _, _ in text]
        self.syms = text

    def name(self, addr):
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0:
            return "?"
        a, _t, n = self.syms[i]
        # Skip aliases at the same address to find the size.
        j = i + 1
        while j < len(self.addrs) and self.addrs[j] == a:
            j += 1
        size = self.addrs[j] - a if j < len(self.addrs) else 0
        if size and addr - a >= size + 0x1000:
            return "?"
        return "%s+0x%x/0x%x" % (n, addr - a, size)

    def func(self, addr):
        i = bisect.bisect_right(self.addrs, addr) - 1
        return self.syms[i][2] if i >= 0 else "?"


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    syms, _segs = parse(argv[1])
    namer = Namer(syms)
    args = argv[2:]
    word = re.compile(r"(?:0x)?(ffff[0-9a-f]{12})\b", re.I)
    if not args:
        for a, t, n in syms:
            print("%016x %s %s" % (a, t, n))
    elif args == ["-"]:
        for line in sys.stdin:
            line = line.rstrip("\n")
            names = [namer.name(int(m.group(1), 16)) for m in word.finditer(line)]
            print(line + ("  [" + ", ".join(names) + "]" if names else ""))
    elif args == ["--profile"]:
        rip = re.compile(r"rip[= ](?:0x)?([0-9a-f]+)", re.I)
        count = collections.Counter()
        total = 0
        for line in sys.stdin:
            for m in rip.finditer(line):
                count[namer.func(int(m.group(1), 16))] += 1
                total += 1
        for f, c in count.most_common(40):
            print("%6d %5.1f%% %s" % (c, 100.0 * c / max(total, 1), f))
    else:
        for s in args:
            print(s, namer.name(int(s, 16)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except BrokenPipeError:  # output piped into head
        sys.exit(0)
