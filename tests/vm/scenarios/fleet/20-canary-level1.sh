# Level 1 is published (to canary, the first channel): the canary host finds and applies it.
. /tests/lib.sh
F=$KLIVE_HARNESS_DIR/fleet
host_id=$(cat "$F/host_id")

check_step "host: alice publishes level 1 to canary" publish 1
check_exit "klive check: update available (exit 2)" 2 klive check
check_exit "klive status exits 2 while an update is available" 2 klive status
check_exit "klive update downloads, verifies and applies level 1" 0 klive update
check_eq "effective release is level 1" "$KLIVE_RELEASE+klive.1" "$(klive uname -r)"
check "/proc/cmdline shows the level 1 patch" grep -q "^klive-level-1 " /proc/cmdline
check_exit "klive status: applied and healthy" 0 klive status
check_step "server API: host at level 1" expect "$host_id" 1 canary
