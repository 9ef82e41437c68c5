# lab: a LUN-wide error is not a path failure: the target's backend fails every IO for 5 s on both paths; mpathd fails no path, the errors reach the application as the kernel decides, IO resumes after
# lab-timeout: 420
LAB_LUN_BACKEND=dm
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"

lab_setup
lab_step "multibus map made by mpathd, probes on both paths"
lab_mpathd_config 'find_multipaths = "strict"
[overrides]
path_grouping_policy = "multibus"
no_path_retry = "fail"'
lab_mpathd_start
LAB_MAP=sanvol1
lab_wait_map_paths sanvol1 2 10
lab_dm_watch_start
lab_mpathd_wait_probes

lab_step "the LUN fails every IO for 5 s, on every path"
lab_io_start
sleep 3
mark=$(wc -l <"$LAB_OUT/mpathd.log")
lab_lun_error
sleep 5
lab_lun_ok
sleep 5
lab_io_stop
# What the application saw is the kernel's business; the data must still verify.
lab_io_check min_errors=0 mismatches=0 resumed=1
python3 -c '
import json; r = json.load(open("/tmp/labio.json"))
print("application: ops=%d io_errors=%d mismatches=%d" % (r["ops"], r["io_errors"]["count"], r["mismatches"]["count"]))'

lab_step "check: mpathd failed no path and counted the errors as the LUN's"
tail -n +"$mark" "$LAB_OUT/mpathd.log" >/tmp/after.log
if grep -E "fail_path: .*-> failed \((path_error|generic_error|stall|tcp_|checker_)" /tmp/after.log; then
	lab_fail "mpathd failed a path for a LUN-wide error"
fi
grep -E "probe event.*Error" /tmp/after.log | head -3
lab_event info "kernel decisions: $(grep -c 'failed by the kernel' /tmp/after.log) path(s) failed by dm itself; probe error events: $(grep -c 'probe event.*Error' /tmp/after.log)"
# Both paths usable again after the fault (the kernel may have failed them; mpathd
# reinstates after clean checks).
lab_wait 30 "path 1 active" lab__dm_is 1 A
lab_wait 30 "path 2 active" lab__dm_is 2 A
lab_io_start
sleep 4
lab_io_stop
lab_io_check errors=0 mismatches=0
lab_mpathd_stop
lab_done
