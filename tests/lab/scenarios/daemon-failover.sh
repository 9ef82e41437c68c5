# lab: mpathd fails the active path itself and hands its stuck IO back: silent loss, target reset and link cut on the active portal during verified IO, each path back after the fault
# lab-timeout: 600
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"

# Longest IO stall allowed per fault (the kernel alone: 15 s for silent loss and link
# cut, 5 s for a reset). Override to measure without failing.
: "${LAB_MAX_STALL:=1.0}"

lab_setup
lab_step "failover map made by mpathd, probes on both paths"
lab_mpathd_config 'find_multipaths = "strict"
[overrides]
path_grouping_policy = "failover"
no_path_retry = "queue"'
lab_mpathd_start
LAB_MAP=sanvol1
lab_wait_map_paths sanvol1 2 10
lab_dm_watch_start
# Both sessions get a recovery timeout of 0 while the other path is usable.
lab_wait 15 "recovery_tmo 0 on both sessions" lab_tmo_is 0
lab_event info "recovery_tmo: $(lab_tmo)"
# Loading the probes takes seconds under emulation: faults wait for them.
lab_mpathd_wait_probes

# fault NAME INJECT RESTORE: verified IO; the fault on the active path; mpathd must fail
# it fast and IO must go on; then the fault is removed and the path comes back.
fault() {
	local name=$1 inject=$2 restore=$3 a t
	a=$(lab_active_path)
	lab_step "$name on the active path $a (${LAB_DEV[a]})"
	lab_io_start
	sleep 3
	t=$EPOCHREALTIME
	$inject "$a"
	lab_wait 5 "mpathd to fail path $a" lab__dm_is "$a" F
	lab_event info "path $a failed in dm $(awk -v a="$t" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f", b-a}') s after the fault (as seen by the watcher)"
	sleep 3
	lab_io_stop
	grep -E "fail_path: .*${LAB_DEV[a]}|${LAB_DEV[a]}.*fail_path|rescue" "$LAB_OUT/mpathd.log" | tail -3
	lab_io_check errors=0 mismatches=0 resumed=1 max_stall="$LAB_MAX_STALL"
	$restore "$a"
	lab_wait_session "$a" 60
	lab_wait 30 "mpathd to reinstate path $a" lab__dm_is "$a" A
	lab_event info "path $a back: $(lab_mpathd show paths | grep "${LAB_DEV[a]} " | tr -s ' ')"
}

fault "silent loss in the network" lab_drop_net lab_undrop_net
fault "target-side TCP reset" lab_tcp_reset lab_tcp_reset_clear
fault "link cut" lab_link_down lab_link_up

lab_step "sessions back to fast recovery, state consistent"
lab_wait 15 "recovery_tmo 0 on both sessions again" lab_tmo_is 0
lab_mpathd show paths
lab_mpathd_stop
# On exit the original timeouts come back.
lab_tmo_is "$LAB_RECOVERY_TMO" || lab_fail "recovery_tmo not restored on exit: $(lab_tmo)"
lab_done
