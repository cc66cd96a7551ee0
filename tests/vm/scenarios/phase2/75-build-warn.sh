# klive-build e: WARN_ONCE in the patched function: its __bug_table entry must come along
# (a missing one turns the WARN into an invalid-opcode oops), and .data.once keeps it once.
. /tests/lib.sh

check_exit "klive apply klive_build_warn.ko exits 0" 0 klive apply /modules/klive_build_warn.ko
out=$(cat /proc/cmdline)
check_eq "cat /proc/cmdline exits 0 and shows the patched output" "$KLIVE_ORIGINAL_CMDLINE klive-warn" "$out"
cat /proc/cmdline > /dev/null
check_eq "the warning was printed once" 1 "$(dmesg | grep -c 'klive: WARN test')"
check "the warning names the patched function in the livepatch module" sh -c "dmesg | grep -q 'cmdline_proc_show.*\[klive_build_warn\]'"
check "no invalid opcode" sh -c "! dmesg | grep -q 'invalid opcode'"
check "the kernel is tainted W (warning)" taint_has 9
