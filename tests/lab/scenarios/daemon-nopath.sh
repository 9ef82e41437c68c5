# lab: every path down for 30 s with queueing, then back: IO queued and completed with no error; with no_path_retry 3 queued IO fails after 3 checks and IO resumes when a path returns
# lab-timeout: 600
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"

conf() { # conf NO_PATH_RETRY
	lab_mpathd_config "find_multipaths = \"strict\"
[overrides]
path_grouping_policy = \"failover\"
no_path_retry = $1"
}
lab__both() { lab__dm_is 1 "$1" && lab__dm_is 2 "$1"; }
lab__any() { lab__dm_is 1 "$1" || lab__dm_is 2 "$1"; }
lab__queueing() { dmsetup table sanvol1 | grep -q queue_if_no_path; }
lab__not_queueing() { ! lab__queueing; }

lab_setup
lab_step "failover map made by mpathd, queueing"
conf '"queue"'
lab_mpathd_start
LAB_MAP=sanvol1
lab_wait_map_paths sanvol1 2 10
lab_dm_watch_start
lab_mpathd_wait_probes

lab_step "both links down for 30 s during IO: the IO waits, then completes"
lab_io_start
sleep 3
lab_link_down 1
lab_link_down 2
lab_wait 30 "both paths failed" lab__both F
sleep 30
lab_link_up 1
lab_link_up 2
lab_wait_session 1 60
lab_wait 60 "a path back" lab__any A
sleep 3
lab_io_stop 180
lab_io_check errors=0 mismatches=0 resumed=1 min_stall=20

lab_step "no_path_retry 3: queued IO fails after 3 checks, then IO resumes when a path returns"
lab_wait 60 "both paths back" lab__both A
conf 3
lab_mpathd reconfigure
dmsetup table sanvol1 | grep -q queue_if_no_path || lab_fail "queueing should be on while paths are up: $(dmsetup table sanvol1)"
lab_io_start
sleep 3
t=$EPOCHREALTIME
lab_link_down 1
lab_link_down 2
lab_wait 30 "both paths failed" lab__both F
lab_wait 30 "queueing to end (fail_if_no_path)" lab__not_queueing
lab_event info "queueing ended $(awk -v a="$t" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s after the links went down"
sleep 3
lab_link_up 1
lab_link_up 2
lab_wait_session 1 60
lab_wait 60 "a path back" lab__any A
lab_wait 20 "queueing back on" lab__queueing
sleep 3
lab_io_stop 180
# IO that met no path failed (the application saw errors), then IO resumed.
lab_io_check min_errors=1 mismatches=0 resumed=1
lab_mpathd_stop
lab_done
