# shellcheck shell=bash
# busybox_tree DIR [MODULES_DIR "MODULE ..."]
#
# Build a minimal root tree in DIR (removed first): Debian's static busybox
# with one hard link per applet, resources/init/init.sh as /sbin/init, the
# guest agent as /sbin/kiln-agent (resources/guest-agent.sh), /etc
# basics (fstab for init's `mount -a`) and the /dev/console and /dev/null
# nodes (needs root, for mknod). Hard links, not symlinks: unpacking an
# initramfs makes a new inode per symlink but only a directory entry per
# hard link, and on a nested kvm_pvm host the ~280 symlinks cost seconds.
# With MODULES_DIR (a lib/modules/<release> tree) and a module list, copies
# the modules (and, if MODULES_DIR has a modules.dep, their dependencies)
# into DIR/lib/modules/, decompressed, and lists them in load order in
# DIR/etc/kiln-modules for init to insmod. Modules that modules.builtin
# names are skipped. File times are set to SOURCE_DATE_EPOCH (default 1) so
# the same inputs give the same archive or image.

busybox_tree() {
    local root=$1 moddir=${2:-} modules=${3:-} bb=/bin/busybox app
    [ "$(id -u)" = 0 ] || die "must run as root (mknod /dev/console)"
    [ -x "$bb" ] || die "$bb missing: install busybox-static (setup-host.sh)"
    if readelf -l "$bb" 2>/dev/null | grep -q 'program interpreter'; then
        die "$bb is dynamically linked: install busybox-static"
    fi

    rm -rf "$root"
    mkdir -p "$root"
    (cd "$root" && mkdir -p bin sbin usr/bin usr/sbin dev proc sys tmp run \
        root etc lib/modules mnt var/log)
    chmod 1777 "$root/tmp"
    chmod 700 "$root/root"
    cp "$bb" "$root/bin/busybox"
    while read -r app; do
        case $app in ''|linuxrc|bin/busybox) continue ;; esac
        mkdir -p "$root/$(dirname "$app")"
        [ -e "$root/$app" ] || [ -L "$root/$app" ] || ln "$root/bin/busybox" "$root/$app"
    done < <("$bb" --list-full 2>/dev/null || "$bb" --list | sed 's|^|bin/|')

    rm -f "$root/sbin/init"
    install -m 755 "$KILN_RESOURCES/init/init.sh" "$root/sbin/init"
    # The sandbox's guest agent (`kiln run -- CMD` boots it as init).
    local agent
    agent=$("$KILN_RESOURCES/guest-agent.sh") || die "cannot build the guest agent"
    install -m 755 "$agent" "$root/sbin/kiln-agent"

    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    echo kiln >"$root/etc/hostname"
    cat >"$root/etc/fstab" <<'FSTAB'
proc      /proc  proc      defaults   0 0
sysfs     /sys   sysfs     defaults   0 0
devtmpfs  /dev   devtmpfs  defaults   0 0
tmpfs     /tmp   tmpfs     mode=1777  0 0
FSTAB
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tkiln\n' >"$root/etc/hosts"
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3

    if [ -n "$moddir" ] || [ -n "$modules" ]; then
        [ -n "$moddir" ] && [ -n "$modules" ] || die "--modules and --load go together"
        _busybox_tree_modules "$root" "$moddir" "$modules"
    fi

    find "$root" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-1}" {} +
}

_busybox_tree_modules() {
    local root=$1 moddir=$2 m
    local -a wanted
    local -A seen=()
    [ -d "$moddir" ] || die "modules dir $moddir does not exist"
    read -r -a wanted <<<"$3"
    : >"$root/etc/kiln-modules"

    # _mod_path NAME: path (relative to moddir) of module NAME, "" if none.
    _mod_path() {
        local n=${1//-/_} p
        if [ -f "$moddir/modules.dep" ]; then
            p=$(awk -F: -v n="$n" '{ b = $1; sub(/.*\//, "", b); sub(/\.ko(\.(xz|zst|gz))?$/, "", b);
                    gsub(/-/, "_", b); if (b == n) { print $1; exit } }' "$moddir/modules.dep")
        else
            p=$(find "$moddir" -type f \( -name "$n.ko*" -o -name "${n//_/-}.ko*" \) -printf '%P\n' | head -n 1)
        fi
        echo "$p"
    }
    _add() {   # PATH
        local p=$1 name
        name=${p##*/}
        name=${name%.xz}; name=${name%.zst}; name=${name%.gz}
        [ -z "${seen[$name]:-}" ] || return 0
        seen[$name]=1
        case $p in
            *.ko.xz) xz -dc "$moddir/$p" ;;
            *.ko.zst) zstd -q -dc "$moddir/$p" ;;
            *.ko.gz) gzip -dc "$moddir/$p" ;;
            *.ko) cat "$moddir/$p" ;;
            *) die "$p: not a kernel module" ;;
        esac >"$root/lib/modules/$name" || die "cannot copy module $p"
        echo "$name" >>"$root/etc/kiln-modules"
    }

    for m in "${wanted[@]}"; do
        m=${m%.ko}
        local p deps i
        p=$(_mod_path "$m")
        if [ -z "$p" ]; then
            if [ -f "$moddir/modules.builtin" ] &&
                grep -Eq "/${m//[-_]/[-_]}\\.ko\$" "$moddir/modules.builtin"; then
                continue   # built into the kernel
            fi
            die "module $m not found in $moddir"
        fi
        if [ -f "$moddir/modules.dep" ]; then
            # modules.dep lists all dependencies, the ones to load last first.
            read -r -a deps <<<"$(grep -m1 "^$p:" "$moddir/modules.dep" | cut -d: -f2)"
            for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
                _add "${deps[i]}"
            done
        fi
        _add "$p"
    done
}
