# Level 2 is published and promoted; the server is killed (kill -9) in the middle of the
# module download: the agent keeps retrying, the host starts the server again, the update
# completes with an atomic replace of level 1 by level 2.
. /tests/lib.sh
F=$KLIVE_HARNESS_DIR/fleet
host_id=$(cat "$F/host_id")

check_step "host: alice publishes level 2" publish 2
check_step "host: bob promotes level 2 to stable" promote 2
check_step "host: the server will be killed in the middle of the next download" \
    kill-during-download
klive update --retry-for 120 > /tmp/update.out 2> /tmp/update.err &
pid=$!
if wait_until 90 grep -q retrying /tmp/update.err; then
    pass "the agent retries after losing the server"
else
    fail "the agent did not retry: $(cat /tmp/update.err)"
fi
check_step "host: the server died during the module download" expect-killed
check_step "host: the server is started again" start-server
wait "$pid"
rc=$?
check_eq "the update succeeds once the server is back" 0 "$rc"
info "$(head -n 3 /tmp/update.err)"
check_eq "effective release is level 2" "$KLIVE_RELEASE+klive.2" "$(klive uname -r)"
check "/proc/cmdline shows the level 2 patch" grep -q "^klive-level-2 " /proc/cmdline
check_eq "one klive patch in the kernel (atomic replace)" "klive_test_l2" \
    "$(ls /sys/kernel/livepatch | grep klive_ | tr '\n' ' ' | sed 's/ $//')"
check "level 1's module is unloaded" test ! -d /sys/module/klive_test_l1
check_step "server API: host at level 2" expect "$host_id" 2 stable
