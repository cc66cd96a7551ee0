# klive-build a: a module built from tests/build/10-cmdline.patch (cmdline_proc_show reads the
# non-exported saved_command_line through a klp relocation), applied with `klive apply`.
. /tests/lib.sh

out=$(klive apply /modules/klive_build_cmdline.ko 2>&1)
rc=$?
info "klive apply: $out"
check_eq "klive apply klive_build_cmdline.ko exits 0" 0 "$rc"
check_eq "/proc/cmdline shows the patched output" "$KLIVE_ORIGINAL_CMDLINE klive=1" "$(cat /proc/cmdline)"
check_eq "one livepatch registered" "klive_build_cmdline" "$(ls /sys/kernel/livepatch)"
check "sysfs lists the patched function" test -d /sys/kernel/livepatch/klive_build_cmdline/vmlinux/cmdline_proc_show,1
check_eq "klive uname -r shows level 1" "$KLIVE_RELEASE+klive.1" "$(klive uname -r)"
