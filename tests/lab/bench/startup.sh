# lab: start-up with many paths: 128 LUNs x 2 portals, `multipath -r` vs `mpathd daemon`, time to all maps (cargo xtask bench startup)
# lab-timeout: 2100
# A benchmark, not a test: it lives outside tests/lab/scenarios/ so `cargo xtask test` does
# not run it. `cargo xtask bench startup` runs it with a release mpathd (BENCH_MPATHD) and
# turns $LAB_OUT/startup-raw.jsonl into target/bench/startup.json (docs/bench.md).
#
# Both tools start from the same state in the same VM: all 256 path devices present and
# settled in udev (systemd-udevd runs, as on a host), no multipath map. A round times one
# tool from its start until the kernel has all maps live (a dm device whose table is loaded
# and resumed, i.e. its size is non-zero); `multipath -r` also until it exits, mpathd also
# until it logs `ready maps=N`. Between rounds every map is flushed and udev settled.
# Rounds alternate between the tools, so drift in the VM's speed hits both alike. One round
# of each always runs; another only while the projected end stays within BENCH_BUDGET_S of
# the scenario's start (under TCG a round of 128 maps with udev takes minutes).
: "${BENCH_LUNS:=128}"
: "${BENCH_LUN_MB:=1}"
: "${BENCH_ROUNDS:=3}"         # at most
: "${BENCH_BUDGET_S:=540}"
: "${BENCH_ROUND_TIMEOUT:=240}" # seconds a round may take before it is recorded as failed
: "${BENCH_MPATHD:=}"           # the mpathd to time; default: the harness's $MPATHD (debug)
: "${BENCH_MP_UDEV_SYNC:=1}"     # 0: multipath -r with DM_DISABLE_UDEV=1 (no wait on udev's rules)
. "$LAB_LIB"
# lib.sh sets SYSTEMD_IGNORE_CHROOT=1. Without it udevadm took the guest for a chroot and
# settle returned in 0.3 s with 256 disks' events still queued: multipath -r, which only
# sees disks udev has initialized, made 57-73 maps, some single-path. With it, settle took
# 80.5 s there and multipath -r made all 128 maps with 256 paths.

RAW=$LAB_OUT/startup-raw.jsonl # one JSON object per line; the host summarizes
: >"$RAW"
MPATHD_BIN=${BENCH_MPATHD:-$MPATHD}
B=/tmp/bench
mkdir -p "$B" /etc/multipath
# read -t on a pipe nobody writes: a sleep without a fork, for the watchers' polls.
exec {BENCH_SLEEP_FD}<> <(:)

rec() { printf '%s\n' "$1" >>"$RAW"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
# jsecs T0 T: seconds from T0 to T as JSON, null when T is not a time ("timeout", "").
jsecs() { case $2 in [0-9]*) secs "$1" "$2" ;; *) echo null ;; esac; }
jstr() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

# Maps live: dm devices with a loaded, resumed table (non-zero size). Only the tool under
# test makes dm devices in this VM. Builtins only: the poll must not steal the CPU it times.
bench__live_at_least() {
	local n=$1 d s c=0 all=(/sys/block/dm-*)
	[ -e "${all[0]}" ] && [ "${#all[@]}" -ge "$n" ] || return 1
	for d in "${all[@]}"; do
		read -r s <"$d/size" 2>/dev/null || continue
		[ "$s" != 0 ] && c=$((c + 1))
	done
	[ "$c" -ge "$n" ]
}
# bench__watch_maps N DEADLINE OUT: writes to OUT the epoch at which N maps were live
# (taken after the check that saw them: an upper bound, 50 ms resolution), or "timeout".
bench__watch_maps() {
	local n=$1 end=$2 out=$3
	while :; do
		if bench__live_at_least "$n"; then
			echo "$EPOCHREALTIME" >"$out"
			return
		fi
		[ "${EPOCHREALTIME%.*}" -ge "$end" ] && { echo timeout >"$out"; return; }
		read -r -t 0.05 -u "$BENCH_SLEEP_FD" _
	done
}
bench_mp_maps() { dmsetup ls --target multipath 2>/dev/null | grep -vc '^No devices found'; }
# bench_dm_paths: how many paths the multipath maps hold in all (single-path maps show here).
bench_dm_paths() {
	dmsetup status --target multipath 2>/dev/null | awk '
		{ for (i = 1; i < NF; i++) if ($i ~ /^[0-9]+:[0-9]+$/ && ($(i + 1) == "A" || $(i + 1) == "F")) n++ }
		END { print n + 0 }'
}
bench_dm_count() { local a=(/sys/block/dm-*); [ -e "${a[0]}" ] && echo "${#a[@]}" || echo 0; }

# Every map gone and udev quiet, so the next round starts from the same state.
bench_flush() {
	local m
	env -u DM_DISABLE_UDEV multipath -F >/dev/null 2>&1
	for m in $(dmsetup ls --target multipath 2>/dev/null | awk '$1 != "No" {print $1}'); do
		env -u DM_DISABLE_UDEV dmsetup remove "$m" >/dev/null 2>&1
	done
	lab_do udevadm settle --timeout=300
	[ "$(bench_dm_count)" = 0 ] || lab_fail "$(bench_dm_count) dm devices left after the flush: $(dmsetup ls)"
}

