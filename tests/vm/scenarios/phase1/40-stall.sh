# Scenario d: a task sleeps in pipe_read, which klive_test_stall replaces. `klive apply`
# with a short timeout names the task, reverses the transition and exits 5; the original
# code runs and the reader is unharmed.
. /tests/lib.sh

# has TEXT PATTERN: TEXT contains a line matching PATTERN (grep BRE).
has() { printf "%s\n" "$1" | grep -q -- "$2"; }

fifo=/tmp/agent-stall.fifo
rm -f "$fifo" /tmp/agent-stall.out
mkfifo "$fifo"
cat "$fifo" > /tmp/agent-stall.out &
reader=$!
exec 3> "$fifo"
wait_until 5 grep -q pipe_read /proc/$reader/stack || fail "the reader never slept in pipe_read"

out=$(klive apply --timeout 3 /modules/klive_test_stall.ko 2>&1)
rc=$?
info "klive apply: $(echo "$out" | tr '\n' '|')"
check_eq "klive apply exits 5 (stalled, reversed)" 5 "$rc"
check "the error names the stalled reader's pid" has "$out" "pid $reader "
check "the error shows the reader's stack in pipe_read" has "$out" pipe_read
check "the error says the kernel runs its original code" has "$out" 'original code'
check_eq "no livepatch registered" "" "$(ls /sys/kernel/livepatch)"
check "the stall module is unloaded" [ ! -d /sys/module/klive_test_stall ]
check_eq "/proc/cmdline is the original" "$KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
check_exit "status exits 1 (no patch applied)" 1 klive status
check "the reader is still alive" [ -d /proc/$reader ]
echo "fed after the reversal" >&3
exec 3>&-
wait $reader
check_eq "the reader exits normally once fed" 0 "$?"
check_eq "the reader got the data" "fed after the reversal" "$(cat /tmp/agent-stall.out)"
check "the journal records the reversal" grep -q '"step":"reversed"' /var/lib/klive/journal.jsonl
