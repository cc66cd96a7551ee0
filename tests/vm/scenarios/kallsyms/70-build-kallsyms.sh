# klive-build's symbol source: /proc/kallsyms of this kernel, taken as root, written to the
# state disk for the host (xtask/src/vm/kallsyms.rs reads it out of the disk image).
. /tests/lib.sh

out=$KLIVE_HARNESS_DIR/kallsyms.txt
if ! cat /proc/kallsyms > "$out"; then
    fail "cannot copy /proc/kallsyms to $out"
    exit 0
fi
sync
lines=$(wc -l < "$out")
echo "KLIVE-KALLSYMS-LINES $lines"
check "the dump holds vmlinux's cmdline_proc_show" grep -q ' cmdline_proc_show$' "$out"
check "the dump has real addresses (taken as root)" sh -c "grep ' cmdline_proc_show$' '$out' | grep -qv '^0000000000000000 '"
