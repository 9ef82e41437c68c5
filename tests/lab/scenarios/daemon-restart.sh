# lab: mpathd restarted under IO adopts the map and still sees a later silent loss; killed (SIGKILL) during a fault and started again, it handles the fault, and the sessions' recovery timeouts come back on exit
# lab-timeout: 600
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"

lab_setup
lab_step "failover map made by mpathd"
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
lab_wait 15 "recovery_tmo 0 on both sessions" lab_tmo_is 0

lab_step "restart under IO: the map is adopted, not reloaded"
lab_io_start
sleep 3
before=$(dmsetup table sanvol1)
lab_mpathd_stop
lab_mpathd_start
grep 'ready maps=' "$LAB_OUT/mpathd.log" | tail -1 | grep -q 'created=0 reloaded=0 errors=0' \
	|| lab_fail "restart changed the map: $(grep 'ready maps=' "$LAB_OUT/mpathd.log" | tail -1)"
[ "$(dmsetup table sanvol1)" = "$before" ] || lab_fail "table changed across the restart"
lab_mpathd_wait_probes 4

lab_step "a silent loss after the restart, IO still running: seen and handled at once"
a=$(lab_active_path)
mark=$(lab_log_lines)
lab_drop_net "$a"
lab_wait 5 "mpathd to fail path $a" lab__dm_is "$a" F
tail -n +"$mark" "$LAB_OUT/mpathd.log" | grep -E "fail_path: |rescue" | head -3
[ "$(lab_decisions fail_path "$mark")" -ge 1 ] || lab_fail "the path was failed by the kernel, not by mpathd: the stall was not seen"
sleep 3
lab_io_stop
lab_io_check errors=0 mismatches=0 resumed=1 max_stall=2
lab_undrop_net "$a"
lab_wait_session "$a" 60
lab_wait 30 "path $a back" lab__dm_is "$a" A

lab_step "SIGKILL during a fault, then a new daemon: the fault is still handled"
lab_wait 15 "recovery_tmo 0 on both sessions" lab_tmo_is 0
lab_io_start
sleep 3
a=$(lab_active_path)
lab_mpathd_kill
lab_drop_net "$a"
sleep 1
mark=$(lab_log_lines)
lab_mpathd_start
lab_wait 30 "path $a failed" lab__dm_is "$a" F
tail -n +"$mark" "$LAB_OUT/mpathd.log" | grep -E "fail_path: |rescue|adopted|recovery_tmo" | head -5
sleep 3
lab_io_stop
# Without a daemon for a second the IO waited. The new daemon cannot see requests sent
# before it watched, and under the lab's emulation its probes take ~12 s to load (the
# verifier; 0.2-0.7 s on real hardware), so here the path fails when the session does:
# NOP-out 5 s + 5 s, with the recovery_tmo 0 the killed daemon left (about 10 s; the
# kernel with the sessions' own 5 s takes 15 s). What this proves: the killed daemon's
# map kept working and the new one adopts it and takes the fault over.
lab_io_check errors=0 mismatches=0 resumed=1 max_stall=13
lab_undrop_net "$a"
lab_wait_session "$a" 60
lab_wait 30 "path $a back" lab__dm_is "$a" A

lab_step "on exit every session gets its original recovery timeout back"
lab_mpathd_stop
lab_tmo_is "$LAB_RECOVERY_TMO" || lab_fail "recovery_tmo not restored: $(lab_tmo)"
lab_done