# --- the two configurations ------------------------------------------------------------------
# multipath-tools: the settings mpathd uses. Debian's built-in hardware table has an
# LIO-ORG entry (group_by_prio, prio alua, no_path_retry 12) that beats [defaults], so the
# shared policy goes in `overrides`, which beats the hardware table.
cat >/etc/multipath.conf <<'EOF'
defaults {
	user_friendly_names yes
	find_multipaths greedy
}
overrides {
	path_grouping_policy multibus
	path_selector "service-time 0"
	detect_prio no
	prio const
	no_path_retry fail
}
blacklist {
}
EOF
rm -f /etc/multipath/bindings /etc/multipath/wwids

# mpathd has the same built-in LIO-ORG entry above [defaults]: the same overrides.
cat >"$B/mpathd.toml" <<EOF
[defaults]
user_friendly_names = true
find_multipaths = "greedy"
bindings_file = "$B/bindings"
wwids_file = "$B/wwids"

[overrides]
path_grouping_policy = "multibus"
path_selector = "service-time"
prio = "const"
no_path_retry = "fail"
EOF
cp /etc/multipath.conf "$LAB_OUT/multipath.conf"
cp "$B/mpathd.toml" "$LAB_OUT/mpathd.toml"

# --- the paths ---------------------------------------------------------------------------------
lab_step "setup: udevd, $BENCH_LUNS LUNs x $LAB_PORTALS portals"
t_a=$EPOCHREALTIME
# udevd's own log, for why a `multipath -r` round waits on a udev cookie that never
# completes: at info level it names workers that failed or timed out. With
# BENCH_UDEV_DEBUG=1 it logs every event of the multipath rounds (slower: not for timing).
LAB_UDEV_LOG=$LAB_OUT/udevd.log lab_udev_start
t_b=$EPOCHREALTIME
lab_modules
lab_target_start_luns "$BENCH_LUNS" "$BENCH_LUN_MB"
t_c=$EPOCHREALTIME
lab_login_all
t_d=$EPOCHREALTIME
lab_wait_disks $((BENCH_LUNS * LAB_PORTALS)) 900
t_e=$EPOCHREALTIME
lab_do udevadm settle --timeout=900
t_f=$EPOCHREALTIME
npaths=$(lab_sd_count)
nwwids=$(cat /sys/block/sd*/device/wwid | sort -u | wc -l)
[ "$npaths" = $((BENCH_LUNS * LAB_PORTALS)) ] || lab_fail "$npaths SCSI disks, expected $((BENCH_LUNS * LAB_PORTALS))"
[ "$nwwids" = "$BENCH_LUNS" ] || lab_fail "$nwwids WWIDs among the disks, expected $BENCH_LUNS"
lab_event iscsi "$npaths paths, $nwwids WWIDs, settled in udev"
rec "$(printf '{"kind":"setup","luns":%d,"portals":%d,"paths":%d,"wwids":%d,"lun_mb":%d,"kernel":%s,"udevd_s":%s,"target_s":%s,"login_s":%s,"scan_s":%s,"udev_settle_s":%s,"total_s":%s}' \
	"$BENCH_LUNS" "$LAB_PORTALS" "$npaths" "$nwwids" "$BENCH_LUN_MB" "$(jstr "$(uname -r)")" \
	"$(secs "$t_a" "$t_b")" "$(secs "$t_b" "$t_c")" "$(secs "$t_c" "$t_d")" "$(secs "$t_d" "$t_e")" \
	"$(secs "$t_e" "$t_f")" "$(secs "$t_a" "$t_f")")"
[ "$(bench_dm_count)" = 0 ] || lab_fail "dm devices exist before the first round: $(dmsetup ls)"

# Warm the page cache with both binaries (they come over 9p): a round times the tool, not
# the first read of its executable.
multipath -h >/dev/null 2>&1
mpathd_available=1
mpathd_why=
if ! out=$("$MPATHD_BIN" daemon --help 2>&1); then
	mpathd_available=0
	mpathd_why="mpathd daemon not available: \`$MPATHD_BIN daemon --help\` failed: $(head -c 300 <<<"$out")"
	lab_event info "$mpathd_why"
fi
rec "$(printf '{"kind":"tools","max_rounds":%d,"budget_s":%d,"multipath_version":%s,"mpathd":%s,"mpathd_available":%s,"mpathd_unavailable_reason":%s}' \
	"$BENCH_ROUNDS" "$BENCH_BUDGET_S" "$(jstr "$(dpkg-query -W -f='${Version}' multipath-tools 2>/dev/null)")" "$(jstr "$MPATHD_BIN")" \
	"$([ $mpathd_available = 1 ] && echo true || echo false)" "$(jstr "$mpathd_why")")"

