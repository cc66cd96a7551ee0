# Harness self-test without the agent: level 2 replaces level 1 atomically (.replace), in
# one transition for its two functions; the replaced patch leaves sysfs and can be removed.
. /tests/lib.sh

original_version=$(cat /proc/version)
insmod /modules/klive_test_l1.ko && wait_until 10 lp_transition_done klive_test_l1 ||
    fail "klive_test_l1 did not load and finish its transition"
if ! insmod /modules/klive_test_l2.ko; then
    fail "insmod klive_test_l2.ko failed"
    exit 0
fi
check "the level-2 transition ends within 10 s" wait_until 10 lp_transition_done klive_test_l2
check_eq "/proc/cmdline shows the level-2 marker only" "klive-level-2 $KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
check_eq "/proc/version gets the level-2 marker" "$original_version klive-level-2" "$(cat /proc/version)"
check "the replaced level-1 patch leaves sysfs" wait_until 10 lp_gone klive_test_l1
check "the replaced level-1 module can be removed" rmmod klive_test_l1
check_eq "/sys/module/klive_test_l2/version is the level" 2 "$(cat /sys/module/klive_test_l2/version)"

echo 0 > /sys/kernel/livepatch/klive_test_l2/enabled
check "disabling level 2 ends within 10 s" wait_until 10 lp_gone klive_test_l2
check "rmmod klive_test_l2" rmmod klive_test_l2
check_eq "/proc/cmdline is the original again" "$KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
check_eq "/proc/version is the original again" "$original_version" "$(cat /proc/version)"
