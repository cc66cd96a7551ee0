# Harness self-test, second boot: the state disk kept what phase 1 wrote.
. /tests/lib.sh

check_eq "the state disk kept phase 1's marker" "written in phase 1" "$(cat "$KLIVE_HARNESS_DIR/marker" 2>&1)"
check "/var/lib/klive is on the state disk" grep -q ' /var/lib/klive ' /proc/mounts
check_eq "no livepatch at boot" "" "$(ls /sys/kernel/livepatch)"
check_eq "/proc/cmdline is the original" "$KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
