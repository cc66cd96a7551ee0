# klive-build b: meminfo_proc_show, into which the static show_val_kb is inlined about 40
# times (tests/build/20-meminfo.patch); replacing level 2 also takes the cmdline change away.
. /tests/lib.sh

check_exit "klive apply klive_build_meminfo.ko exits 0" 0 klive apply /modules/klive_build_meminfo.ko
check "/proc/meminfo shows VMALLOCCHUNK" grep -q '^VMALLOCCHUNK: *0 kB$' /proc/meminfo
check "the other inlined lines are intact" grep -q '^MemTotal: *[0-9][0-9]* kB$' /proc/meminfo
check_eq "/proc/cmdline is the original again" "$KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
