# lab: path checkers (tur, directio) on real iSCSI disks: both paths up; portal 1's link down -> path 1 timeout then down while path 2 stays up; link up -> up again; ALUA standby/unavailable -> tur ghost, transitioning -> pending
# lab-timeout: 300
# SCSI exists only in the guest, so the tur checker is tried here. The checker_loop test
# binary's ignored test lab_checker_watch checks both paths with both checkers every
# 0.5 s (timeout 2 s) and logs each answer; this script injects the fault and reads the log.
. "$LAB_LIB"
: "${DM_KERNEL_TEST:?DM_KERNEL_TEST is set by the harness (cargo xtask lab run)}"
: "${MPATHD_ROOT:?MPATHD_ROOT is set by the harness (cargo xtask lab run)}"

# The harness builds only the dm_kernel test binary; checker_loop's is built by `cargo
# test` (which `cargo xtask test` runs first) into the same directory. Take the newest,
# and refuse one older than the sources it tests.
lab_step "find the checker_loop test binary"
CHECKER_TEST=
for f in $(ls -t "$(dirname "$DM_KERNEL_TEST")"/checker_loop-* 2>/dev/null); do
	[ -x "$f" ] && [ "${f%.d}" = "$f" ] && { CHECKER_TEST=$f; break; }
done
BUILD_HINT="run \`cargo test -p multipath-daemon --test checker_loop --no-run\` on the host first"
[ -n "$CHECKER_TEST" ] || lab_fail "no checker_loop test binary next to $DM_KERNEL_TEST: $BUILD_HINT"
newer=$(find "$MPATHD_ROOT/multipath-daemon/src" "$MPATHD_ROOT/multipath-daemon/tests/checker_loop.rs" \
	"$MPATHD_ROOT/multipath-daemon/tests/support" -name '*.rs' -newer "$CHECKER_TEST" | head -1)
[ -z "$newer" ] || lab_fail "$CHECKER_TEST is older than $newer: $BUILD_HINT"
lab_event info "checker test binary: $CHECKER_TEST"

lab_setup

CK_LOG=$LAB_OUT/checks.tsv
CK_STOP=/tmp/checker-watch.stop
CK_PID=
: >"$CK_LOG"
rm -f "$CK_STOP"

# ck_since EPOCH PATH KIND OUTCOME...: the first check of path PATH by KIND answered at or
# after EPOCH with one of the outcomes; prints "epoch outcome took_ms why", fails if none.
ck_since() {
	local t=$1 node=/dev/${LAB_DEV[$2]} kind=$3
	shift 3
	awk -F'\t' -v t="$t" -v n="$node" -v k="$kind" -v want=" $* " \
		'$1 >= t && $2 == n && $3 == k && index(want, " " $4 " ") { print $1, $4, $5, $6; found = 1; exit }
		 END { exit !found }' "$CK_LOG"
}

# ck_only FROM TO PATH OUTCOME: every check of PATH (any checker) answered between the
# epochs FROM and TO had this outcome, and there was at least one; otherwise prints the
# first that did not.
ck_only() {
	awk -F'\t' -v t="$1" -v u="$2" -v n="/dev/${LAB_DEV[$3]}" -v o="$4" \
		'$1 >= t && $1 <= u && $2 == n { seen++; if ($4 != o) { print; bad = 1; exit } }
		 END { exit bad || !seen }' "$CK_LOG"
}

ck_stop() {
	[ -n "$CK_PID" ] || return 0
	touch "$CK_STOP"
	wait "$CK_PID"
	local rc=$?
	CK_PID=
	cat "$LAB_OUT/checker-watch.out"
	[ $rc -eq 0 ] || lab_fail "lab_checker_watch exited with $rc: $(grep -m1 -A1 'panicked at' "$LAB_OUT/checker-watch.out" | tail -1)"
	# Every change of a path's outcome, per checker, on the timeline.
	awk -F'\t' '{ key = $2 " " $3; if (prev[key] != $4) { printf "%s\t%s %s: %s%s (%.1f ms)%s\n", $1, $3, $2, prev[key] ? prev[key] " -> " : "", $4, $5, ($6 != "-" ? ": " $6 : ""); prev[key] = $4 } }' "$CK_LOG" |
		while IFS=$'\t' read -r at msg; do lab_event_at "$at" checker "$msg"; done
	lab_event info "checks per path, checker and outcome: $(awk -F'\t' '{ c[$2 " " $3 " " $4]++ } END { for (k in c) printf "%s=%d; ", k, c[k] }' "$CK_LOG")"
}

lab_step "both paths up with tur and directio"
CHECKER_WATCH_DEVS="/dev/${LAB_DEV[1]} /dev/${LAB_DEV[2]}" CHECKER_WATCH_KINDS="tur directio" \
	CHECKER_WATCH_INTERVAL_MS=500 CHECKER_WATCH_TIMEOUT_MS=2000 \
	CHECKER_WATCH_STOP=$CK_STOP CHECKER_WATCH_LOG=$CK_LOG \
	"$CHECKER_TEST" --ignored --exact lab_checker_watch --nocapture >"$LAB_OUT/checker-watch.out" 2>&1 &
