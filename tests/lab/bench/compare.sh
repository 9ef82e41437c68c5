# lab: bench compare: each fault on the path carrying verified IO, with the kernel alone, Debian's multipathd and mpathd in one VM; or the overhead on a healthy map (cargo xtask bench compare)
# lab-timeout: 2400
# A benchmark, not a test: `cargo xtask bench compare` runs it once per part (a few faults,
# or the overhead), setting the knobs below under this header, and computes the figures
# from what it records (see compare-lib.sh and docs/bench.md). Every fault of a part runs
# with all three stacks in this one boot: the kernel alone first, then multipathd, then
# mpathd, each building its own map on the same two iSCSI sessions.
: "${BENCH_PART:=faults}" # faults | overhead
: "${BENCH_FAULTS:=link_cut silent_loss target_reset}"
: "${BENCH_STACKS:=kernel multipathd mpathd}"
# The overhead's baseline is the kernel with no probe at all (lib.sh holds tracepoints open
# otherwise, so daemons come and go under IO without patching kernel text).
[ "$BENCH_PART" = overhead ] && LAB_PIN_TRACEPOINTS=0
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"
. "${LAB_LIB%/*}/bench/compare-lib.sh"

# multipathd sees no path without udev's database; every stack runs with udevd, as on a host.
lab_udev_start
lab_setup
LAB_WWID=$(lab_wwid)
bench_record_setup

case $BENCH_PART in
faults)
	for s in $BENCH_STACKS; do
		bench_stack_up "$s"
		for f in $BENCH_FAULTS; do
			bench_run "$f"
		done
		bench_stack_down
	done
	;;
overhead) bench_overhead ;;
*) lab_fail "BENCH_PART is '$BENCH_PART': faults or overhead" ;;
esac
lab_done
