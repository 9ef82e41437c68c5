# lab: ALUA: LIO with one target port group per portal (optimized, non-optimized); mpathd groups by the kernel's access states from the built-in LIO-ORG entry and IO goes to the optimized path only; the states swapped in configfs move IO within the checker interval with no app error, and back
# lab-timeout: 420
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"
LAB_MAP=sanvol1
# The checker's interval (mpathd --check-secs): the map must be regrouped within it after
# the target's move, plus LAB_ALUA_SLACK for the kernel to learn the new states (a unit
# attention, then REPORT TARGET PORT GROUPS) and the reload (suspend, resume) under
# emulation. Measured from the target's last configfs write to mpathd's reload line.
: "${LAB_CHECK_SECS:=2}"
: "${LAB_ALUA_SLACK:=2}"
# Seconds of IO counted per path to tell where IO goes.
: "${LAB_ALUA_WINDOW:=3}"
# Without the eBPF probes: under emulation on a busy host, the load moving at once onto a
# path that was idle makes slow completions (its latency limit was learned idle) and a
# burst of retransmissions on the old one, and the health engine demotes one of them
# right after the move, which sends I/O back to the other group for its quiet time. This
# scenario proves the ALUA regrouping; LAB_MPATHD_ARGS= runs it with the probes.
: "${LAB_MPATHD_ARGS=--no-probes}"

lab_udev_start
lab_setup_alua active/optimized active/non-optimized

lab_step "mpathd makes the map from the built-in LIO-ORG entry"
lab_mpathd_config 'find_multipaths = "strict"'
lab_mpathd_start
lab_wait_map_paths sanvol1 2 20
lab_dm_watch_start
table=$(dmsetup table sanvol1)
lab_event info "table: $table"
grep -q ' 1 alua ' <<<"$table" || lab_fail "no ALUA hardware handler in the table: $table"
[ "$(lab_map_groups sanvol1)" = 2 ] || lab_fail "expected 2 path groups (one per port group): $table"
lab_mpathd show config | tee "$LAB_OUT/config.txt"
for want in '^ +path_grouping_policy +group_by_prio +built-in: Linux-IO' '^ +prio +alua +built-in: Linux-IO' \
	'^ +failback +immediate +built-in: Linux-IO' '^ +hardware_handler +1 alua +built-in'; do
	grep -Eq "$want" "$LAB_OUT/config.txt" || lab_fail "show config has no line matching /$want/"
done

# alua_prios P1 P2: show paths --json gives path 1 priority P1 and path 2 P2.
alua_prios() {
	lab_mpathd show paths --json | python3 -c '
import json, sys
want = {sys.argv[1]: int(sys.argv[3]), sys.argv[2]: int(sys.argv[4])}
got = {p["name"]: p["prio"] for p in json.load(sys.stdin) if p["name"] in want}
sys.exit(0 if got == want else 1)' "${LAB_DEV[1]}" "${LAB_DEV[2]}" "$1" "$2"
}

# alua_first_is I: path I's group is the table's first (the one I/O goes to).
alua_first_is() { [ "$(lab_map_paths sanvol1 | cut -d' ' -f1)" = "${LAB_DEVT[$1]}" ]; }

# alua_io_only I: over LAB_ALUA_WINDOW seconds of IO, path I completes writes and the
# other path none; its reads are the path checker's (directio, one per interval) only.
alua_io_only() {
	local on=$1 off=$((3 - $1)) a0 b0 a1 b1 max_reads
	read -r -a a0 <<<"$(lab_path_io "$on")"
	read -r -a b0 <<<"$(lab_path_io "$off")"
	sleep "$LAB_ALUA_WINDOW"
	read -r -a a1 <<<"$(lab_path_io "$on")"
	read -r -a b1 <<<"$(lab_path_io "$off")"
	local ar=$((a1[0] - a0[0])) aw=$((a1[1] - a0[1])) br=$((b1[0] - b0[0])) bw=$((b1[1] - b0[1]))
	lab_event io "over ${LAB_ALUA_WINDOW} s: path $on (${LAB_DEV[on]}) reads $ar writes $aw; path $off (${LAB_DEV[off]}) reads $br writes $bw"
	max_reads=$((LAB_ALUA_WINDOW / LAB_CHECK_SECS + 2))
	[ "$aw" -ge 10 ] || lab_fail "path $on (${LAB_DEV[on]}) completed only $aw writes in ${LAB_ALUA_WINDOW} s: IO is not on the optimized path"
	[ "$bw" -eq 0 ] || lab_fail "path $off (${LAB_DEV[off]}) completed $bw writes: IO goes to the non-optimized path too"
	[ "$br" -le "$max_reads" ] || lab_fail "path $off (${LAB_DEV[off]}) completed $br reads, more than the checker's $max_reads"
}

