# Scenario f, first boot: apply level 2 and power off with it applied; the state disk keeps
# the agent's state for the second boot.
. /tests/lib.sh

# has TEXT PATTERN: TEXT contains a line matching PATTERN (grep BRE).
has() { printf "%s\n" "$1" | grep -q -- "$2"; }

check_exit "klive apply level 2" 0 klive apply /modules/klive_test_l2.ko
check_eq "/proc/cmdline shows level 2" "klive-level-2 $KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
check "the module is cached on the state disk" sh -c "ls /var/lib/klive/cache/$KLIVE_BUILD_ID/ | grep -q klive_test_l2"
