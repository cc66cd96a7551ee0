# klive-build c: newuname calls the static override_release of kernel/sys.c (a klp relocation
# with its sympos); the changed __do_sys_newuname has no fentry (notrace), so klive-build
# copies it and patches its callers __x64_sys_newuname and __ia32_sys_newuname.
. /tests/lib.sh

check_exit "klive apply klive_build_uname.ko exits 0" 0 klive apply /modules/klive_build_uname.ko
check_eq "uname -s shows the patched sysname" "Linux.klive" "$(uname -s)"
check_eq "uname -r is unchanged" "$KLIVE_RELEASE" "$(uname -r)"
check "sysfs lists __x64_sys_newuname as patched" test -d /sys/kernel/livepatch/klive_build_uname/vmlinux/__x64_sys_newuname,1
check "/proc/meminfo is the original again" grep -q '^VmallocChunk:' /proc/meminfo
