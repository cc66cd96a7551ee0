# Harness self-test without the agent: the guest runs the target kernel, a test patch loads
# with insmod, patches /proc/cmdline, and disabling it brings the original back.
. /tests/lib.sh

notes=$(od -An -tx1 -v /sys/kernel/notes | tr -d ' \n')
case "$notes" in
*"$KLIVE_BUILD_ID"*) pass "the booted kernel's build-id is $KLIVE_BUILD_ID, as the test modules are tagged" ;;
*) fail "build-id $KLIVE_BUILD_ID (from the host's image) not in /sys/kernel/notes: $notes" ;;
esac
check_eq "the guest runs the target kernel" "$KLIVE_RELEASE" "$(uname -r)"
check_eq "no livepatch at boot" "" "$(ls /sys/kernel/livepatch)"

lp=/sys/kernel/livepatch/klive_test_l1
if ! insmod /modules/klive_test_l1.ko; then
    fail "insmod klive_test_l1.ko failed"
    exit 0
fi
pass "insmod klive_test_l1.ko"
check "the transition ends within 10 s" wait_until 10 lp_transition_done klive_test_l1
check_eq "/proc/cmdline shows the level-1 marker" "klive-level-1 $KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
check "the kernel is tainted K (livepatch)" taint_has 15
check_eq "/sys/module/klive_test_l1/version is the level" 1 "$(cat /sys/module/klive_test_l1/version)"

echo 0 > $lp/enabled
check "disabling ends within 10 s" wait_until 10 lp_gone klive_test_l1
check "rmmod klive_test_l1" rmmod klive_test_l1
check_eq "/proc/cmdline is the original again" "$KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"

# Phase 2 checks that this survives the reboot.
echo "written in phase 1" > "$KLIVE_HARNESS_DIR/marker" && sync
check "a marker file is written to the state disk" [ -s "$KLIVE_HARNESS_DIR/marker" ]
