# klive-build g: two diffs (cmdline + meminfo) built into one cumulative level 2 that replaces
# level 1 (klive_build_cmdline) in one transition.
. /tests/lib.sh

out=$(klive apply /modules/klive_build_cumulative.ko 2>&1)
rc=$?
info "klive apply: $out"
check_eq "klive apply level 2 exits 0" 0 "$rc"
check_eq "/proc/cmdline keeps the level-1 change" "$KLIVE_ORIGINAL_CMDLINE klive=1" "$(cat /proc/cmdline)"
check "/proc/meminfo has the level-2 change" grep -q '^VMALLOCCHUNK:' /proc/meminfo
check "/proc/meminfo has no VmallocChunk line" sh -c "! grep -q '^VmallocChunk:' /proc/meminfo"
check_eq "one livepatch registered: level 2" "klive_build_cumulative" "$(ls /sys/kernel/livepatch)"
check "the level-1 module is unloaded" [ ! -d /sys/module/klive_build_cmdline ]
check_eq "klive uname -r shows level 2" "$KLIVE_RELEASE+klive.2" "$(klive uname -r)"
