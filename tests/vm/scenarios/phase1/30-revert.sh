# Scenario c: `klive revert` brings the original code back and unloads every klive module.
. /tests/lib.sh

# has TEXT PATTERN: TEXT contains a line matching PATTERN (grep BRE).
has() { printf "%s\n" "$1" | grep -q -- "$2"; }

out=$(klive revert 2>&1)
rc=$?
info "klive revert: $out"
check_eq "klive revert exits 0" 0 "$rc"
check_eq "/proc/cmdline is the original" "$KLIVE_ORIGINAL_CMDLINE" "$(cat /proc/cmdline)"
check "/proc/version has no marker" sh -c "! grep -q klive-level /proc/version"
check_eq "no livepatch registered" "" "$(ls /sys/kernel/livepatch)"
check_eq "no klive module loaded" "" "$(ls /sys/module | grep '^klive_')"
check_exit "status exits 1 (no patch applied)" 1 klive status
check_eq "klive uname -r is the plain release" "$KLIVE_RELEASE" "$(klive uname -r)"
