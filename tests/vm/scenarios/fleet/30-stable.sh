# An admin moves the host to stable, where nothing is released yet: the server asks it to
# revert. Bob (an approver who did not publish) promotes level 1 to stable: the stable host
# applies it.
. /tests/lib.sh
F=$KLIVE_HARNESS_DIR/fleet
host_id=$(cat "$F/host_id")

check_step "host: admin moves the host to stable" policy "$host_id" stable
check_exit "klive check: stable asks for a revert (exit 2)" 2 klive check
check_exit "klive update reverts" 0 klive update
check_eq "back to the original /proc/cmdline" "$KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
check_step "server API: stable host without level" expect "$host_id" none stable
check_step "host: bob promotes level 1 to stable" promote 1
check_exit "klive update applies level 1 from stable" 0 klive update
check_eq "effective release is level 1" "$KLIVE_RELEASE+klive.1" "$(klive uname -r)"
check_step "server API: stable host at level 1" expect "$host_id" 1 stable