# --- one round of each ---------------------------------------------------------------------------
# bench_stuck PID: the state of a stuck tool and of udev, for the lab dir.
bench_stuck() {
	local p
	echo "pid $1: $(sed -n 's/^State:\t//p' "/proc/$1/status"), wchan $(cat "/proc/$1/wchan")"
	echo "--- its kernel stack"
	cat "/proc/$1/stack"
	echo "--- its threads"
	for p in /proc/"$1"/task/*; do echo "${p##*/} $(cat "$p/wchan") $(sed -n 's/^State:\t//p' "$p/status")"; done
	echo "--- dmsetup udevcookies"
	dmsetup udevcookies
	echo "--- udev's queue: $(udevadm settle --timeout=0 2>&1 && echo empty || echo busy)"
	echo "--- processes of udev, multipath and device-mapper"
	ps -eo pid,ppid,stat,wchan:32,etimes,args | grep -E 'udev|multipath|kpartx|dmsetup|blkid|scsi_id' | grep -v grep
	echo "--- dm devices"
	dmsetup info -c -o name,major,minor,attr,open,segments,events,uuid
	for p in $(pgrep -f 'systemd-udevd|multipath -[uU]|kpartx|dmsetup'); do
		echo "--- stack of $p: $(tr '\0' ' ' <"/proc/$p/cmdline")"
		cat "/proc/$p/stack"
	done
}

# multipath -r: reloads every map, creating those missing (plain `multipath` does the same
# from nothing). No multipathd runs; udev sync is on (DM_DISABLE_UDEV unset), as on a host,
# unless BENCH_MP_UDEV_SYNC=0: then libdevmapper makes the nodes and waits for no udev
# rule, as mpathd does not wait for them either.
round_multipath() {
	local r=$1 t0 t1 tm rc maps end
	end=$((${EPOCHREALTIME%.*} + BENCH_ROUND_TIMEOUT))
	rm -f "$B/maps.$r"
	bench__watch_maps "$BENCH_LUNS" "$end" "$B/maps.$r" &
	local w=$!
	[ "${BENCH_UDEV_DEBUG:-0}" = 1 ] && udevadm control --log-level=debug
	echo "=== multipath -r round $r starts" >>"$LAB_OUT/udevd.log"
	t0=$EPOCHREALTIME
	if [ "$BENCH_MP_UDEV_SYNC" = 1 ]; then
		env -u DM_DISABLE_UDEV multipath -r >"$LAB_OUT/multipath-r$r.log" 2>&1 &
	else
		DM_DISABLE_UDEV=1 multipath -r >"$LAB_OUT/multipath-r$r.log" 2>&1 &
	fi
	local mp=$!
	while kill -0 "$mp" 2>/dev/null && [ "${EPOCHREALTIME%.*}" -lt "$end" ]; do
		read -r -t 0.1 -u "$BENCH_SLEEP_FD" _
	done
	[ "${BENCH_UDEV_DEBUG:-0}" = 1 ] && udevadm control --log-level=info
	if kill -0 "$mp" 2>/dev/null; then
		# Still running at the deadline: where it waits, and what udev is doing then.
		bench_stuck "$mp" >"$LAB_OUT/multipath-r$r.stuck" 2>&1
		lab_event info "multipath -r round $r stuck: $(head -1 "$LAB_OUT/multipath-r$r.stuck")"
		kill -KILL "$mp"
	fi
	wait "$mp"
	rc=$?
	t1=$EPOCHREALTIME
	wait "$w"
	tm=$(cat "$B/maps.$r")
	maps=$(bench_mp_maps)
	local paths
	paths=$(bench_dm_paths)
	lab_event info "multipath -r round $r: exit $rc after $(secs "$t0" "$t1") s, $BENCH_LUNS maps live after $(jsecs "$t0" "$tm") s, $maps maps with $paths paths"
	rec "$(printf '{"kind":"round","tool":"multipath","round":%d,"exit_code":%d,"exit_s":%s,"maps_s":%s,"maps":%d,"paths":%d,"udev_sync":%s}' \
		"$r" "$rc" "$(secs "$t0" "$t1")" "$(jsecs "$t0" "$tm")" "$maps" "$paths" "$([ "$BENCH_MP_UDEV_SYNC" = 1 ] && echo true || echo false)")"
}

bench_stop() { # bench_stop PID OUT [NAME]: SIGTERM, then SIGKILL after 30 s; OUT: its threads then
	local i t
	kill -TERM "$1" 2>/dev/null || return 0
	for i in $(seq 300); do
		kill -0 "$1" 2>/dev/null || break
		# Still there after 5 s: what each thread waits in, for the lab dir.
		[ "$i" = 50 ] && for t in /proc/"$1"/task/*; do
			echo "--- thread ${t##*/} $(cat "$t/comm"): $(sed -n 's/^State:\t//p' "$t/status"), wchan $(cat "$t/wchan")"
			cat "$t/stack"
		done >"$2" 2>&1
		read -r -t 0.1 -u "$BENCH_SLEEP_FD" _
	done
	kill -0 "$1" 2>/dev/null && { lab_event info "${3:-mpathd} ignored SIGTERM for 30 s: SIGKILL (its threads at 5 s: ${2##*/})"; kill -KILL "$1"; }
	wait "$1" 2>/dev/null
}

