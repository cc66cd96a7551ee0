# Scenario a: `klive apply` level 1 changes /proc/cmdline; status shows level 1 and taint K.
. /tests/lib.sh

# has TEXT PATTERN: TEXT contains a line matching PATTERN (grep BRE).
has() { printf "%s\n" "$1" | grep -q -- "$2"; }

check_exit "status before any patch exits 1 (no patch applied)" 1 klive status
out=$(klive apply /modules/klive_test_l1.ko 2>&1)
rc=$?
info "klive apply: $out"
check_eq "klive apply level 1 exits 0" 0 "$rc"
check_eq "/proc/cmdline shows the level-1 output" "klive-level-1 $KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
json=$(klive status --json)
rc=$?
check_eq "status exits 0 (patched and healthy)" 0 "$rc"
klive_part=$(echo "$json" | sed -n '/"klive": {/,/}/p')
check "status --json shows level 1" has "$klive_part" '"level": 1,'
check "status --json shows the patch applied" has "$klive_part" '"state": "applied"'
check "status --json shows taint K" has "$json" '"letter": "K"'
check "the kernel's taint has bit 15 (K) set" taint_has 15
check_eq "klive uname -r shows the effective release" "$KLIVE_RELEASE+klive.1" "$(klive uname -r)"
check "state.json records level 1 on the state disk" grep -q '"level": 1' /var/lib/klive/state.json
