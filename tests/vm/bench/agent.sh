# `cargo xtask bench agent`: times the agent's commands in the guest. Prints
#   KLIVE-BENCH <metric> <value> <unit>
# lines the host aggregates; a command that fails prints a FAIL result instead.
. /tests/lib.sh

rounds=5

# Wall-clock milliseconds, modulo 10^8 (busybox date has no %N, adjtimex shows microseconds;
# busybox awk's %d is 32-bit).
now_ms() {
    adjtimex | awk '/tv_sec/ { s = $2 } /tv_usec/ { u = $2 }
        END { printf "%d\n", (s % 100000) * 1000 + int(u / 1000) }'
}

# What taking a timestamp costs (the least of five), subtracted from every measurement.
overhead=
for _ in 1 2 3 4 5; do
    a=$(now_ms)
    b=$(now_ms)
    echo "KLIVE-BENCH timestamp-overhead $((b - a)) ms"
    if [ -z "$overhead" ] || [ $((b - a)) -lt "$overhead" ]; then
        overhead=$((b - a))
    fi
done

# timed METRIC EXPECTED_STATUS COMMAND...
timed() {
    _metric=$1
    _want=$2
    shift 2
    _t0=$(now_ms)
    "$@" > /tmp/bench.out 2>&1
    _rc=$?
    _t1=$(now_ms)
    if [ "$_rc" -ne "$_want" ]; then
        fail "$_metric: '$*' exited with $_rc: $(cat /tmp/bench.out)"
        return 1
    fi
    echo "KLIVE-BENCH $_metric $((_t1 - _t0 - overhead)) ms"
}

# max_rss METRIC EXPECTED_STATUS COMMAND...: peak resident memory of the command, as the
# kernel counts it (ru_maxrss, read by /bin/peakrss: busybox `time -v` reports four times the
# real figure).
max_rss() {
    _metric=$1
    _want=$2
    shift 2
    peakrss "$@" > /tmp/bench.out 2> /tmp/bench.time
    _rc=$?
    if [ "$_rc" -ne "$_want" ]; then
        fail "$_metric: '$*' exited with $_rc: $(cat /tmp/bench.out /tmp/bench.time)"
        return 1
    fi
    echo "KLIVE-BENCH $_metric $(awk '$1 == "peakrss" { v = $2 } END { print v }' /tmp/bench.time) kB"
}

# The baseline for `klive apply`: what a bare script does to load the same module, insmod
# then a busy poll of `transition` with shell builtins only (no process per poll).
raw_apply() {
    insmod "$1" || return 1
    while read -r _t < "/sys/kernel/livepatch/$2/transition"; [ "$_t" != 0 ]; do :; done
}

# Undoes raw_apply (not timed).
raw_revert() {
    echo 0 > "/sys/kernel/livepatch/$1/enabled"
    while [ -d "/sys/kernel/livepatch/$1" ]; do :; done
    while ! rmmod "$1" 2> /dev/null; do :; done
}

i=0
while [ "$i" -lt "$rounds" ]; do
    timed raw-insmod-apply-level1 0 raw_apply /modules/klive_test_l1.ko klive_test_l1
    raw_revert klive_test_l1
    timed status-unpatched 1 klive status
    timed apply-level1 0 klive apply /modules/klive_test_l1.ko
    timed status-patched 0 klive status
    timed replace-level1-by-level2 0 klive apply /modules/klive_test_l2.ko
    timed list 0 klive list
    timed revert 0 klive revert
    timed refuse-wrong-kernel 4 klive apply /modules/klive_test_wrongkernel.ko
    i=$((i + 1))
done

max_rss max-rss-status 1 klive status
max_rss max-rss-apply 0 klive apply /modules/klive_test_l1.ko
max_rss max-rss-revert 0 klive revert
max_rss max-rss-raw-insmod 0 insmod /modules/klive_test_l1.ko
while read -r _t < /sys/kernel/livepatch/klive_test_l1/transition; [ "$_t" != 0 ]; do :; done
raw_revert klive_test_l1

# The same comparison with address-space randomisation off. TCG translates guest code into
# host code and keeps the translations keyed by virtual address: busybox (not PIE) runs at the
# same addresses every time and reuses them, the agent (static-pie) is loaded at a new
# address by every exec and is translated anew. Real CPUs have no such cost; these rounds
# show what is left of the difference without it.
echo 0 > /proc/sys/kernel/randomize_va_space
i=0
while [ "$i" -lt "$rounds" ]; do
    timed raw-insmod-apply-level1-noaslr 0 raw_apply /modules/klive_test_l1.ko klive_test_l1
    raw_revert klive_test_l1
    timed apply-level1-noaslr 0 klive apply /modules/klive_test_l1.ko
    timed revert-noaslr 0 klive revert
    i=$((i + 1))
done
echo 2 > /proc/sys/kernel/randomize_va_space
pass "$rounds rounds measured"
