# lab: bench failover: each fault on the active path during verified IO, first with the kernel alone (a map made by dmsetup), then with mpathd managing the map
# lab-timeout: 1500
# Run by `cargo xtask bench failover`, which sets BENCH_MPATHD (a release build) below the
# header and summarizes failover-raw.jsonl into target/bench/failover.json.
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"
MPATHD=${BENCH_MPATHD:-$MPATHD}
RAW=$LAB_OUT/failover-raw.jsonl
: >"$RAW"

FAULTS="link_cut silent_loss target_reset delay_150ms loss_5pct flapping"
inject() { # inject FAULT I
	case $1 in
	link_cut) lab_link_down "$2" ;;
	silent_loss) lab_drop_net "$2" ;;
	target_reset) lab_tcp_reset "$2" ;;
	delay_150ms) lab_netem "$2" "delay 150ms" ;;
	loss_5pct) lab_netem "$2" "loss 5%" ;;
	flapping)
		local end=$((SECONDS + 20))
		lab_event fault "link p$2 flapping (down 0.5 s, up 0.5 s) for 20 s"
		while [ $SECONDS -lt $end ]; do
			ip link set "p$2" down; sleep 0.5; ip link set "p$2" up; sleep 0.5
		done
		;;
	esac
}
restore() { # restore FAULT I
	case $1 in
	link_cut) lab_link_up "$2" ;;
	silent_loss) lab_undrop_net "$2" ;;
	target_reset) lab_tcp_reset_clear "$2" ;;
	delay_150ms | loss_5pct) lab_netem_clear "$2" ;;
	flapping) ;;
	esac
}

# run DAEMON FAULT: verified IO, the fault on the active path, 12 s of IO under it (the
# kernel alone needs ~15 s for a dead path: give it time to fail over), restore; one JSON
# line with the verifier's figures and the fault's time.
run() {
	local daemon=$1 f=$2 a t mark
	a=$(lab_active_path)
	lab_step "bench: $f with $daemon (active path $a)"
	mark=$(lab_log_lines 2>/dev/null || echo 1)
	lab_io_start
	sleep 3
	t=$EPOCHREALTIME
	inject "$f" "$a"
	sleep 20
	lab_io_stop 180
	restore "$f" "$a"
	python3 - "$RAW" "$daemon" "$f" "$t" "$a" "${LAB_DEV[a]}" "$mark" "$LAB_OUT/mpathd.log" <<-'PY'
		import json, sys, datetime
		raw, daemon, fault, t, a, dev, mark, log = sys.argv[1:]
		r = json.load(open("/tmp/labio.json"))
		row = {"daemon": daemon, "fault": fault, "fault_at": float(t), "path": dev,
		       "longest_stall_s": r["longest_stall"]["seconds"], "ops": r["ops"],
		       "errors": r["io_errors"]["count"], "mismatches": r["mismatches"]["count"],
		       "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
		       "max_ms": r["latency_ms"]["max"]}
		if daemon == "mpathd":
		    # mpathd's decisions after the fault: the first, and how it was timed.
		    lines = open(log).read().splitlines()[int(mark) - 1:]
		    dec = []
		    for l in lines:
		        for kind in ("fail_path", "demote"):
		            if ("mpathd::daemon: %s: " % kind) in l and dev in l:
		                ts = datetime.datetime.fromisoformat(l.split()[0].replace("Z", "+00:00")).timestamp()
		                kv = dict(w.split("=", 1) for w in l.split() if "=" in w and w.split("=", 1)[0] in
		                          ("signal_to_decision_ms", "decision_to_done_ms"))
		                dec.append((ts, kind, kv))
		    dec = [d for d in dec if d[0] >= float(t) - 1]
		    row["decisions"] = len(dec)
		    if dec:
		        ts, kind, kv = dec[0]
		        row["first_decision"] = kind
		        # Logged when device-mapper had done it.
		        row["fault_to_action_s"] = round(ts - float(t), 3)
		        if "signal_to_decision_ms" in kv:
		            row["signal_to_decision_ms"] = float(kv["signal_to_decision_ms"])
		        if "decision_to_done_ms" in kv:
		            row["decision_to_done_ms"] = float(kv["decision_to_done_ms"])
		open(raw, "a").write(json.dumps(row) + "\n")
		print(json.dumps(row))
	PY
	lab_wait_session "$a" 90
	if [ "$daemon" = kernel ]; then
		# dm does not reinstate by itself: what a daemon does once the path works.
		sleep 2
		[ "$(lab_dm_path_state "$a")" = F ] && lab_reinstate "$a"
		lab_do dmsetup message "$LAB_MAP" 0 switch_group 1
	fi
	lab_wait 90 "path $a usable again" lab__dm_is "$a" A
	sleep 2
}

lab__both_active() { lab__dm_is 1 A && lab__dm_is 2 A; }

lab_setup
lab_step "kernel alone: a failover map made with dmsetup"
lab_map failover
lab_dm_watch_start
for f in $FAULTS; do
	run kernel "$f"
done
kill "$LAB_DM_WATCH_PID" 2>/dev/null
LAB_DM_WATCH_PID=
lab_do dmsetup remove "$LAB_MAP"

lab_step "mpathd managing the same map"
lab_mpathd_config 'find_multipaths = "strict"
[overrides]
path_grouping_policy = "failover"
failback = "immediate"
no_path_retry = "queue"'
lab_mpathd_start
LAB_MAP=sanvol1
lab_wait_map_paths sanvol1 2 10
lab_mpathd_wait_probes
lab_dm_watch_start
for f in $FAULTS; do
	run mpathd "$f"
	lab_wait 60 "both paths active" lab__both_active
done
lab_mpathd_stop
lab_done