CK_PID=$!
t_start=$EPOCHREALTIME
for i in 1 2; do
	for k in tur directio; do
		lab_wait 60 "$k on path $i to answer" ck_since "$t_start" "$i" "$k" up down timeout pending unsupported
		r=$(ck_since "$t_start" "$i" "$k" up down timeout pending unsupported)
		[ "$(cut -d' ' -f2 <<<"$r")" = up ] || lab_fail "first $k check of path $i (${LAB_DEV[i]}): $r"
	done
done
sleep 2
for i in 1 2; do
	bad=$(ck_only "$t_start" "$EPOCHREALTIME" "$i" up) || lab_fail "path $i (${LAB_DEV[i]}) not up before any fault: $bad"
done
lab_event info "tur and directio: both paths up"

lab_step "portal 1's link down: path 1 times out, then is down; path 2 stays up"
t_fault=$EPOCHREALTIME
lab_link_down 1
# The session is blocked until the NOP-out times out and recovery_tmo (5 s) expires; a
# check meanwhile sits in the kernel (Timeout, then Pending). After that the kernel fails
# the path's commands at once, and the check says so.
lab_wait 60 "tur on path 1 to time out or fail" ck_since "$t_fault" 1 tur timeout down
first=$(ck_since "$t_fault" 1 tur timeout down)
lab_event info "tur on path 1 after the fault: $first"
lab_wait 90 "tur on path 1 to be down" ck_since "$t_fault" 1 tur down
down=$(ck_since "$t_fault" 1 tur down)
lab_event info "tur on path 1 down $(awk -v a="${down%% *}" -v b="$t_fault" 'BEGIN{printf "%.1f", a-b}') s after the fault: $down"
lab_wait 60 "directio on path 1 to be down" ck_since "$t_fault" 1 directio down
lab_event info "directio on path 1: $(ck_since "$t_fault" 1 directio down)"
bad=$(ck_only "$t_fault" "$EPOCHREALTIME" 2 up) || lab_fail "path 2 (${LAB_DEV[2]}) not up while portal 1 was down: $bad"

lab_step "portal 1's link up: path 1 up again"
lab_link_up 1
lab_wait_session 1 90
t_up=$EPOCHREALTIME
lab_wait 30 "tur on path 1 to be up" ck_since "$t_up" 1 tur up
lab_wait 30 "directio on path 1 to be up" ck_since "$t_up" 1 directio up
bad=$(ck_only "$t_fault" "$EPOCHREALTIME" 2 up) || lab_fail "path 2 (${LAB_DEV[2]}) not up during the link test: $bad"

# ALUA on the target's one port group (both portals): what tur makes of each state, from
# LIO's real sense data. sg_turs records the bytes for the unit tests' patterns.
ALUA=$LAB_CFG/core/fileio_0/lun0/alua/default_tg_pt_gp
lab_event info "LIO ALUA group: access type $(cat "$ALUA/alua_access_type"), state $(cat "$ALUA/alua_access_state")"
# alua_state STATE NAME TUR_OUTCOME DIRECTIO_OUTCOME: DIRECTIO_OUTCOME - is only logged.
alua_state() {
	lab_step "ALUA $2 on the target: tur $3, directio $4 on both paths"
	local t=$EPOCHREALTIME i
	echo "$1" >"$ALUA/alua_access_state" || lab_fail "LIO refused ALUA state $1 ($2)"
	lab_event fault "ALUA state $2 ($1) on the target"
	for i in 1 2; do
		lab_wait 30 "tur on path $i to be $3" ck_since "$t" "$i" tur "$3"
		if [ "$4" = - ]; then
			lab_wait 30 "directio on path $i to answer" ck_since "$t" "$i" directio up down timeout pending
		else
			lab_wait 30 "directio on path $i to be $4" ck_since "$t" "$i" directio "$4"
		fi
	done
	lab_event info "tur: $(ck_since "$t" 1 tur "$3"); directio: $(ck_since "$t" 1 directio "${4/#-/up down timeout pending}")"
	sg_turs -vvv "/dev/${LAB_DEV[1]}" >"$LAB_OUT/sg_turs-$2.txt" 2>&1
	lab_event info "sg_turs in ALUA $2: $(tr '\n' ' ' <"$LAB_OUT/sg_turs-$2.txt")"
}
alua_state 2 standby ghost down
alua_state 3 unavailable ghost down
# In transition tur has no verdict (pending, as multipath-tools); a read may be retried
# by the kernel, so directio's answer is only logged.
alua_state 15 transitioning pending -
alua_state 0 active-optimized up up
ck_stop
lab_done
