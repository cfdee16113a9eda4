#!/bin/sh
# kiln guest init: /init in the initramfs, /sbin/init in rootfs.ext4.
#
# Runs as pid 1 and never returns (pid 1 exiting panics the kernel).
#  - mounts /proc, /sys, /dev (devtmpfs) and /tmp (tmpfs) (/etc/fstab);
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

# Every external command is a fork (and usually an exec of busybox); on a
# nested kvm_pvm host each one costs about a second of emulated kernel
# work, so this script uses shell builtins wherever it can.

# One process mounts them all: busybox's mount -a mounts /etc/fstab's
# entries (resources/lib/busybox-tree.sh writes it) in order, proc first,
# and skips those already mounted (the kernel mounts devtmpfs on /dev by
# itself when the root is a disk).
mount -a || echo "KILN-INIT: mount -a failed"

devmem 0xc0000000 8 123 2>/dev/null || true

# Sets $cpus to the number of online CPUs (a function, not $(...): a
# command substitution forks).
count_online_cpus() {
    list=
    read -r list 2>/dev/null </sys/devices/system/cpu/online
    if [ -z "$list" ]; then
        cpus=$(nproc 2>/dev/null || echo 1)
        return
    fi
    cpus=0
    old_ifs=$IFS
    IFS=,
    for range in $list; do
        case $range in
            *-*) cpus=$((cpus + ${range#*-} - ${range%-*} + 1)) ;;
            *) cpus=$((cpus + 1)) ;;
        esac
    done
    IFS=$old_ifs
}

release=unknown
read -r release 2>/dev/null </proc/sys/kernel/osrelease
count_online_cpus
echo "KILN-INIT: kernel=$release cpus=$cpus"

if [ -s /etc/kiln-modules ]; then
    while read -r module; do
        case $module in ''|'#'*) continue ;; esac
        insmod "/lib/modules/$module" || echo "KILN-INIT: insmod $module failed"
    done </etc/kiln-modules
fi

echo kiln >/proc/sys/kernel/hostname 2>/dev/null

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
