# Scenario e: modules klive must refuse before anything reaches the kernel.
. /tests/lib.sh

# has TEXT PATTERN: TEXT contains a line matching PATTERN (grep BRE).
has() { printf "%s\n" "$1" | grep -q -- "$2"; }

refuse() { # refuse NAME FILE EXPECTED_TEXT
    before=$(ls /sys/module | wc -l)
    out=$(klive apply "$2" 2>&1)
    rc=$?
    info "$1: $out"
    check_eq "$1: exit 4 (refused)" 4 "$rc"
    check "$1: the error says '$3'" has "$out" "$3"
    check "$1: the error says nothing was loaded" has "$out" 'nothing was loaded'
    check_eq "$1: no module was loaded" "$before" "$(ls /sys/module | wc -l)"
    check_eq "$1: no livepatch registered" "" "$(ls /sys/kernel/livepatch)"
}

refuse "module built for another kernel" /modules/klive_test_wrongkernel.ko "built for kernel $KLIVE_WRONG_RELEASE"
refuse "non-livepatch module" /modules/klive_test_plain.ko "not a livepatch module"
refuse "truncated file" /modules/klive_test_truncated.ko "not a valid ELF object"
refuse "missing file" /modules/does-not-exist.ko "cannot read"
check "the plain module never ran its init" sh -c "! dmesg | grep -q klive_test_plain"
