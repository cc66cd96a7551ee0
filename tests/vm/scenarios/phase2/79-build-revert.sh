# klive-build: `klive revert` takes the last built patch away; everything reads as before.
. /tests/lib.sh

check_exit "klive revert exits 0" 0 klive revert
check_eq "binfmt_misc status is the original" enabled "$(cat /proc/sys/fs/binfmt_misc/status)"
check_eq "/proc/cmdline is the original" "$KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
check_eq "no livepatch registered" "" "$(ls /sys/kernel/livepatch)"
