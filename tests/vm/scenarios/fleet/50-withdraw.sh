# Level 2 is withdrawn fleet-wide: the host goes back to level 1 at its next update.
. /tests/lib.sh
F=$KLIVE_HARNESS_DIR/fleet
host_id=$(cat "$F/host_id")

check_step "host: alice withdraws level 2" withdraw 2
check_exit "klive check: a change is due (exit 2)" 2 klive check
check_exit "klive update goes back to level 1" 0 klive update
check_eq "effective release is level 1" "$KLIVE_RELEASE+klive.1" "$(klive uname -r)"
check "/proc/cmdline shows the level 1 patch" grep -q "^klive-level-1 " /proc/cmdline
check "level 2's module is unloaded" test ! -d /sys/module/klive_test_l2
check_step "server API: host back at level 1" expect "$host_id" 1 stable
