# lab: active portal's link cut during IO: dm fails the path, IO continues on the other, no app errors
# lab-timeout: 400
# lab-suite: baseline
. "$LAB_LIB"

lab_setup
lab_step "map"
lab_map failover
lab_topology
lab_dm_watch_start

lab_step "IO before the fault"
lab_io_start
sleep 8

lab_step "cut the link of portal 1 (the active path) during IO"
lab_link_down 1
lab_wait_dm 1 F 60
lab_event info "IO keeps running on portal 2"
sleep 10

lab_step "check: IO went on, dm path 1 failed, path 2 active"
lab_io_stop
lab_expect_dm 1 F
lab_expect_dm 2 A
lab_topology
lab_io_check errors=0 mismatches=0 min_ops=200 resumed=1

lab_step "restore portal 1 and reinstate its path"
lab_link_up 1
lab_wait_session 1 60
lab_reinstate 1
lab_wait_dm 1 A 10
lab_done