# mpathd daemon: from the fork until it logs `ready maps=N` and until the maps are live.
round_mpathd() {
	local r=$1 t0 tr tm maps end pid log=$LAB_OUT/mpathd-r$r.log ready=$B/ready.$r why=null
	end=$((${EPOCHREALTIME%.*} + BENCH_ROUND_TIMEOUT))
	rm -f "$B/maps.$r" "$ready" "$B/mpathd.sock"
	: >"$log"
	bench__watch_maps "$BENCH_LUNS" "$end" "$B/maps.$r" &
	local w=$!
	t0=$EPOCHREALTIME
	env -u DM_DISABLE_UDEV "$MPATHD_BIN" daemon --config "$B/mpathd.toml" --socket "$B/mpathd.sock" \
		2> >(while IFS= read -r line; do
			[ -e "$ready" ] || case $line in *"ready maps="*) printf '%s %s\n' "$EPOCHREALTIME" "$line" >"$ready" ;; esac
			printf '%s\n' "$line" >>"$log"
		done) >/dev/null &
	pid=$!
	until [ -e "$ready" ] || ! kill -0 "$pid" 2>/dev/null || [ "${EPOCHREALTIME%.*}" -ge "$end" ]; do
		read -r -t 0.05 -u "$BENCH_SLEEP_FD" _
	done
	if ! kill -0 "$pid" 2>/dev/null; then
		wait "$pid"
		why=$(jstr "mpathd daemon exited with $? before it was ready: $(tail -3 "$log")")
		kill "$w" 2>/dev/null
		echo exited >"$B/maps.$r"
	fi
	wait "$w"
	tm=$(cat "$B/maps.$r")
	tr=
	# When the daemon wrote the line (its own timestamp), not when this script's reader
	# got to it: under TCG the reader falls seconds behind 400 log lines.
	local stamp
	[ -e "$ready" ] && read -r tr stamp _ <"$ready" && stamp=$(date -d "$stamp" +%s.%N 2>/dev/null) && tr=$stamp
	[ -z "$tr" ] && [ "$why" = null ] && why=$(jstr "no ready line within ${BENCH_ROUND_TIMEOUT} s")
	maps=$(bench_mp_maps)
	local rline=""
	[ -e "$ready" ] && rline=$(cut -d' ' -f2- "$ready")
	bench_stop "$pid" "$LAB_OUT/mpathd-r$r.sigterm"
	lab_event info "mpathd round $r: ready after $(jsecs "$t0" "$tr") s, $BENCH_LUNS maps live after $(jsecs "$t0" "$tm") s, $maps maps"
	rec "$(printf '{"kind":"round","tool":"mpathd","round":%d,"ready_s":%s,"maps_s":%s,"maps":%d,"ready_line":%s,"error":%s}' \
		"$r" "$(jsecs "$t0" "$tr")" "$(jsecs "$t0" "$tm")" "$maps" "$(jstr "$rline")" "$why")"
}

for r in $(seq "$BENCH_ROUNDS"); do
	t_round=$EPOCHREALTIME
	if [ "$r" -gt 1 ]; then
		left=$(awk -v s="$LAB_T0" -v b="$BENCH_BUDGET_S" -v n="$t_round" -v p="$pair_s" 'BEGIN{printf "%d", (s + b - n - p)}')
		if [ "$left" -lt 0 ]; then
			lab_event info "no round $r: one more pair (~${pair_s%.*} s) would end past the ${BENCH_BUDGET_S} s budget"
			break
		fi
	fi
	lab_step "round $r: multipath -r"
	bench_flush
	# udev's events during the round, for the lab dir (why multipath -r waits).
	udevadm monitor --udev --subsystem-match=block >"$LAB_OUT/udev-multipath-r$r.log" 2>&1 &
	um=$!
	round_multipath "$r"
	kill "$um"
	[ "$r" = 1 ] && dmsetup table >"$LAB_OUT/multipath-tables.txt"
	if [ $mpathd_available = 1 ]; then
		lab_step "round $r: mpathd daemon"
		bench_flush
		round_mpathd "$r"
		[ "$r" = 1 ] && dmsetup table >"$LAB_OUT/mpathd-tables.txt"
	fi
	pair_s=$(secs "$t_round" "$EPOCHREALTIME")
done

# --- one portal's fault with every map under IO ------------------------------------------------
# A daemon manages all maps (mpathd, then multipathd, from the same paths); each map carries
# a light random read (fio, BENCH_SCALE_IOPS a map); portal 1's traffic is dropped in the
# network (silent loss: the worst fault, no signal but silence). One iSCSI connection
# carries portal 1's path of every LUN, so one decision must fail all of them and hand
# their stuck IO back. Recorded per daemon: when each path was failed (the daemon's log),
# when dm showed them all failed, each map's longest IO wait (fio's max completion
# latency), app IO errors, and how long after the fault ends the paths are back in use.
: "${BENCH_SCALE:=1}"             # 0: skip this part
: "${BENCH_SCALE_STACKS:=mpathd multipathd}"
: "${BENCH_SCALE_IOPS:=2}"        # reads a second on each map
: "${BENCH_SCALE_FAULT_S:=20}"    # how long portal 1 stays silent
: "${BENCH_SCALE_RECOVER_S:=90}"  # how long to wait for every path to be back in use
: "${BENCH_SCALE_LOG:=info}"       # MPATHD_LOG of the daemon in this part

