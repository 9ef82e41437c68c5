# lab: the demo: the same link cut on the active portal during the same verified IO, first with the kernel alone (a dm map made by dmsetup), then with mpathd managing the map
# Run by `cargo xtask demo`; the host prints both timelines and the longest stalls side by side.
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"

# One phase: IO, the active portal's link cut, wait for the failover, IO on, restore.
# Its verifier report is kept as labio-PHASE.json.
phase() {
	local name=$1 a
	a=$(lab_active_path)
	lab_io_start
	sleep 4
	lab_link_down "$a"
	lab_wait 60 "path $a to fail" lab__dm_is "$a" F
	sleep 4
	lab_io_stop
	lab_io_check errors=0 mismatches=0 resumed=1
	cp /tmp/labio.json "$LAB_OUT/labio-$name.json"
	lab_link_up "$a"
	lab_wait_session "$a" 60
}

lab_setup
echo
lab_step "phase: kernel alone: a failover map made with dmsetup, nothing watching"
lab_map failover
lab_topology
lab_dm_watch_start
phase kernel
kill "$LAB_DM_WATCH_PID" 2>/dev/null
LAB_DM_WATCH_PID=
lab_do dmsetup remove "$LAB_MAP"

echo
lab_step "phase: mpathd: the same map made and watched by mpathd"
lab_mpathd_config 'find_multipaths = "strict"
[overrides]
path_grouping_policy = "failover"
failback = "manual"
no_path_retry = "queue"'
lab_mpathd_start
LAB_MAP=sanvol1
lab_wait_map_paths sanvol1 2 10
lab_mpathd_wait_probes
lab_mpathd show topology
lab_dm_watch_start
mark=$(lab_log_lines)
phase mpathd
# mpathd's own account of what it did, on the timeline.
tail -n +"$mark" "$LAB_OUT/mpathd.log" | grep -E "mpathd::daemon: (fail_path|rescue)" | head -3 |
	while read -r line; do lab_event mpathd "${line#*mpathd::daemon: }"; done
lab_mpathd_stop
lab_done
