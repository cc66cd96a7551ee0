#!/bin/sh
# PID 1 of the klive test guest, packed by xtask (xtask/src/vm): mounts the basics and the
# state disk, runs the scenario scripts of this boot's phase and powers off.
#
# Phase: `klive.phase=N` on the kernel command line runs /tests/phaseN/*.sh in name order;
# `klive.phase=demo` runs /tests/demo/*.sh, `klive.phase=bench` /tests/bench/*.sh.
# Each script is announced with `KLIVE-SCENARIO <scenario>` and its results are lines
# `KLIVE-RESULT PASS|FAIL <scenario>: <detail>` (see /tests/lib.sh); the host counts them and
# checks that every scenario it packed for the phase started.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security 2> /dev/null
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

phase=1
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    klive.phase=*) phase=${arg#klive.phase=} ;;
    esac
done

case "$phase" in
demo | bench) label=$phase ;;
*) label=phase$phase ;;
esac

# What /proc/cmdline says before any patch: scenarios compare with it.
mkdir -p /run/klive-test
cat /proc/cmdline > /run/klive-test/cmdline

boot_fail() {
    echo "KLIVE-RESULT FAIL boot-$label: $*"
}

# The state disk: /dev/vda (ext4, formatted on the host, fresh for each run) is mounted at
# /mnt/state; the agent's state dir /var/lib/klive is its subdirectory klive/, bind-mounted,
# so the harness can keep its own files next to it.
while read -r module; do
    insmod "/lib/klive-boot/$module.ko" || boot_fail "insmod $module failed"
done < /lib/klive-boot/order
i=0
while [ ! -b /dev/vda ] && [ "$i" -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
done
mkdir -p /mnt/state /var/lib/klive
if mount -t ext4 /dev/vda /mnt/state; then
    mkdir -p /mnt/state/klive /mnt/state/harness
    mount --bind /mnt/state/klive /var/lib/klive || boot_fail "cannot bind-mount /var/lib/klive"
else
    boot_fail "cannot mount the state disk /dev/vda"
fi

case "$phase" in
demo | bench) dir=/tests/$phase ;;
*) dir=/tests/phase$phase ;;
esac

# A scenario that hangs is killed after this many seconds (it then fails).
script_limit=150

echo "KLIVE-PHASE-START $phase"
mkdir -p /tmp/klive-results
for script in "$dir"/*.sh; do
    [ -e "$script" ] || continue
    name=$(basename "$script" .sh)
    # The host compares these with the scripts it packed: a scenario that never starts fails.
    echo "KLIVE-SCENARIO $name"
    results=/tmp/klive-results/$name
    : > "$results"
    (cd /tmp && KLIVE_SCENARIO=$name KLIVE_RESULTS=$results \
        timeout "$script_limit" sh "$script" < /dev/null)
    rc=$?
    if [ "$rc" -eq 143 ]; then
        echo "KLIVE-RESULT FAIL $name: killed after $script_limit s (hung?)"
    elif [ "$rc" -ne 0 ]; then
        echo "KLIVE-RESULT FAIL $name: exited with $rc"
    elif [ "$phase" != demo ] && [ ! -s "$results" ]; then
        echo "KLIVE-RESULT FAIL $name: exited without printing a result"
    fi
done
echo "KLIVE-PHASE-END $phase"

sync
umount /var/lib/klive 2> /dev/null
umount /mnt/state || echo "init: warning: could not unmount the state disk"
poweroff -f
