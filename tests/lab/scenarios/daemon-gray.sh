# lab: gray failure: 150 ms of delay, then 5% loss, on the active path: mpathd demotes it within 10 s so the application's latency comes back to the healthy path's, fails nothing, and restores it with hysteresis once the fault is gone
# lab-timeout: 600
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"

lab_setup
lab_step "failover map made by mpathd, probes on both paths"
lab_mpathd_config 'find_multipaths = "strict"
[overrides]
path_grouping_policy = "failover"
failback = "manual"
no_path_retry = "queue"'
lab_mpathd_start
LAB_MAP=sanvol1
lab_wait_map_paths sanvol1 2 10
lab_dm_watch_start
lab_mpathd_wait_probes

lab_step "healthy: the application's latency on the active path"
lab_io_start
sleep 6
lab_io_stop
lab_io_check errors=0 mismatches=0
healthy_p99=$(python3 -c 'import json; print(json.load(open("/tmp/labio.json"))["latency_ms"]["p99"])')
lab_event info "healthy p99 ${healthy_p99} ms"

# gray NAME NETEM: the fault on the active path during IO; demoted within 2 s; then a
# second run of IO while the fault lasts must see the healthy path's latency.
gray() {
	local name=$1 spec=$2 a b mark t sampler now
	mark=$(lab_log_lines)
	lab_io_start
	sleep 2
	# The path carrying the IO now, from the disks' counters: after a reload no group is
	# active until IO comes (the 5% loss once went onto an idle path that way).
	a=$(lab_io_path) || lab_fail "no path completed I/O in 5 s: $(dmsetup status sanvol1)"
	b=$((3 - a))
	[ "$(lab_active_path)" = "$a" ] || lab_event info "dm's active group is not path $a's: $(dmsetup status sanvol1)"
	lab_step "$name on the active path $a (${LAB_DEV[a]})"
	t=$EPOCHREALTIME
	# What TCP itself counts on the faulty path, each second, to read beside mpathd's log.
	(while :; do date +%T.%N; ss -tni dst "10.99.$a.2"; sleep 1; done) \
		>"$LAB_OUT/ss-p$a-${spec// /_}.txt" 2>&1 &
	sampler=$!
	lab_netem "$a" "$spec"
	lab__demoted() { [ "$(lab_decisions demote "$mark" "${LAB_DEV[a]}")" -ge 1 ]; }
	lab_wait 10 "mpathd to demote path $a" lab__demoted
	lab_event info "path $a demoted $(awk -v a="$t" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f", b-a}') s after the fault (as the scenario saw it)"
	grep -E "mpathd::daemon: demote: " "$LAB_OUT/mpathd.log" | tail -1
	sleep 2
	kill "$sampler" 2>/dev/null
	now=$(lab_io_path) || lab_fail "no path completed I/O in 5 s after the demote: $(dmsetup status sanvol1)"
	[ "$now" != "$a" ] || lab_fail "I/O still goes to the demoted path $a: $(dmsetup status sanvol1)"
	lab_io_stop
	lab_io_check errors=0 mismatches=0
	lab_step "$name goes on: the application is back to the healthy path's latency"
	lab_io_start
	sleep 6
	lab_io_stop
	lab_io_check errors=0 mismatches=0
	python3 -c '
import json, sys
p99 = json.load(open("/tmp/labio.json"))["latency_ms"]["p99"]
healthy = float(sys.argv[1])
print("p99 %.1f ms during the fault (healthy %.1f ms)" % (p99, healthy))
sys.exit(0 if p99 <= max(3 * healthy, healthy + 30) else 1)' "$healthy_p99" \
		|| lab_fail "the application's p99 did not come back to the healthy path's level"
	[ "$(lab_decisions fail_path "$mark")" = 0 ] || lab_fail "a gray failure failed a path: $(grep 'fail_path: ' "$LAB_OUT/mpathd.log" | tail -2)"
	[ "$(lab_decisions demote "$mark" "${LAB_DEV[b]}")" = 0 ] || lab_fail "the healthy path $b was demoted: $(grep 'demote: ' "$LAB_OUT/mpathd.log" | tail -2)"
	lab_step "$name removed: the path is restored after a quiet period"
	lab_netem_clear "$a"
	t=$EPOCHREALTIME
	lab__restored() { [ "$(lab_decisions restore "$mark" "${LAB_DEV[a]}")" -ge 1 ]; }
	lab_wait 60 "mpathd to restore path $a" lab__restored
	lab_event info "path $a restored $(awk -v a="$t" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s after the fault ended"
}

gray "150 ms of added delay" "delay 150ms"
gray "5% packet loss" "loss 5%"
lab_mpathd show paths
lab_mpathd_stop
lab_done
