# lab: two portals up, failover map built with dmsetup, 20 s of verified IO, no errors
# lab-timeout: 300
. "$LAB_LIB"

lab_setup
lab_step "map"
lab_map failover
lab_topology
lab_expect_dm 1 A
lab_expect_dm 2 A
lab_dm_watch_start

lab_step "verified IO"
lab_io_start
sleep 20
lab_io_stop
lab_io_check errors=0 mismatches=0 min_ops=200 max_stall=5
lab_expect_dm 1 A
lab_expect_dm 2 A
lab_done
