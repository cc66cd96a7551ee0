# The agent is killed (SIGKILL) while a transition is stalled; the next klive command finds
# the intent it left, reconciles, and afterwards the kernel and `klive status` agree.
. /tests/lib.sh

# has TEXT PATTERN: TEXT contains a line matching PATTERN (grep BRE).
has() { printf "%s\n" "$1" | grep -q -- "$2"; }

fifo=/tmp/crash.fifo
rm -f "$fifo"
mkfifo "$fifo"
cat "$fifo" > /dev/null &
reader=$!
exec 3> "$fifo"
wait_until 5 grep -q pipe_read /proc/$reader/stack || fail "the reader never slept in pipe_read"

klive apply --timeout 100 /modules/klive_test_stall.ko > /tmp/crash.out 2>&1 &
agent=$!
wait_until 10 [ -d /sys/kernel/livepatch/klive_test_stall ] || fail "the agent never loaded the module"
sleep 0.5
kill -9 $agent
wait $agent 2> /dev/null
check "the killed agent left its intent behind" [ -f /var/lib/klive/intent.json ]
check_eq "the transition is still running" 1 "$(cat /sys/kernel/livepatch/klive_test_stall/transition 2>&1)"

# Feed the reader: it leaves pipe_read, so the transition can finish while we reconcile.
echo go >&3
exec 3>&-
wait $reader
json=$(klive status --json 2> /tmp/crash.err)
rc=$?
info "status after the crash exited $rc: $(echo "$json" | grep -A3 last_interrupted | tr -s ' \n' ' ')"
check "status reports the interrupted operation" has "$json" 'apply level 3'
check "the intent is gone after reconciliation" [ ! -f /var/lib/klive/intent.json ]
patches=$(ls /sys/kernel/livepatch)
if [ "$patches" = klive_test_stall ]; then
    check_eq "rolled forward: status exits 0" 0 "$rc"
    check_eq "rolled forward: the transition is over" 0 "$(cat /sys/kernel/livepatch/klive_test_stall/transition)"
    check "rolled forward: status shows level 3" has "$json" '"level": 3,'
else
    check_eq "rolled back: no patch loaded" "" "$patches"
    check_eq "rolled back: status exits 1" 1 "$rc"
fi
check_exit "klive revert cleans up" 0 klive revert
check_eq "/proc/cmdline is the original" "$KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
