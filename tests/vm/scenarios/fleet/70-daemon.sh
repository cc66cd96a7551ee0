# The daemon checks in on its interval and stops cleanly on SIGTERM.
. /tests/lib.sh

klive daemon --interval 2 > /tmp/daemon.out 2> /tmp/daemon.err &
pid=$!
if wait_until 60 grep -q "klive daemon:" /tmp/daemon.err; then
    pass "the daemon checks in"
else
    fail "the daemon logged nothing: $(cat /tmp/daemon.err)"
fi
kill -TERM "$pid"
wait "$pid"
check_eq "the daemon exits 0 on SIGTERM" 0 "$?"
check "the daemon says it stops" grep -q "stopping" /tmp/daemon.err
check_eq "still at level 1" "$KLIVE_RELEASE+klive.1" "$(klive uname -r)"
