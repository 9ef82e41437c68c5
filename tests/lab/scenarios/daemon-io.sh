# lab: mpathd keeps verified IO going: multibus map, a third portal added during IO, a path logged out during IO, the daemon restarted during IO (map adopted, no reload), then failover after reconfigure
# lab-timeout: 420
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"

lab_udev_start
lab_setup

lab_step "multibus map made by mpathd"
# [overrides]: the built-in LIO entry (group_by_prio, no_path_retry 12) beats [defaults].
lab_mpathd_config 'find_multipaths = "strict"
[overrides]
path_grouping_policy = "multibus"
path_selector = "round-robin"
no_path_retry = "queue"'
lab_mpathd_start
lab_wait_map_paths sanvol1 2 10
dmsetup table sanvol1
[ "$(lab_map_groups sanvol1)" = 1 ] || lab_fail "multibus map should have one path group: $(dmsetup table sanvol1)"
lab_dm_watch_start
LAB_MAP=sanvol1
lab_io_start /dev/mapper/sanvol1
sleep 4

lab_step "a third portal added during IO"
lab_portal_add 3
lab_wait_map_paths sanvol1 3 30
lab_expect_log "reloaded map.*paths added: ${LAB_DEVT[3]}"
r0=$(awk '{print $1+$5}' "/sys/block/${LAB_DEV[3]}/stat")
sleep 4
r1=$(awk '{print $1+$5}' "/sys/block/${LAB_DEV[3]}/stat")
[ "$r1" -gt "$r0" ] || lab_fail "the new path ${LAB_DEV[3]} carries no IO ($r0 -> $r1 requests)"
lab_event info "new path ${LAB_DEV[3]} served $((r1 - r0)) requests in 4 s"

lab_step "a path logged out during IO"
gone=${LAB_DEVT[1]}
lab_logout 1
lab__map_lacks() { ! lab_map_paths "$1" | grep -qw "$2"; }
lab_wait 30 "map sanvol1 to drop $gone" lab__map_lacks sanvol1 "$gone"
lab_event dm "map sanvol1 paths now: $(lab_map_paths sanvol1)"
sleep 3

lab_step "daemon restarted during IO: map adopted, not reloaded"
before=$(dmsetup table sanvol1)
lab_mpathd_stop
[ -b /dev/mapper/sanvol1 ] || lab_fail "stopping the daemon took the map down"
sleep 2
lab_mpathd_start
grep 'ready maps=' "$LAB_OUT/mpathd.log" | tail -1 | grep -q 'created=0 reloaded=0 errors=0' \
	|| lab_fail "restart changed the map: $(grep 'ready maps=' "$LAB_OUT/mpathd.log" | tail -1)"
[ "$(dmsetup table sanvol1)" = "$before" ] || lab_fail "table changed across the restart"
sleep 3
lab_io_stop
lab_io_check errors=0 mismatches=0 min_ops=100

lab_step "reconfigure to failover, verified IO again"
lab_mpathd_config 'find_multipaths = "strict"
[overrides]
path_grouping_policy = "failover"
no_path_retry = "queue"'
lab_mpathd reconfigure
groups=$(lab_map_groups sanvol1)
[ "$groups" = 2 ] || lab_fail "failover over 2 paths should have 2 groups: $(dmsetup table sanvol1)"
lab_io_start /dev/mapper/sanvol1
sleep 6
lab_io_stop
lab_io_check errors=0 mismatches=0 min_ops=50
lab_mpathd show topology
lab_mpathd_stop
lab_done
