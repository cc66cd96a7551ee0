# Harness self-test without the agent: a task sleeping in pipe_read() stalls the transition
# of klive_test_stall (which replaces pipe_read); writing 0 to `enabled` reverses it, the
# original code stays, and the sleeping reader carries on unharmed.
#
# The kernel sends stalled tasks a fake signal after about 15 s, which would let the
# transition finish: everything between insmod and the reversal takes a few seconds.
. /tests/lib.sh

patch=klive_test_stall
lp=/sys/kernel/livepatch/$patch
fifo=/tmp/stall.fifo
rm -f "$fifo" /tmp/stall.out
mkfifo "$fifo"

# The reader opens the fifo and, once this shell holds the write end, sleeps in pipe_read.
cat "$fifo" > /tmp/stall.out &
reader=$!
exec 3> "$fifo"
sleep 0.3
stack=$(cat /proc/$reader/stack 2>&1)
info "reader $reader stack before insmod: $(echo "$stack" | tr '\n' ' ')"
case "$stack" in
*pipe_read*) pass "the reader sleeps in pipe_read" ;;
*) fail "the reader is not in pipe_read: $stack" ;;
esac

t0=$(uptime_s)
if ! insmod /modules/$patch.ko; then
    fail "insmod $patch.ko failed"
    exit 0
fi
t1=$(uptime_s)
sleep 2
t2=$(uptime_s)
info "insmod took $t0 -> $t1 s; 2 s later: transition=$(cat $lp/transition)" \
    "enabled=$(cat $lp/enabled) reader patch_state=$(cat /proc/$reader/patch_state)" \
    "shell patch_state=$(cat /proc/$$/patch_state)"
check_eq "the transition is still running after 2 s" 1 "$(cat $lp/transition)"
check_eq "the reader is not switched (patch_state 0)" 0 "$(cat /proc/$reader/patch_state)"
check_eq "this shell is switched (patch_state 1)" 1 "$(cat /proc/$$/patch_state)"
check_eq "a switched task sees the level-3 /proc/cmdline" "klive-level-3 $KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
check_eq "a switched task's pipe works (replacement pipe_read)" "through a pipe" "$(echo through a pipe | cat | cat)"
info "reader stack during the transition: $(cat /proc/$reader/stack | tr '\n' ' ')"

# Reverse: tasks return to the unpatched state; the reader never left it.
echo 0 > $lp/enabled
t3=$(uptime_s)
if wait_until 10 lp_gone $patch; then
    pass "the reversed transition ends"
else
    fail "the reversed transition did not end within 10 s (transition=$(cat $lp/transition))"
fi
t4=$(uptime_s)
info "reversal written at $t3 s (insmod + $(awk "BEGIN{print $t3 - $t1}") s), patch gone at $t4 s" \
    "(+$(awk "BEGIN{print $t4 - $t3}") s); reader patch_state=$(cat /proc/$reader/patch_state)"
check "rmmod $patch" rmmod $patch
check_eq "/proc/cmdline is the original again" "$KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
check_eq "pipes work after the reversal" "through a pipe" "$(echo through a pipe | cat | cat)"
check "the reader is still alive" [ -d /proc/$reader ]

echo "fed after the reversal" >&3
exec 3>&-
wait $reader
rc=$?
check_eq "the reader exits normally once fed" 0 "$rc"
check_eq "the reader read what was written" "fed after the reversal" "$(cat /tmp/stall.out)"
