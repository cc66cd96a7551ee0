# Sourced by the VM scenario scripts (`. /tests/lib.sh`).
#
# Results: `pass DETAIL` and `fail DETAIL` print the lines the host counts,
#   KLIVE-RESULT PASS <scenario>: <detail>
# <scenario> is the script's name without .sh unless the script sets KLIVE_SCENARIO.
# A script must exit 0 (a non-zero exit is a failure of its own) and print at least one
# result. `info` prints a line the host shows but does not count.

KLIVE_SCENARIO=${KLIVE_SCENARIO:-$(basename "$0" .sh)}
KLIVE_RESULTS=${KLIVE_RESULTS:-/dev/null}

# The command line the guest booted with, before any patch changed /proc/cmdline.
KLIVE_ORIGINAL_CMDLINE=$(cat /run/klive-test/cmdline 2> /dev/null)
# The kernel this guest runs and its GNU build-id (as the test modules are tagged).
KLIVE_RELEASE=$(cat /etc/klive-test/release 2> /dev/null)
KLIVE_BUILD_ID=$(cat /etc/klive-test/build-id 2> /dev/null)
# The kernel line it belongs to (6.1, 6.12).
KLIVE_KERNEL_LINE=$(cat /etc/klive-test/line 2> /dev/null)
# The release the klive_test_wrongkernel.ko module claims to be for.
KLIVE_WRONG_RELEASE=$(cat /etc/klive-test/wrong-release 2> /dev/null)
# The harness's own directory on the state disk (the agent's is /var/lib/klive).
KLIVE_HARNESS_DIR=/mnt/state/harness

pass() {
    echo "KLIVE-RESULT PASS $KLIVE_SCENARIO: $*"
    echo PASS >> "$KLIVE_RESULTS"
}

fail() {
    echo "KLIVE-RESULT FAIL $KLIVE_SCENARIO: $*"
    echo FAIL >> "$KLIVE_RESULTS"
}

# skip REASON: the scenario does not apply to the running kernel. Printed with the reason as
# KLIVE-RESULT SKIP and counted apart, never as a pass.
skip() {
    echo "KLIVE-RESULT SKIP $KLIVE_SCENARIO: $*"
    echo SKIP >> "$KLIVE_RESULTS"
}

info() {
    echo "KLIVE-INFO $KLIVE_SCENARIO: $*"
}

# check DETAIL COMMAND [ARGS...]: passes when COMMAND succeeds.
check() {
    _detail=$1
    shift
    if "$@"; then
        pass "$_detail"
    else
        fail "$_detail (failed: $*)"
    fi
}

# check_eq DETAIL EXPECTED ACTUAL
check_eq() {
    if [ "$2" = "$3" ]; then
        pass "$1"
    else
        fail "$1: expected '$2', got '$3'"
    fi
}

# check_exit DETAIL EXPECTED_STATUS COMMAND [ARGS...]: runs COMMAND, compares its exit status.
check_exit() {
    _detail=$1
    _want=$2
    shift 2
    "$@"
    _got=$?
    if [ "$_got" -eq "$_want" ]; then
        pass "$_detail"
    else
        fail "$_detail: '$*' exited with $_got, expected $_want"
    fi
}

# wait_until SECONDS COMMAND [ARGS...]: polls COMMAND every 0.1 s; status 1 on time-out.
wait_until() {
    _ticks=$(($1 * 10))
    shift
    while ! "$@"; do
        [ "$_ticks" -le 0 ] && return 1
        _ticks=$((_ticks - 1))
        sleep 0.1
    done
    return 0
}

# Seconds since boot, with hundredths (for timings in info lines).
uptime_s() {
    cut -d' ' -f1 /proc/uptime
}

# lp_transition_done PATCH: the patch exists and its transition has ended.
lp_transition_done() {
    [ "$(cat "/sys/kernel/livepatch/$1/transition" 2> /dev/null)" = 0 ]
}

# lp_gone PATCH: no such patch is registered (disabled patches disappear from sysfs).
lp_gone() {
    [ ! -d "/sys/kernel/livepatch/$1" ]
}

# taint_has BIT: the kernel's taint mask has BIT set (15 = K, livepatch).
taint_has() {
    [ $(($(cat /proc/sys/kernel/tainted) >> $1 & 1)) -eq 1 ]
}

# host_step NAME [ARGS...]: asks the host (xtask/src/vm/fleet.rs) to carry out a step of the
# fleet boot and waits for its answer: prints `KLIVE-STEP <n> NAME ARGS` on the console,
# then polls 10.0.2.101:80 (QEMU runs `cat` of the host's answer file for each connection)
# until it reads `done <n>` or `failed <n>: <reason>`. Status 0 when done; the answer is in
# $KLIVE_STEP_REPLY. Only the fleet boot has a network.
host_step() {
    _n=$(($(cat /tmp/klive-step 2> /dev/null || echo 0) + 1))
    echo "$_n" > /tmp/klive-step
    echo "KLIVE-STEP $_n $*"
    _ticks=900
    while [ "$_ticks" -gt 0 ]; do
        KLIVE_STEP_REPLY=$(timeout 5 nc 10.0.2.101 80 < /dev/null 2> /dev/null)
        case "$KLIVE_STEP_REPLY" in
        "done $_n") return 0 ;;
        "failed $_n:"*) return 1 ;;
        esac
        sleep 0.2
        _ticks=$((_ticks - 1))
    done
    KLIVE_STEP_REPLY="the host did not answer step $_n ($*)"
    return 1
}

# check_step DETAIL NAME [ARGS...]: host_step, counted as a result.
check_step() {
    _detail=$1
    shift
    if host_step "$@"; then
        pass "$_detail"
    else
        fail "$_detail: $KLIVE_STEP_REPLY"
    fi
}

# json_field NAME: the first `"NAME": value` of pretty-printed JSON on stdin, unquoted.
json_field() {
    sed -n "s/^ *\"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" | head -n 1
}
