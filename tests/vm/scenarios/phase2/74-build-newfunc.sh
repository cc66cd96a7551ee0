# klive-build d: a new function and a new global variable (a read counter) in the patch.
. /tests/lib.sh

check_exit "klive apply klive_build_newfunc.ko exits 0" 0 klive apply /modules/klive_build_newfunc.ko
first=$(cat /proc/cmdline)
second=$(cat /proc/cmdline)
info "reads: '$first' then '$second'"
n1=${first##*klive-reads=}
n2=${second##*klive-reads=}
check_eq "the first read shows the original and a counter" "$KLIVE_ORIGINAL_CMDLINE klive-reads=$n1" "$first"
check "the counter is a number" sh -c "[ '$n1' -ge 1 ] 2> /dev/null"
check_eq "the second read counts one more" "$((n1 + 1))" "$n2"
check_eq "uname -s is the original again" "Linux" "$(uname -s)"