lab_step "IO on the optimized path 1 only"
alua_first_is 1 || lab_fail "path 1 (optimized) is not in the first group: $(dmsetup table sanvol1)"
alua_prios 50 10 || lab_fail "prios are not 50 (optimized) and 10 (non-optimized): $(lab_mpathd show paths)"
lab_io_start
sleep 2
alua_io_only 1

# alua_regrouped_at LINE I: epoch of mpathd's first reload, from log line LINE on, that
# put path I's group first because the priorities changed.
alua_regrouped_at() {
	local ts
	ts=$(tail -n +"$1" "$LAB_OUT/mpathd.log" |
		grep -m1 -E "reloaded map: .*path priorities changed.* paths=\[\"${LAB_DEV[$2]}\"" | cut -d' ' -f1) || return 1
	[ -n "$ts" ] && date -u -d "$ts" +%s.%N
}

# alua_move TO FROM: the target makes portal TO's port group optimized and FROM's
# non-optimized; mpathd must regroup within the checker interval (+ slack), and IO follow.
alua_move() {
	local to=$1 from=$2 t0 t lines at took
	lab_step "the target moves its optimized port to portal $to"
	lines=$(lab_log_lines)
	lab_alua_set "$to" active/optimized
	t0=$LAB_ALUA_AT
	lab_alua_set "$from" active/non-optimized
	t=$LAB_ALUA_AT
	# A generous bound for the wait; the check is on mpathd's own timestamps below
	# (each poll here forks dmsetup and python, a second or so under emulation).
	lab_wait 20 "path $to's group first in sanvol1's table" alua_first_is "$to"
	at=$(alua_regrouped_at "$lines" "$to") || lab_fail "mpathd.log has no reload putting path $to first because priorities changed"
	lab_event_at "$at" mpathd "sanvol1 regrouped, path $to (${LAB_DEV[to]}) first"
	took=$(awk -v a="$t" -v b="$at" 'BEGIN{printf "%.2f", b-a}')
	lab_event info "regrouped $took s after the target's last write ($(awk -v a="$t0" -v b="$at" 'BEGIN{printf "%.2f", b-a}') s after its first), checker interval ${LAB_CHECK_SECS} s"
	awk -v d="$took" -v m="$((LAB_CHECK_SECS + LAB_ALUA_SLACK))" 'BEGIN{exit !(d <= m)}' ||
		lab_fail "regrouped $took s after the move, more than the checker interval ${LAB_CHECK_SECS} s + ${LAB_ALUA_SLACK} s"
	lab_event info "kernel: path $to $(cat "/sys/block/${LAB_DEV[to]}/device/access_state"), path $from $(cat "/sys/block/${LAB_DEV[from]}/device/access_state")"
	# How mpathd learned it: a udev unit attention, or the checker interval's reread.
	tail -n +"$lines" "$LAB_OUT/mpathd.log" | grep -E 'ASYMMETRIC_ACCESS_STATE_CHANGED|ALUA state|path priorities changed|demote|restore' | head -10
	if [ "$to" = 1 ]; then
		lab_wait 5 "prios 50/10 in show paths" alua_prios 50 10
	else
		lab_wait 5 "prios 10/50 in show paths" alua_prios 10 50
	fi
	# Writes already queued on the old path finish before the reload's suspend ends.
	sleep 1
	alua_io_only "$to"
}

alua_move 2 1
alua_move 1 2

lab_step "no app IO error through both moves"
lab_io_stop
lab_io_check errors=0 mismatches=0
lab_expect_dm 1 A
lab_expect_dm 2 A
lab_mpathd show topology
lab_mpathd_stop
lab_done
