# lab: KernelDm on the kernel's device-mapper (loop devices as paths): the dm_kernel tests without udevd, then with it
# lab-timeout: 180
# No iSCSI here: dm-multipath takes any block device, so each test makes its paths from
# loop devices over files in /tmp (several loop devices over one file are several paths
# to one LUN). The first run has no udevd, so KernelDm makes /dev/mapper/<name> itself;
# the second runs under systemd-udevd, whose rules link /dev/mapper/<name> and whose
# cookie handshake the devicemapper crate waits for.
. "$LAB_LIB"
: "${DM_KERNEL_TEST:?DM_KERNEL_TEST is set by the harness (cargo xtask lab run)}"

lab_step "modules"
lab_do modprobe -a dm_multipath dm_round_robin dm_queue_length dm_service_time loop

# dm_kernel_run LABEL [TEST...]: the ignored (device-mapper) tests, or only these, in one
# run (each start of the big test binary costs seconds under TCG); then nothing of
# theirs may be left: no dmk-* map, /dev/mapper node or loop device.
dm_kernel_run() {
	local label=$1 rc log n t0=$EPOCHREALTIME
	shift
	log="$LAB_OUT/dm_kernel-${label// /-}.log"
	lab_step "dm_kernel tests ($label)"
	"$DM_KERNEL_TEST" --ignored --test-threads=1 --nocapture ${1:+--exact} "$@" >"$log" 2>&1
	rc=$?
	cat "$log"
	[ $rc -eq 0 ] || lab_fail "dm_kernel tests ($label) failed (exit $rc): $(grep -m1 -A1 'panicked at' "$log" | tail -1)"
	n=$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$log")
	[ "${n:-0}" -gt 0 ] || lab_fail "dm_kernel tests ($label): no test ran"
	[ $# -eq 0 ] || [ "$n" -eq $# ] || lab_fail "dm_kernel tests ($label): $n of the $# tests named ran"
	lab_event info "dm_kernel tests ($label): $n passed in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s"
	lab_step "nothing left behind ($label)"
	[ -z "$(dmsetup ls 2>/dev/null | grep '^dmk-')" ] || lab_fail "maps left behind: $(dmsetup ls)"
	[ -z "$(ls -A /dev/mapper | grep '^dmk-\|^\.mpathd-')" ] || lab_fail "/dev/mapper nodes left behind: $(ls -la /dev/mapper)"
	[ -z "$(losetup -a | grep '/tmp/dmk-')" ] || lab_fail "loop devices left behind: $(losetup -a)"
}

dm_kernel_run "without udevd"
# Under udevd every resume and remove waits for udev's rules (blkid, dmsetup) to run,
# seconds each under TCG: the tests that make, open, reload and remove maps run again.
lab_udev_start
dm_kernel_run "with udevd" a_second_instance_adopts_existing_maps failed_creates_leave_nothing_behind \
	remove_is_refused_while_open reload_between_two_and_three_paths_under_io
lab_done
