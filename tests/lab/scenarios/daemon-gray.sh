# lab: gray failure: 150 ms of delay, then 5% loss, on the active path: mpathd demotes it within 10 s so the application's latency comes back to the healthy path's, fails nothing healthy (a lossy path may be failed on a stall), and restores it with hysteresis once the fault is gone
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

# lost_of PATH: the path's mpathd_path_tcp_lost_segments_total as mpathd serves it now.
lost_of() {
	curl -sf http://127.0.0.1:9977/metrics |
		awk -v p="path=\"$1\"" '/^mpathd_path_tcp_lost_segments_total\{/ && index($0, p) { print $NF; exit }'
}

# lab__stall_fails FROM_LINE PATH [NETEM]: PATH's fail_path decisions on a stall since
# FROM_LINE; under a NETEM other than loss, 0 (only a lost retransmission may fail a path).
lab__stall_fails() {
	case ${3:-loss} in loss*) ;; *) echo 0; return ;; esac
	tail -n +"$1" "$LAB_OUT/mpathd.log" | grep -cE "mpathd::daemon: fail_path: .*\(stall\).* path=$2 " || true
}

# gray NAME NETEM: the fault on the active path during IO; demoted within 2 s; then a
# second run of IO while the fault lasts must see the healthy path's latency.
gray() {
	local name=$1 spec=$2 a b mark t sampler now how
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
	lost_a=$(lost_of "${LAB_DEV[a]}") lost_b=$(lost_of "${LAB_DEV[b]}")
	[ -n "$lost_a" ] && [ -n "$lost_b" ] || lab_fail "no mpathd_path_tcp_lost_segments_total for ${LAB_DEV[a]} and ${LAB_DEV[b]}"
	lab_netem "$a" "$spec"
	# IO leaves the path: demoted, as a rule. Under loss, a segment lost and then its
	# retransmission lost too silences the path for ~0.4 s with the target unheard, which
	# is what a dead path looks like at that moment: mpathd may fail it on that stall (seen
	# once in 23 runs, 0.45 s into the loss, before any loss could be measured); it comes
	# back on clean checks. Anything else failed is a wrong decision (checked below).
	lab__demoted() { [ "$(lab_decisions demote "$mark" "${LAB_DEV[a]}")" -ge 1 ]; }
	# Demoted first and failed on a stall a moment later is the same case: IO still in
	# flight on the demoted path met a lost retransmission (seen once in CI). So whether
	# the path was failed is asked again at every check below, not settled once here.
	lab__stall_failed() { [ "$spec" != "${spec#loss}" ] && [ "$(lab__stall_fails "$mark" "${LAB_DEV[a]}")" -ge 1 ]; }
	lab__left() { lab__demoted || lab__stall_failed; }
	lab_wait 10 "mpathd to demote path $a" lab__left
	if lab__demoted; then how=demoted; else how=failed; fi
	lab__stall_failed && lab_event info "path $a failed on a stall under $spec (its retransmission lost too)"
	lab_event info "path $a $how $(awk -v a="$t" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f", b-a}') s after the fault (as the scenario saw it)"
	grep -E "mpathd::daemon: (demote|fail_path): " "$LAB_OUT/mpathd.log" | tail -1
	sleep 2
	kill "$sampler" 2>/dev/null
	# TCP's own count of data the target never got, as the metric shows it: it climbs
	# under loss; under delay alone every retransmission is spurious and D-SACKed.
	lost_a=$(($(lost_of "${LAB_DEV[a]}") - lost_a)) lost_b=$(($(lost_of "${LAB_DEV[b]}") - lost_b))
	lab_event info "lost segments during the fault: path $a +$lost_a, path $b +$lost_b (mpathd_path_tcp_lost_segments_total)"
	# (A failed path's connection was destroyed and replaced: its count started again.)
	case $spec in loss*) lab__stall_failed || [ "$lost_a" -ge 2 ] || lab_fail "mpathd_path_tcp_lost_segments_total of path $a rose by $lost_a under $spec" ;; esac
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
	[ "$(lab_decisions fail_path "$mark")" = "$(lab__stall_fails "$mark" "${LAB_DEV[a]}" "$spec")" ] ||
		lab_fail "a gray failure failed a path: $(grep 'fail_path: ' "$LAB_OUT/mpathd.log" | tail -2)"
	[ "$(lab_decisions demote "$mark" "${LAB_DEV[b]}")" = 0 ] || lab_fail "the healthy path $b was demoted: $(grep 'demote: ' "$LAB_OUT/mpathd.log" | tail -2)"
	lab_step "$name removed: the path is restored after a quiet period"
	lab_netem_clear "$a"
	t=$EPOCHREALTIME
	lab__restored() {
		if lab__stall_failed; then
			[ "$(lab_decisions reinstate_path "$mark" "${LAB_DEV[a]}")" -ge 1 ]
		else
			[ "$(lab_decisions restore "$mark" "${LAB_DEV[a]}")" -ge 1 ]
		fi
	}
	lab_wait 60 "mpathd to restore path $a" lab__restored
	lab_event info "path $a restored $(awk -v a="$t" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s after the fault ended"
}

gray "150 ms of added delay" "delay 150ms"
gray "5% packet loss" "loss 5%"
lab_mpathd show paths
lab_mpathd_stop
lab_done