# bench_portal_paths I: the SCSI disks behind portal I, one "sdX MAJ:MIN" a line (sysfs:
# disk -> session -> its connection's address).
bench_portal_paths() {
	local d s a devt
	for d in /sys/block/sd*; do
		s=$(readlink -f "$d/device")
		s=${s%/target*}
		s=${s##*/}
		read -r a <"/sys/class/iscsi_connection/connection${s#session}:0/persistent_address" || continue
		read -r devt <"$d/dev"
		[ "$a" = "10.99.$1.2" ] && echo "${d##*/} $devt"
	done
}

# bench_dm_failed_on FILE: how many of the paths listed in FILE dm shows failed now.
bench_dm_failed_on() {
	dmsetup status --target multipath 2>/dev/null | awk -v list="$1" '
		BEGIN { while ((getline l < list) > 0) { split(l, a, " "); want[a[2]] = 1 } }
		{ for (i = 1; i < NF; i++) if ($i in want && $(i + 1) == "F") f++ }
		END { print f + 0 }'
}
# bench_stat_files OUT DEV...: the stat files of the block devices DEV, one a line, to OUT.
bench_stat_files() {
	local out=$1 d
	shift
	for d in "$@"; do echo "/sys/block/$d/stat"; done >"$out"
}
# bench_io_sampler OUT: once a second until killed, the epoch and "READS INFLIGHT" summed
# over portal 1's disks, portal 2's disks and the maps (reads completed, requests in
# flight): whether IO reached the maps and which portal carried it, second by second.
bench_io_sampler() {
	local t p1 p2 m
	printf 'epoch\tp1_reads\tp1_inflight\tp2_reads\tp2_inflight\tmap_reads\tmap_inflight\n' >"$1"
	while :; do
		t=$EPOCHREALTIME
		p1=$(awk '{r += $1; f += $9} END {printf "%d\t%d", r, f}' $(cat "$B/p1.stat"))
		p2=$(awk '{r += $1; f += $9} END {printf "%d\t%d", r, f}' $(cat "$B/p2.stat"))
		m=$(awk '{r += $1; f += $9} END {printf "%d\t%d", r, f}' $(cat "$B/maps.stat"))
		printf '%s\t%s\t%s\t%s\n' "$t" "$p1" "$p2" "$m" >>"$1"
		read -r -t 1 -u "$BENCH_SLEEP_FD" _
	done
}
# bench_maps_reading BASE: how many maps completed more reads than BASE ("STATFILE READS"
# a line) holds.
bench_maps_reading() {
	local f b r n=0
	while read -r f b; do
		read -r r _ <"$f" && [ "$r" -gt "$b" ] && n=$((n + 1))
	done <"$1"
	echo "$n"
}
# bench__dm_paths_at_least N: the multipath maps hold N paths in all.
bench__dm_paths_at_least() { [ "$(bench_dm_paths)" -ge "$1" ]; }

# scale_up_mpathd LOG: mpathd started; sets pid. Ready when it has logged its ready line,
# every map is live and its probes watch both connections.
scale_up_mpathd() {
	local log=$1 end
	rm -f "$B/mpathd.sock"
	env -u DM_DISABLE_UDEV MPATHD_LOG="$BENCH_SCALE_LOG" "$MPATHD_BIN" daemon --config "$B/mpathd.toml" --socket "$B/mpathd.sock" 2>"$log" >/dev/null &
	pid=$!
	end=$((${EPOCHREALTIME%.*} + BENCH_ROUND_TIMEOUT))
	until grep -q "ready maps=" "$log" || ! kill -0 "$pid" 2>/dev/null || [ "${EPOCHREALTIME%.*}" -ge "$end" ]; do
		read -r -t 0.2 -u "$BENCH_SLEEP_FD" _
	done
	grep -q "ready maps=" "$log" || lab_fail "mpathd was not ready within ${BENCH_ROUND_TIMEOUT} s: $(tail -3 "$log")"
	lab_wait "$BENCH_ROUND_TIMEOUT" "all $BENCH_LUNS maps live" bench__live_at_least "$BENCH_LUNS"
	# The fault is for the probes to see: wait until they watch both sessions' connections
	# (under TCG that came up to 100 s after the ready line), and record when.
	bench__watching() { [ "$(grep -c 'watching iSCSI connection' "$log")" -ge "$LAB_PORTALS" ]; }
	lab_wait "$BENCH_ROUND_TIMEOUT" "mpathd's probes on the $LAB_PORTALS connections" bench__watching
}

# scale_up_multipathd LOG: Debian's multipathd with /etc/multipath.conf above (its
# defaults for the checks: polling_interval 5, tur, fast_io_fail_tmo 5); sets pid. Each log
# line is stamped with the epoch as it is read. DM_DISABLE_UDEV=1: with udev sync, its
# map creation at this scale waits forever on a udev cookie in this lab (see `multipath
# -r` above and docs/bench.md); libdevmapper then makes the /dev/mapper nodes itself. Ready
# when every map is live with all its paths.
scale_up_multipathd() {
	local log=$1
	DM_DISABLE_UDEV=1 multipathd -d -s -v2 > >(while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done >"$log") 2>&1 &
	pid=$!
	local end=$((${EPOCHREALTIME%.*} + BENCH_ROUND_TIMEOUT)) all=$((BENCH_LUNS * LAB_PORTALS))
	bench__mpd_up() { bench__live_at_least "$BENCH_LUNS" && bench__dm_paths_at_least "$all"; }
	until bench__mpd_up || ! kill -0 "$pid" 2>/dev/null || [ "${EPOCHREALTIME%.*}" -ge "$end" ]; do
		read -r -t 0.5 -u "$BENCH_SLEEP_FD" _
	done
	kill -0 "$pid" 2>/dev/null || lab_fail "multipathd exited: $(tail -3 "$log")"
	bench__mpd_up || lab_fail "multipathd had not made $BENCH_LUNS maps with $all paths within ${BENCH_ROUND_TIMEOUT} s: $(bench_mp_maps) maps"
}

scale_fault() {
	local stack=$1 log=$LAB_OUT/$1-scale.log pid t0 tr end names n fio_pid tf tu failed back watching why=null
	lab_step "fault at scale: $stack manages $BENCH_LUNS maps, each under IO; silent loss on portal 1"
	bench_flush
	bench_portal_paths 1 >"$B/portal1.paths"
	n=$(wc -l <"$B/portal1.paths")
	[ "$n" = "$BENCH_LUNS" ] || lab_fail "$n paths behind portal 1, expected $BENCH_LUNS"
	# Round-robin, one IO per path in turn, for both daemons in this part: with
	# service-time and one read at a time, a map sends every IO down the first path of its
	# group, and each daemon orders paths its own way (in the first run multipathd put
	# portal 2 first in all 128 maps, mpathd portal 1 in 64), so the fault hit different
	# maps. Alternating, every map has IO on portal 1 when it goes silent.
	sed -i 's/path_selector "service-time 0"/path_selector "round-robin 0"/' /etc/multipath.conf
	sed -i 's/^path_selector = "service-time"/path_selector = "round-robin"/' "$B/mpathd.toml"
	cp /etc/multipath.conf "$LAB_OUT/scale-multipath.conf"
	cp "$B/mpathd.toml" "$LAB_OUT/scale-mpathd.toml"
	t0=$EPOCHREALTIME
	"scale_up_$stack" "$log"
	watching=$(secs "$t0" "$EPOCHREALTIME")
	lab_event info "$stack ready for the fault (maps live, probes watching for mpathd) $watching s after its start"
	dmsetup table --target multipath >"$LAB_OUT/$stack-scale-tables.txt" 2>&1
	names=$(dmsetup ls --target multipath | awk '{print $1}' | sort)
	# A map is live in dm before udev has made its /dev/mapper node: with a release
	# mpathd all 128 maps were live 18 s after its start and fio found a node missing.
	bench__nodes() { local m; for m in $names; do [ -b "/dev/mapper/$m" ] || return 1; done; }
	lab_wait "$BENCH_ROUND_TIMEOUT" "the /dev/mapper nodes of all $BENCH_LUNS maps" bench__nodes
	# The sampler's device lists: portal 1's and portal 2's disks, and the maps.
	local d m2=() base
	bench_portal_paths 2 >"$B/portal2.paths"
	bench_stat_files "$B/p1.stat" $(awk '{print $1}' "$B/portal1.paths")
	bench_stat_files "$B/p2.stat" $(awk '{print $1}' "$B/portal2.paths")
	local all=" $(echo $names) "
	for d in /sys/block/dm-*; do
		read -r m <"$d/dm/name" && [[ $all == *" $m "* ]] && m2+=("${d##*/}")
	done
	bench_stat_files "$B/maps.stat" "${m2[@]}"
	[ "$(wc -l <"$B/maps.stat")" = "$BENCH_LUNS" ] || lab_fail "found $(wc -l <"$B/maps.stat") of the $BENCH_LUNS maps' dm devices"
	base=$B/maps.base
	while read -r d; do read -r m _ <"$d" && echo "$d $m"; done <"$B/maps.stat" >"$base"
	# disk_util=0: fio finds a block device node's sysfs directory by walking /sys/block
	# (every one of the 384 devices, per job). udev's /dev/mapper entries are symlinks,
	# which fio's lstat does not take for devices, so it skipped that for mpathd's maps;
	# multipathd's, made by libdevmapper under DM_DISABLE_UDEV=1, are device nodes, and
	# fio spent 80-130 s of CPU walking sysfs before its first read.
	{
		printf '[global]\nioengine=psync\ndirect=1\nrw=randread\nbs=4k\nthread=1\ndisk_util=0\n'
		printf 'rate_iops=%d\ntime_based=1\nruntime=%d\n' "$BENCH_SCALE_IOPS" $((15 + BENCH_SCALE_FAULT_S + 20))
		for m in $names; do printf '[%s]\nfilename=/dev/mapper/%s\n' "$m" "$m"; done
	} >"$B/scale.fio"
	local t_fio=$EPOCHREALTIME
	fio --output-format=json --output="$LAB_OUT/$stack-scale-fio.json" "$B/scale.fio" >"$LAB_OUT/$stack-scale-fio.log" 2>&1 &
	fio_pid=$!
	# fio's jobs start their IO together once all are set up; in one run that took fio
	# 130 s, and its IO began long after the fault was over. The clock starts when every
	# map has completed a read.
	local told=0
	end=$((${t_fio%.*} + BENCH_ROUND_TIMEOUT))
	until [ "$(bench_maps_reading "$base")" = "$BENCH_LUNS" ]; do
		kill -0 "$fio_pid" 2>/dev/null || lab_fail "fio exited before it read every map: $(tail -3 "$LAB_OUT/$stack-scale-fio.log")"
		[ "${EPOCHREALTIME%.*}" -ge "$end" ] && lab_fail "fio had not read all $BENCH_LUNS maps within ${BENCH_ROUND_TIMEOUT} s ($(bench_maps_reading "$base") had)"
		# Slow: say where fio's threads wait, once.
		if [ $told = 0 ] && [ "${EPOCHREALTIME%.*}" -ge $((${t_fio%.*} + 10)) ]; then
			told=1
			lab_event info "fio reads $(bench_maps_reading "$base") of $BENCH_LUNS maps 10 s after its start; its threads wait in: $(for d in /proc/"$fio_pid"/task/*; do cat "$d/wchan" 2>/dev/null; echo; done | sort | uniq -c | sort -rn | head -4 | tr -s ' \n' ' '); busiest (pid, class, rtprio, %cpu, name): $(ps -eo pid=,cls=,rtprio=,pcpu=,comm= --sort=-pcpu | head -4 | tr -s ' \n' ' ')"
		fi
		read -r -t 0.5 -u "$BENCH_SLEEP_FD" _
	done
	tr=$EPOCHREALTIME
	local io_start
	io_start=$(secs "$t_fio" "$tr")
	lab_event info "fio's reads on all $BENCH_LUNS maps $io_start s after its start"
	bench_io_sampler "$LAB_OUT/$stack-scale-io.tsv" &
	local sampler=$!
	lab_sleep_since "$tr" 15
	tf=$EPOCHREALTIME
	lab_drop_net 1
	# Every portal-1 path failed in dm, as the kernel shows it.
	end=$((${tf%.*} + BENCH_SCALE_FAULT_S))
	until [ "$(bench_dm_failed_on "$B/portal1.paths")" = "$n" ] || [ "${EPOCHREALTIME%.*}" -ge "$end" ]; do
		read -r -t 0.2 -u "$BENCH_SLEEP_FD" _
	done
	failed=$EPOCHREALTIME
	[ "$(bench_dm_failed_on "$B/portal1.paths")" = "$n" ] || failed=
	lab_event info "portal 1's $n paths failed in dm: $( [ -n "$failed" ] && echo "$(secs "$tf" "$failed") s after the fault (an upper bound: dmsetup under TCG)" || echo "not all within ${BENCH_SCALE_FAULT_S} s")"
	lab_sleep_since "$tf" "$BENCH_SCALE_FAULT_S"
	tu=$EPOCHREALTIME
	lab_undrop_net 1
	wait "$fio_pid"
	local fio_rc=$? t_end=$EPOCHREALTIME
	kill "$sampler" 2>/dev/null
	wait "$sampler" 2>/dev/null
	# fio's IO must span the fault, or its latencies say nothing about it.
	[ "$(secs "$tu" "$t_end" | cut -d. -f1)" -ge 5 ] || why=$(jstr "fio's IO ended $(secs "$tu" "$t_end") s after the fault's end: it did not span the fault")
	# Back in use: none of portal 1's paths failed in dm any more.
	end=$((${tu%.*} + BENCH_SCALE_RECOVER_S))
	back=
	while [ "${EPOCHREALTIME%.*}" -lt "$end" ]; do
		[ "$(bench_dm_failed_on "$B/portal1.paths")" = 0 ] && { back=$EPOCHREALTIME; break; }
		read -r -t 0.5 -u "$BENCH_SLEEP_FD" _
	done
	dmsetup status --target multipath >"$LAB_OUT/$stack-scale-dm-status.txt" 2>&1
	bench_stop "$pid" "$LAB_OUT/$stack-scale.sigterm" "$stack"
	[ "$fio_rc" = 0 ] || why=$(jstr "fio exited with $fio_rc: $(tail -3 "$LAB_OUT/$stack-scale-fio.log")")
	# The daemon's own account of each path it failed after the fault: mpathd's fail_path
	# decisions (with its signal-to-decision and decision-to-done times), multipathd's
	# "checker failed path" lines.
	rec "$(STACK=$stack IO_TSV="$LAB_OUT/$stack-scale-io.tsv" IO_START_S=$io_start BENCH_SCALE_IOPS=$BENCH_SCALE_IOPS WATCHING_S=$watching python3 - "$log" "$LAB_OUT/$stack-scale-fio.json" "$B/portal1.paths" "$t0" "$tf" "$failed" "$tu" "$back" "$why" <<-'PY'
		import datetime, json, os, re, sys
		log, fio, paths, t0, tf, failed, tu, back, why = sys.argv[1:]
		t0, tf, tu = float(t0), float(tf), float(tu)
		stack = os.environ["STACK"]
		mine = set()
		for l in open(paths):
		    if l.strip():
		        mine.update(l.split()[:2])
		def stamp(line):
		    # mpathd: its own ISO timestamp; multipathd: the epoch this script stamped.
		    first = line.split()[0]
		    try:
		        return float(first)
		    except ValueError:
		        ts = first.rstrip("Z")
		        return datetime.datetime.fromisoformat(ts).replace(tzinfo=datetime.timezone.utc).timestamp()
		fails, rescues, ready = [], [], None
		for line in open(log, errors="replace"):
		    try:
		        at = stamp(line)
		    except (ValueError, IndexError):
		        continue
		    if ready is None and "ready maps=" in line:
		        ready = at - t0
		    if at < tf:
		        continue
		    if stack == "mpathd":
		        if " INFO " not in line:
		            continue
		        m = re.search(r"fail_path: \S+ -> failed .* path=(\S+) .*signal_to_decision_ms=([\d.]+)(?: decision_to_done_ms=([\d.]+))?", line)
		        if m:
		            fails.append({"path": m.group(1), "at_s": round(at - tf, 3),
		                          "signal_to_decision_ms": float(m.group(2)),
		                          "decision_to_done_ms": float(m.group(3)) if m.group(3) else None,
		                          "portal1": m.group(1) in mine})
		        elif "rescue: " in line:
		            rescues.append(round(at - tf, 3))
		    else:
		        m = re.search(r"checker failed path (\S+) in map", line)
		        if m:
		            fails.append({"path": m.group(1), "at_s": round(at - tf, 3),
		                          "decision_to_done_ms": None, "portal1": m.group(1) in mine})
		jobs = []
		try:
		    jobs = json.load(open(fio))["jobs"]
		except Exception as e:
		    why = why if why != "null" else json.dumps(f"fio's output: {e}")
		waits = sorted(j["read"]["clat_ns"]["max"] / 1e9 for j in jobs)
		errors = sum(j.get("error", 0) != 0 for j in jobs)
		p1 = [f for f in fails if f["portal1"]]
		# The sampler's rows: epoch, then reads and in flight on portal 1, portal 2, the maps.
		rows = []
		for l in list(open(os.environ["IO_TSV"]))[1:]:
		    try:
		        rows.append([float(x) for x in l.split()])
		    except ValueError:
		        pass
		def at(t):
		    # The first sample at or after t (the last one if none).
		    return next((r for r in rows if r[0] >= t), rows[-1] if rows else None)
		def delta(a, b, col):
		    ra, rb = at(a), at(b)
		    return int(rb[col] - ra[col]) if ra and rb else None
		five = at(tf + 5)
		def pct(v, q):
		    return round(v[min(len(v) - 1, int(q * len(v)))], 3) if v else None
		print(json.dumps({
		    "kind": "fault_at_scale", "stack": stack,
		    "fault": "silent loss in the network on portal 1 (nft drop both ways in the target's namespace)",
		    "maps": len(jobs), "portal1_paths": len(mine) // 2, "iops_per_map": int(os.environ["BENCH_SCALE_IOPS"]),
		    "ready_s": round(ready, 3) if ready is not None else None,
		    "watching_s": float(os.environ["WATCHING_S"]),
		    "failed_by_daemon": len(p1), "failed_other_paths": len(fails) - len(p1),
		    "first_fail_s": min((f["at_s"] for f in p1), default=None),
		    "last_fail_s": max((f["at_s"] for f in p1), default=None),
		    "max_decision_to_done_ms": max((f["decision_to_done_ms"] or 0 for f in p1), default=None) if stack == "mpathd" else None,
		    "dm_all_failed_s": round(float(failed) - tf, 3) if failed else None,
		    "rescues_s": rescues,
		    # fio's reads began on every map this long after fio started.
		    "io_start_s": float(os.environ["IO_START_S"]),
		    # From the once-a-second sampler ($stack-scale-io.tsv): reads portal 1's paths
		    # completed in the fault's first 5 s, and those in flight on them then (IO the
		    # fault held); the maps' reads completed over the fault (expected: maps x
		    # iops_per_map x fault_s when nothing waits) and portal 2's share of them.
		    "portal1_reads_first_5s": delta(tf, tf + 5, 1),
		    "portal1_inflight_at_5s": int(five[2]) if five else None,
		    "map_reads_in_fault": delta(tf, tu, 5),
		    "portal2_reads_in_fault": delta(tf, tu, 3),
		    "longest_io_wait_s": {"max": waits[-1] if waits else None, "p50": pct(waits, 0.5), "p90": pct(waits, 0.9)},
		    "maps_over_1s": sum(w > 1 for w in waits),
		    "fio_jobs_with_errors": errors,
		    "fault_s": round(tu - tf, 3),
		    "back_in_use_s": round(float(back) - tu, 3) if back else None,
		    "error": json.loads(why) if why != "null" else None,
		}))
	PY
	)"
	lab_event info "fault at scale, $stack: $(tail -1 "$RAW")"
}
if [ "$BENCH_SCALE" = 1 ]; then
	for stack in $BENCH_SCALE_STACKS; do
		[ "$stack" = mpathd ] && [ $mpathd_available = 0 ] && continue
		scale_fault "$stack"
	done
fi
lab_done
