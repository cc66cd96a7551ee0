# Scenario b: level 2 (replace = true) changes /proc/cmdline and /proc/version in one
# transition; the level-1 module is gone.
. /tests/lib.sh

# has TEXT PATTERN: TEXT contains a line matching PATTERN (grep BRE).
has() { printf "%s\n" "$1" | grep -q -- "$2"; }

version_before=$(cat /proc/version)
case "$version_before" in
*klive-level*) fail "/proc/version already patched before level 2: $version_before" ;;
esac
out=$(klive apply --json /modules/klive_test_l2.ko)
rc=$?
info "klive apply --json: $(echo "$out" | tr -s ' \n' ' ')"
check_eq "klive apply level 2 exits 0" 0 "$rc"
check "the result names klive_test_l1 as replaced" has "$(echo "$out" | grep -A1 '"replaced"')" klive_test_l1
check_eq "/proc/cmdline shows the level-2 output" "klive-level-2 $KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
check_eq "/proc/version shows the level-2 marker" "$version_before klive-level-2" "$(cat /proc/version)"
check_eq "one livepatch registered: level 2" "klive_test_l2" "$(ls /sys/kernel/livepatch)"
check "level 2 patches both functions in one patch" \
    sh -c "ls /sys/kernel/livepatch/klive_test_l2/vmlinux | grep -q cmdline_proc_show && ls /sys/kernel/livepatch/klive_test_l2/vmlinux | grep -q version_proc_show"
check "the level-1 module is unloaded" [ ! -d /sys/module/klive_test_l1 ]
check "klive list shows level 2 as applied" sh -c "klive list | grep klive_test_l2 | grep -q applied"
check "klive list shows level 2 cached as the last good level" sh -c "klive list | grep klive_test_l2 | grep -q last-good"
if [ -e /sys/kernel/livepatch/klive_test_l2/replace ]; then
    check "klive list --json shows replace=true" sh -c "klive list --json | grep -q '\"replace\": true'"
else
    check "klive list --json shows replace as unknown (no sysfs attribute before 6.11)" \
        sh -c "klive list --json | grep -q '\"replace\": null'"
fi
check_eq "klive uname -r shows level 2" "$KLIVE_RELEASE+klive.2" "$(klive uname -r)"
