# The `cargo xtask demo` script: a live patch applied and reverted by the klive agent.
# Lines are shown as they are; a failed must-succeed step ends the demo with an error.

step() {
    echo
    echo "== $1"
    shift
    echo "\$ $*"
    "$@"
}

# must_step HEADING COMMAND...: a step that has to succeed for the demo to make sense.
must_step() {
    _heading=$1
    step "$@" || {
        echo "KLIVE-RESULT FAIL demo: step '$_heading' failed"
        exit 1
    }
}

step "the running kernel's command line" cat /proc/cmdline
step "klive status (nothing applied yet)" klive status
must_step "apply a live patch for this kernel" klive apply /modules/klive_test_l1.ko
step "the patched /proc/cmdline" cat /proc/cmdline
step "klive status" klive status
must_step "replace level 1 by cumulative level 2 in one transition" klive apply /modules/klive_test_l2.ko
step "the patched /proc/cmdline and /proc/version" cat /proc/cmdline /proc/version
step "every livepatch loaded" klive list
step "the effective kernel version" klive uname -a
must_step "revert to the original kernel code" klive revert
step "the original /proc/cmdline and /proc/version" cat /proc/cmdline /proc/version
echo
