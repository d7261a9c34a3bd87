#!/bin/sh
# pvhboot compare: the Linux fingerprint collector (runs as the command of `pvhboot run`'s /init,
# after proc, sys and devtmpfs are mounted; the kernel log is already quietened to emergencies).
# Every line it prints starts with "@FP"; pvhboot.compare.linux parses them on the host.
# busybox sh and applets only: the initramfs has no libc.
p() { printf '@FP %s=%s\n' "$1" "$2"; }
echo 0 > /proc/sys/kernel/kptr_restrict 2>/dev/null   # real addresses in /proc/kallsyms
echo @FP-BEGIN
p cmdline "$(cat /proc/cmdline)"
p boot_params "$(od -An -tx1 -v /sys/kernel/boot_params/data | tr -d ' \n')"
p boot_params.version "$(cat /sys/kernel/boot_params/version 2>/dev/null)"
for d in $(ls -d /sys/firmware/memmap/* 2>/dev/null | sort -t/ -k5 -n); do
    echo "@FP-MEMMAP $(cat "$d/start") $(cat "$d/end") $(cat "$d/type")"
done
grep -v '^ ' /proc/iomem | sed 's/^/@FP-IOMEM /'
p MemTotal "$(sed -n 's/^MemTotal: *//p' /proc/meminfo)"
for f in online possible present; do p "cpu.$f" "$(cat /sys/devices/system/cpu/$f)"; done
awk -F': ' '/^processor/ { c = $2 }
            /^flags/ { print "@FP cpu" c ".flags=" $2 }
            /^address sizes/ { print "@FP cpu" c ".address_sizes=" $2 }' /proc/cpuinfo
cs=/sys/devices/system/clocksource/clocksource0
p clocksource.current "$(cat $cs/current_clocksource)"
p clocksource.available "$(cat $cs/available_clocksource)"
for t in /sys/firmware/acpi/tables/*; do
    [ -f "$t" ] && echo "@FP-ACPI ${t##*/} $(wc -c < "$t")"
done
p kallsyms._text "$(sed -n 's/^\([0-9a-f]*\) [Tt] _text$/\1/p' /proc/kallsyms | head -n 1)"
for v in /sys/devices/system/cpu/vulnerabilities/*; do
    [ -f "$v" ] && p "vulnerabilities.${v##*/}" "$(cat "$v")"
done
p tainted "$(cat /proc/sys/kernel/tainted)"
dmesg | sed 's/^/@FP-DMESG /'
echo @FP-END
# /init powers off next (ACPI S5); a kernel that found no ACPI cannot, so reset instead (i8042).
[ -e /sys/firmware/acpi/tables/FACP ] || reboot -f
