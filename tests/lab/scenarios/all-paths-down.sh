# lab: queue_if_no_path, both portals down for 30 s then back: IO stalls, resumes, no app errors
# lab-timeout: 500
# lab-suite: baseline
. "$LAB_LIB"

lab_setup
lab_step "map with queue_if_no_path"
lab_map multibus queue
lab_topology
lab_dm_watch_start

lab_step "IO before the fault"
lab_io_start
sleep 8

lab_step "both portals down for 30 s"
down_at=$EPOCHREALTIME
lab_link_down 1
lab_link_down 2
lab_wait_dm 1 F 60
lab_wait_dm 2 F 60
lab_event info "no path left: dm queues the IO"
lab_sleep_since "$down_at" 30
lab_link_up 1
lab_link_up 2

lab_step "sessions back, paths reinstated (no daemon yet: done by the scenario)"
lab_wait_session 1 60
lab_wait_session 2 60
lab_reinstate 1
lab_reinstate 2
lab_wait_dm 1 A 10
lab_wait_dm 2 A 10
sleep 8

lab_step "check: IO stalled, then resumed, no errors, no mismatches"
lab_io_stop
lab_topology
lab_io_check errors=0 mismatches=0 min_ops=200 min_stall=25 resumed=1
lab_done
