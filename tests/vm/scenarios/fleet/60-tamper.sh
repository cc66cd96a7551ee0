# Level 3 is published and promoted, then its module is changed on the server's disk: the
# update is refused, nothing reaches the kernel, the host stays at level 1 and the server
# records the failure the agent reports.
. /tests/lib.sh
F=$KLIVE_HARNESS_DIR/fleet
host_id=$(cat "$F/host_id")

check_step "host: alice publishes level 3" publish 3
check_step "host: bob promotes level 3 to stable" promote 3
check_step "host: level 3's module blob is altered on the server's disk" tamper 3
check_exit "klive check: level 3 offered (exit 2)" 2 klive check
klive update > /tmp/tamper.out 2> /tmp/tamper.err
rc=$?
check_eq "klive update is refused (exit 4)" 4 "$rc"
check "the refusal says nothing was loaded" grep -q "nothing was loaded" /tmp/tamper.err
check "the refusal names the corrupt blob" grep -q "blob_corrupt" /tmp/tamper.err
info "$(cat /tmp/tamper.err)"
check "level 3's module never reached the kernel" test ! -d /sys/module/klive_test_stall
check_eq "effective release is still level 1" "$KLIVE_RELEASE+klive.1" "$(klive uname -r)"
check_step "server API: host at level 1 with the failure recorded" expect "$host_id" 1 stable error
