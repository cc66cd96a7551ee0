# klive-build f: a loadable module (Debian's binfmt_misc.ko): bm_status_read reads the
# module-local static `enabled` through a klp relocation gated by the module.
. /tests/lib.sh

status=/proc/sys/fs/binfmt_misc/status
check "insmod Debian's binfmt_misc.ko" insmod /modules/binfmt_misc.ko
check "mount binfmt_misc" mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
check_eq "status before the patch" enabled "$(cat $status)"
check_exit "klive apply klive_build_binfmt.ko exits 0" 0 klive apply /modules/klive_build_binfmt.ko
check_eq "status after the patch" "enabled klive" "$(cat $status)"
echo 0 > $status
check_eq "the patched code reads the module's static after a write" "disabled klive" "$(cat $status)"
echo 1 > $status
check_eq "and again" "enabled klive" "$(cat $status)"
check "sysfs shows the module object patched" sh -c "[ \"\$(cat /sys/kernel/livepatch/klive_build_binfmt/binfmt_misc/patched)\" = 1 ]"
