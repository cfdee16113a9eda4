# shellcheck shell=bash
# bzImage helpers (Linux x86 boot protocol, Documentation/x86/boot.rst).

_le() { od -An -tu"$3" -j"$2" -N"$3" "$1" | tr -d ' \n'; }

# bzimage_release BZIMAGE: print the kernel release string (the first word
# of the version string that the setup header's kernel_version points to).
bzimage_release() {
    local ptr
    ptr=$(_le "$1" $((0x20e)) 2)
    dd if="$1" bs=1 skip=$((ptr + 0x200)) count=256 status=none | tr '\0 ' '\n\n' | sed -n 1p
}

# bzimage_payload_format BZIMAGE: print gzip|xz|lzma|lz4|zstd|bzip2|lzo.
# bzimage_extract_vmlinux BZIMAGE OUT: decompress the payload (an ELF
# vmlinux, plus relocation info when the kernel is relocatable) into OUT.
_bzimage_payload() {   # BZIMAGE -> payload on stdout
    local f=$1 setup_sects off len
    [ "$(dd if="$f" bs=1 skip=$((0x202)) count=4 status=none)" = HdrS ] ||
        { echo "$f: not a bzImage (no HdrS)" >&2; return 1; }
    setup_sects=$(_le "$f" $((0x1f1)) 1)
    [ "$setup_sects" -ne 0 ] || setup_sects=4
    off=$(( (setup_sects + 1) * 512 + $(_le "$f" $((0x248)) 4) ))
    len=$(_le "$f" $((0x24c)) 4)
    dd if="$f" iflag=skip_bytes,count_bytes skip="$off" count="$len" bs=1M status=none
}
_payload_format() {    # PAYLOAD-FILE
    local m
    m=$(od -An -tx1 -N6 "$1" | tr -d ' \n')
    case $m in
        1f8b*) echo gzip ;;
        fd377a585a00) echo xz ;;
        5d0000*) echo lzma ;;
        02214c18*) echo lz4 ;;
        28b52ffd*) echo zstd ;;
        425a68*) echo bzip2 ;;
        894c5a4f*) echo lzo ;;
        *) echo "unknown($m)" ;;
    esac
}
bzimage_payload_format() {
    local tmp rc=0
    tmp=$(mktemp)
    _bzimage_payload "$1" >"$tmp" && _payload_format "$tmp" || rc=$?
    rm -f "$tmp"
    return "$rc"
}
bzimage_extract_vmlinux() {
    local f=$1 out=$2 tmp fmt size want
    tmp=$(mktemp -d)
    _bzimage_payload "$f" >"$tmp/payload" || { echo "$f: cannot read the payload" >&2; rm -rf "$tmp"; return 1; }
    fmt=$(_payload_format "$tmp/payload")
    size=$(stat -c %s "$tmp/payload")
    # The last 4 bytes are the decompressed size (gzip's own ISIZE trailer;
    # appended by the kernel build, "size_append", for the other formats).
    want=$(_le "$tmp/payload" $((size - 4)) 4)
    if [ "$fmt" != gzip ]; then
        head -c $((size - 4)) "$tmp/payload" >"$tmp/p" && mv "$tmp/p" "$tmp/payload"
    fi
    case $fmt in
        gzip) gzip -dc "$tmp/payload" ;;
        xz) xz -dc "$tmp/payload" ;;
        lzma) xz --format=lzma -dc "$tmp/payload" ;;
        lz4) lz4 -dc "$tmp/payload" ;;
        zstd) zstd -q -dc "$tmp/payload" ;;
        bzip2) bzip2 -dc "$tmp/payload" ;;
        lzo) lzop -dc "$tmp/payload" ;;
        *) echo "$f: unsupported payload format $fmt" >&2; rm -rf "$tmp"; return 1 ;;
    esac >"$tmp/vmlinux" || { echo "$f: $fmt decompression failed" >&2; rm -rf "$tmp"; return 1; }
    size=$(stat -c %s "$tmp/vmlinux")
    if [ $((size % 4294967296)) -ne "$want" ]; then
        echo "$f: decompressed $size bytes, header says $want" >&2
        rm -rf "$tmp"
        return 1
    fi
    mv "$tmp/vmlinux" "$out"
    rm -rf "$tmp"
}

# elf_is_x86_64 FILE: true if FILE starts with an ELF64 little-endian
# header for x86-64 (EM_X86_64 = 62 = 0x3e).
elf_is_x86_64() {
    [ "$(od -An -tx1 -N6 "$1" | tr -d ' \n')" = 7f454c460201 ] &&
        [ "$(od -An -tx1 -j18 -N2 "$1" | tr -d ' \n')" = 3e00 ]
}
