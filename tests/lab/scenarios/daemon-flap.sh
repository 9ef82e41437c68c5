# lab: a flapping path (its link down and up every second for 60 s) during verified IO: mpathd keeps the transitions bounded and the application sees no error
# lab-timeout: 600
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"

lab_setup
lab_step "failover map made by mpathd, probes on both paths"
lab_mpathd_config 'find_multipaths = "strict"
[overrides]
path_grouping_policy = "failover"
failback = "immediate"
no_path_retry = "queue"'
lab_mpathd_start
LAB_MAP=sanvol1
lab_wait_map_paths sanvol1 2 10
lab_dm_watch_start
lab_mpathd_wait_probes

lab_step "portal 1's link flaps every second for 60 s during IO"
a=$(lab_active_path)
mark=$(lab_log_lines)
lab_io_start
sleep 2
end=$((SECONDS + 60))
n=0
while [ $SECONDS -lt $end ]; do
	ip link set "p$a" down
	sleep 0.5
	ip link set "p$a" up
	sleep 0.5
	n=$((n + 1))
done
lab_event restore "link p$a flapped $n times"
sleep 2
lab_io_stop
lab_io_check errors=0 mismatches=0 resumed=1
fails=$(lab_decisions fail_path "$mark")
reinstates=$(lab_decisions reinstate_path "$mark")
lab_event info "mpathd over the flapping: $fails fail_path, $reinstates reinstate_path decisions for $n flaps"
# Each return waits longer (flap damping): far fewer reinstates than flaps.
[ "$reinstates" -le 8 ] || lab_fail "$reinstates reinstates in 60 s of flapping: damping does not hold"
[ "$fails" -le $((reinstates + 2)) ] || lab_fail "$fails fails for $reinstates reinstates"

lab_step "the link stays up: the path comes back"
lab_wait_session "$a" 60
lab_wait 180 "mpathd to reinstate path $a" lab__dm_is "$a" A
lab_mpathd show paths
lab_mpathd_stop
lab_done
