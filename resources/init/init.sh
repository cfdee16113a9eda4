#!/bin/sh
# kiln guest init: /init in the initramfs, /sbin/init in rootfs.ext4.
#
# Runs as pid 1 and never returns (pid 1 exiting panics the kernel).
#  - mounts /proc, /sys, /dev (devtmpfs) and /tmp (tmpfs);
#  - writes 123 to the boot-timer byte at 0xc0000000 (ignored if absent);
#  - prints "KILN-INIT: kernel=<uname -r> cpus=<online CPUs>";
#  - insmods the modules listed in /etc/kiln-modules, in order;
#  - with arguments (everything after " -- " on the kernel command line),
#    runs them as one shell command, prints "KILN-EXIT: <status>", syncs
#    and reboots (kiln ends the run when the guest reboots);
#  - without arguments, starts an interactive shell on the console and
#    reboots when it exits.
# Note: the kernel also hands init any unknown command-line word without a
# "=" (and no "."), so a stray word there becomes a command.

PATH=/sbin:/bin:/usr/sbin:/usr/bin
HOME=/root
export PATH HOME
umask 022

is_mounted() {
    grep -q "^[^ ]* $1 " /proc/mounts 2>/dev/null
}
mount_fs() { # TYPE DIR [OPTIONS]
    is_mounted "$2" && return 0
    mkdir -p "$2" 2>/dev/null
    mount -t "$1" ${3:+-o "$3"} "$1" "$2" || echo "KILN-INIT: mounting $1 on $2 failed"
}

mount_fs proc /proc
mount_fs sysfs /sys
mount_fs devtmpfs /dev
mount_fs tmpfs /tmp mode=1777

devmem 0xc0000000 8 123 2>/dev/null || true

online_cpus() {
    list=$(cat /sys/devices/system/cpu/online 2>/dev/null)
    if [ -z "$list" ]; then
        nproc 2>/dev/null || echo 1
        return
    fi
    n=0
    old_ifs=$IFS
    IFS=,
    for range in $list; do
        case $range in
            *-*) n=$((n + ${range#*-} - ${range%-*} + 1)) ;;
            *) n=$((n + 1)) ;;
        esac
    done
    IFS=$old_ifs
    echo "$n"
}

echo "KILN-INIT: kernel=$(uname -r) cpus=$(online_cpus)"

if [ -s /etc/kiln-modules ]; then
    while read -r module; do
        case $module in ''|'#'*) continue ;; esac
        insmod "/lib/modules/$module" || echo "KILN-INIT: insmod $module failed"
    done </etc/kiln-modules
fi

hostname kiln 2>/dev/null

finish() {
    sync
    reboot -f
    # reboot -f should not return; if it does, pid 1 must still not exit.
    while :; do sleep 3600; done
}

if [ $# -gt 0 ]; then
    sh -c "$*"
    status=$?
    echo "KILN-EXIT: $status"
    finish
fi

PS1='kiln:\w# '
export PS1
setsid cttyhack sh
finish
