# Scenario f, second boot: the kernel starts unpatched; `klive boot` restores level 2 from
# the cache kept on the state disk.
. /tests/lib.sh

# has TEXT PATTERN: TEXT contains a line matching PATTERN (grep BRE).
has() { printf "%s\n" "$1" | grep -q -- "$2"; }

check_eq "the fresh kernel starts unpatched" "$KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
out=$(klive status 2>&1)
check_eq "status before klive boot exits 1" 1 "$?"
check "status says level 2 is cached and how to restore it" has "$out" 'level 2 is cached'
out=$(klive boot 2>&1)
rc=$?
info "klive boot: $out"
check_eq "klive boot exits 0" 0 "$rc"
check_eq "/proc/cmdline shows level 2 again" "klive-level-2 $KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
check_exit "status exits 0 (patched and healthy)" 0 klive status
check_eq "klive uname -r shows level 2" "$KLIVE_RELEASE+klive.2" "$(klive uname -r)"
check_exit "a second klive boot is a no-op" 0 klive boot
check_eq "still one livepatch" "klive_test_l2" "$(ls /sys/kernel/livepatch)"
