# lab: mpathd keeps verified IO going: multibus map, a third portal added during IO, a path logged out during IO, the daemon restarted during IO (map adopted, no reload), failover after reconfigure, and a new alias renames the map during IO
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

lab_step "a new alias in the config renames the map during IO: no reload, no IO error"
lab_io_start /dev/mapper/sanvol1
sleep 3
before=$(dmsetup table sanvol1)
mark=$(lab_log_lines)
sed -i 's/^alias = "sanvol1"/alias = "data01"/' "$LAB_MPATHD_CONF"
lab_mpathd reconfigure
lab_wait 10 "the map renamed" dmsetup info data01
lab_wait 10 "/dev/mapper/data01" test -b /dev/mapper/data01
dmsetup info sanvol1 >/dev/null 2>&1 && lab_fail "sanvol1 is still there after the rename"
[ "$(dmsetup table data01)" = "$before" ] || lab_fail "the rename changed the table: $(dmsetup table data01)"
tail -n +"$mark" "$LAB_OUT/mpathd.log" | grep -q "reloaded map" && lab_fail "the rename reloaded the map"
lab_event dm "map renamed sanvol1 -> data01"
sleep 3
lab_io_stop
lab_io_check errors=0 mismatches=0 min_ops=50
lab_mpathd show maps | grep -q '^data01 ' || lab_fail "show maps does not show data01: $(lab_mpathd show maps)"
lab_mpathd_stop
lab_done
