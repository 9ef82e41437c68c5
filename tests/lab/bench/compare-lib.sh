# Guest side of `cargo xtask bench compare`: the same fault on the same verified IO with
# three stacks in one VM: the kernel alone (a map made by dmsetup), Debian's multipathd
# and mpathd. Sourced after lib.sh and daemon.sh by compare.sh and compare-short.sh:
#   . "$LAB_LIB"; . "${LAB_LIB%/*}/daemon.sh"; . "${LAB_LIB%/*}/bench/compare-lib.sh"
#
# The guest only records; the host computes every figure (xtask/src/bench/compare.rs).
# Per run (one fault, one stack) the directory $LAB_OUT/compare/<fault>.<stack>/ gets:
#   labio.json   the verifier's report (longest stall, errors, mismatches)
#   trace.txt    every IO: completion time (epoch s), latency (us), failed
#   status.tsv   epoch, `dmsetup status` of the map, one line per change
#   dmesg.txt    the kernel log of the run, with `mpathd-bench: clock EPOCH` markers that
#                tie its timestamps to the wall clock
#   daemon.log   multipathd's log with an epoch stamp per line / mpathd's own log
# and one JSON line in $LAB_OUT/compare-raw.jsonl with the run's times.

# --- knobs ------------------------------------------------------------------------------
: "${BENCH_PRE_S:=3}"       # IO before the fault
: "${BENCH_FAULT_S:=30}"    # how long a fault lasts (the kernel alone needs ~20 s for a dead path)
: "${BENCH_FLAP_S:=20}"     # flapping: this long, down 0.5 s / up 0.5 s
: "${BENCH_RECOVER_S:=90}"  # how long a daemon may take to put the path back after the fault
: "${BENCH_POST_S:=3}"      # IO after the path is back
: "${BENCH_MPATHD:=}"       # the mpathd to run (the bench passes a release build)
BENCH_MAPNAME=mpbench
BENCH_RAW=$LAB_OUT/compare-raw.jsonl
BENCH_RUNS=$LAB_OUT/compare
BENCH_MPATHD_BIN=${BENCH_MPATHD:-$MPATHD}
BENCH_STATUS_PID=
BENCH_DAEMON_PID=
BENCH_STACK=
mkdir -p "$BENCH_RUNS"

# The iSCSI settings open-iscsi's README recommends with dm-multipath (section 8.1):
# NOP-out every 5 s with a 10 s timeout, replacement_timeout "5 to 15 seconds" (5 is also
# what multipathd writes to the session with its default fast_io_fail_tmo 5). All three
# stacks run on the same sessions with these settings.
LAB_NOOP_INTERVAL=5
LAB_NOOP_TIMEOUT=10
LAB_RECOVERY_TMO=5

bench_json_str() { # bench_json_str S: S as a JSON string (no fork: called per run)
	local s=${1//\\/\\\\}
	s=${s//\"/\\\"}
	s=${s//$'\t'/ }
	s=${s//$'\n'/ }
	printf '"%s"' "$s"
}

# bench_record_setup: the versions and settings the figures depend on, one JSON line.
bench_record_setup() {
	printf '{"kind":"setup","kernel":"%s","multipath_tools":"%s","open_iscsi":"%s","fio":"%s","bpftrace":"%s","mpathd":%s,"noop_out_interval":%d,"noop_out_timeout":%d,"replacement_timeout":%d,"nproc":%d,"mem_kb":%d}\n' \
		"$(uname -r)" "$(dpkg-query -W -f='${Version}' multipath-tools)" "$(dpkg-query -W -f='${Version}' open-iscsi)" \
		"$(dpkg-query -W -f='${Version}' fio)" "$(dpkg-query -W -f='${Version}' bpftrace 2>/dev/null)" \
		"$(bench_json_str "$BENCH_MPATHD_BIN")" "$LAB_NOOP_INTERVAL" "$LAB_NOOP_TIMEOUT" "$LAB_RECOVERY_TMO" \
		"$(nproc)" "$(awk '/MemTotal/{print $2}' /proc/meminfo)" >>"$BENCH_RAW"
}

# --- recording ----------------------------------------------------------------------------
# bench_status_start FILE: `dmsetup status` of the map on every change. It sleeps in
# `dmsetup wait` (a path failed or reinstated, a group switched) and stamps a change with
# its wake-up time. A reload raises no event, so it also looks every second; a change
# found that way is stamped when the read ends (it happened before, never after).
bench_status_start() {
	local f=$1
	(
		prev=
		t=$EPOCHREALTIME
		rc=0
		while :; do
			ev=$(dmsetup info -c --noheadings -o events "$BENCH_MAPNAME" 2>/dev/null)
			ev=${ev//[[:space:]]/}
			st=$(dmsetup status "$BENCH_MAPNAME" 2>/dev/null)
			[ "$rc" = 0 ] || t=$EPOCHREALTIME
			if [ "$st" != "$prev" ]; then
				printf '%s\t%s\n' "$t" "$st" >>"$f"
				prev=$st
			fi
			timeout 1 dmsetup wait "$BENCH_MAPNAME" "${ev:-0}" >/dev/null 2>&1
			rc=$?
			[ $rc = 124 ] || [ -n "$ev" ] || sleep 0.2 # no map: do not spin
			t=$EPOCHREALTIME
		done
	) &
	BENCH_STATUS_PID=$!
}
bench_status_stop() {
	[ -n "$BENCH_STATUS_PID" ] || return 0
	pkill -P "$BENCH_STATUS_PID" 2>/dev/null
	kill "$BENCH_STATUS_PID" 2>/dev/null
	wait "$BENCH_STATUS_PID" 2>/dev/null
	BENCH_STATUS_PID=
}

# bench_clock: a line in the kernel log with the wall clock, so the host can date the
# kernel's own messages (iSCSI connection errors, dm failing a path). Prints the line.
bench_clock() {
	local m="mpathd-bench: clock $EPOCHREALTIME"
	echo "$m" >/dev/kmsg
	echo "$m"
}

# bench_stamp FILE: each line of stdin to FILE with the epoch it was read at.
bench_stamp() {
	local l
	while IFS= read -r l; do
		printf '%s %s\n' "$EPOCHREALTIME" "$l"
	done >>"$1"
}

# bench_io_start TRACE: labio on the map, as lab_io_start, with every IO's latency traced.
bench_io_start() {
	rm -f /tmp/labio.stop /tmp/labio.json
	"$LABIO" --dev "/dev/mapper/$BENCH_MAPNAME" --blocks "$LAB_IO_BLOCKS" --workers "$LAB_IO_WORKERS" \
		--stop-file /tmp/labio.stop --out /tmp/labio.json --progress 0 --trace "$1" &
	LAB_IO_PID=$!
	lab_event io "verified IO started on /dev/mapper/$BENCH_MAPNAME ($LAB_IO_WORKERS workers, traced)"
}

# --- the map's layout ----------------------------------------------------------------------
# bench_layout: the map's path groups from `dmsetup status`, e.g. "A:8:0=A E:8:16=A":
# per group its state (A active, E enabled, D disabled) and its paths with their states.
bench_layout() {
	dmsetup status "$BENCH_MAPNAME" 2>/dev/null | awk '{
		i = 4; nf = $i; i += 1 + nf; nh = $i; i += 1 + nh; ng = $i; i += 2; out = ""
		for (g = 0; g < ng; g++) {
			st = $i; i++; ns = $i; i += 1 + ns; np = $i; na = $(i + 1); i += 2
			grp = st ":"
			for (p = 0; p < np; p++) { grp = grp (p ? "," : "") $i "=" $(i + 1); i += 3 + na }
			out = out (g ? " " : "") grp
		}
		print out
	}'
}
# bench_shape: the layout without states: which paths are in which group, in order.
bench_shape() { bench_layout | sed -E 's/(^| )[ADE]:/\1/g; s/=[AF]//g'; }
bench_path_is() { bench_layout | grep -qE "(^|[:,])${LAB_DEVT[$1]}=$2( |,|$)"; }
# bench_in_use I: path I is usable and in the group that carries the IO.
bench_in_use() { bench_layout | grep -qE "(^| )A:([^ ]*,)?${LAB_DEVT[$1]}=A"; }
bench_all_usable() { local i; for i in $(seq "$LAB_PORTALS"); do bench_path_is "$i" A || return 1; done; }
# bench_settled SHAPE: every path usable, grouped as SHAPE (a demoted path back in place).
bench_settled() { bench_all_usable && [ "$(bench_shape)" = "$1" ]; }
bench_used_path() { # the path number I that carries the IO (1 if none does)
	local i
	for i in $(seq "$LAB_PORTALS"); do bench_in_use "$i" && { echo "$i"; return; }; done
	echo 1
}
bench_set_tmo() { # bench_set_tmo SECS: every session's recovery_tmo
	local f
	for f in /sys/class/iscsi_session/session*/recovery_tmo; do echo "$1" >"$f"; done
}

# --- the faults ------------------------------------------------------------------------------
# Every fault is on path I, the one carrying the IO, except all_paths_down (every path).
BENCH_FAULTS_ALL="link_cut silent_loss target_reset delay_150ms loss_5pct flapping all_paths_down"
bench_inject() { # bench_inject FAULT I
	local i
	case $1 in
	link_cut) lab_link_down "$2" ;;
	silent_loss) lab_drop_net "$2" ;;
	target_reset) lab_tcp_reset "$2" ;;
	delay_150ms) lab_netem "$2" "delay 150ms" ;;
	loss_5pct) lab_netem "$2" "loss 5%" ;;
	flapping)
		local end=$((SECONDS + BENCH_FLAP_S))
		lab_event fault "link p$2 flapping (down 0.5 s, up 0.5 s) for $BENCH_FLAP_S s"
		while [ $SECONDS -lt $end ]; do
			ip link set "p$2" down
			sleep 0.5
			ip link set "p$2" up
			sleep 0.5
		done
		;;
	all_paths_down) for i in $(seq "$LAB_PORTALS"); do lab_link_down "$i"; done ;;
	*) lab_fail "unknown fault '$1' (one of: $BENCH_FAULTS_ALL)" ;;
	esac
}
bench_restore() { # bench_restore FAULT I
	local i
	case $1 in
	link_cut) lab_link_up "$2" ;;
	silent_loss) lab_undrop_net "$2" ;;
	target_reset) lab_tcp_reset_clear "$2" ;;
	delay_150ms | loss_5pct) lab_netem_clear "$2" ;;
	flapping) lab_event restore "link p$2 flapping over (left up)" ;;
	all_paths_down) for i in $(seq "$LAB_PORTALS"); do lab_link_up "$i"; done ;;
	esac
}

# --- the three stacks --------------------------------------------------------------------------
# Each builds the map named $BENCH_MAPNAME over both paths with the same policy: failover
# (one path per group), IO queued while no path is left, paths back in their group at once
# (failback immediate, for the two daemons; the kernel alone never reinstates a path).

bench_up_kernel() {
	bench_set_tmo "$LAB_RECOVERY_TMO"
	LAB_MAP=$BENCH_MAPNAME
	lab_map failover queue
}
bench_down_kernel() { lab_do dmsetup remove "$BENCH_MAPNAME"; }

# multipath-tools 0.9.4 (Debian 12): its documented defaults for the checks
# (polling_interval 5, path_checker tur, fast_io_fail_tmo 5, which it writes to each iSCSI
# session's recovery_tmo) written out, and mpathd's policy under `overrides`: the built-in
# LIO-ORG entry (group_by_prio, prio alua, no_path_retry 12) beats `defaults`.
bench_multipath_conf() {
	mkdir -p /etc/multipath
	rm -f /etc/multipath/wwids /etc/multipath/bindings
	cat >/etc/multipath.conf <<-EOF
		defaults {
			polling_interval 5
			path_checker tur
			fast_io_fail_tmo 5
			find_multipaths off
			user_friendly_names no
		}
		blacklist {
		}
		overrides {
			path_grouping_policy failover
			path_selector "service-time 0"
			path_checker tur
			failback immediate
			no_path_retry queue
			detect_prio no
			prio const
		}
		multipaths {
			multipath {
				wwid $LAB_WWID
				alias $BENCH_MAPNAME
			}
		}
	EOF
	cp /etc/multipath.conf "$LAB_OUT/multipath.conf"
}

bench_up_multipathd() {
	[ -n "$LAB_WWID" ] || LAB_WWID=$(lab_wwid)
	bench_multipath_conf
	# -d: foreground, -s: no timestamps (each line is stamped as it is read), -v2: its
	# default verbosity. udev sync on (DM_DISABLE_UDEV unset), as on a host.
	env -u DM_DISABLE_UDEV multipathd -d -s -v2 > >(bench_stamp "$LAB_OUT/multipathd.log") 2>&1 &
	BENCH_DAEMON_PID=$!
	lab_event info "multipathd started (pid $BENCH_DAEMON_PID)"
	lab_wait 120 "multipathd's map $BENCH_MAPNAME with $LAB_PORTALS paths" bench__up_and_has "$LAB_PORTALS"
	lab_wait 30 "recovery_tmo $LAB_RECOVERY_TMO (multipathd's fast_io_fail_tmo) on every session" lab_tmo_is "$LAB_RECOVERY_TMO"
	lab_event dm "multipathd made $BENCH_MAPNAME: $(dmsetup table "$BENCH_MAPNAME")"
}
bench__up_and_has() {
	kill -0 "$BENCH_DAEMON_PID" 2>/dev/null || lab_fail "$BENCH_STACK exited: $(tail -3 "$(bench_daemon_log)")"
	lab__map_has "$BENCH_MAPNAME" "$1"
}
bench_down_multipathd() {
	kill -TERM "$BENCH_DAEMON_PID"
	lab_wait 60 "multipathd to exit" lab__gone "$BENCH_DAEMON_PID"
	wait "$BENCH_DAEMON_PID" 2>/dev/null
	BENCH_DAEMON_PID=
	lab_do dmsetup remove "$BENCH_MAPNAME"
}

# mpathd with its defaults (polling_interval 5, as multipathd) and the same policy.
bench_mpathd_conf() {
	[ -n "$LAB_WWID" ] || LAB_WWID=$(lab_wwid)
	mkdir -p "$LAB_MPATHD_STATE"
	rm -f "$LAB_MPATHD_STATE/bindings" "$LAB_MPATHD_STATE/wwids"
	cat >"$LAB_MPATHD_CONF" <<-EOF
		[defaults]
		bindings_file = "$LAB_MPATHD_STATE/bindings"
		wwids_file = "$LAB_MPATHD_STATE/wwids"
		find_multipaths = "greedy"

		[overrides]
		path_grouping_policy = "failover"
		path_selector = "service-time"
		path_checker = "tur"
		failback = "immediate"
		no_path_retry = "queue"
		prio = "const"

		[[multipaths]]
		wwid = "$LAB_WWID"
		alias = "$BENCH_MAPNAME"
	EOF
	cp "$LAB_MPATHD_CONF" "$LAB_OUT/mpathd.toml"
	"$BENCH_MPATHD_BIN" check-config "$LAB_MPATHD_CONF" || lab_fail "the bench's mpathd config does not check"
}
bench_up_mpathd() {
	local n0 r0
	bench_mpathd_conf
	n0=$(grep -c 'watching iSCSI connection' "$LAB_OUT/mpathd.log" 2>/dev/null)
	r0=$(grep -c 'ready maps=' "$LAB_OUT/mpathd.log" 2>/dev/null)
	# Its own log has timestamps (UTC, microseconds); udev sync as on a host.
	env -u DM_DISABLE_UDEV "$BENCH_MPATHD_BIN" --socket "$LAB_SOCK" daemon --config "$LAB_MPATHD_CONF" \
		>>"$LAB_OUT/mpathd.log" 2>&1 &
	BENCH_DAEMON_PID=$!
	LAB_MPATHD_PID=$BENCH_DAEMON_PID
	lab_event info "mpathd started (pid $BENCH_DAEMON_PID, $BENCH_MPATHD_BIN)"
	lab_wait 120 "mpathd's ready line" lab__mpathd_ready "${r0:-0}"
	lab_wait 120 "mpathd's map $BENCH_MAPNAME with $LAB_PORTALS paths" bench__up_and_has "$LAB_PORTALS"
	# Loading the probes takes seconds under emulation: faults wait for them.
	lab_wait 120 "mpathd's probes on $LAB_PORTALS connections" bench__watching $((${n0:-0} + LAB_PORTALS))
	lab_event dm "mpathd made $BENCH_MAPNAME: $(dmsetup table "$BENCH_MAPNAME")"
}
bench__watching() { [ "$(grep -c 'watching iSCSI connection' "$LAB_OUT/mpathd.log")" -ge "$1" ]; }
bench_down_mpathd() {
	lab_mpathd_stop
	BENCH_DAEMON_PID=
	lab_do dmsetup remove "$BENCH_MAPNAME"
}

bench_daemon_log() {
	case $BENCH_STACK in
	multipathd) echo "$LAB_OUT/multipathd.log" ;;
	mpathd) echo "$LAB_OUT/mpathd.log" ;;
	*) echo /dev/null ;;
	esac
}

# bench_stack_up STACK / bench_stack_down: one of kernel, multipathd, mpathd.
bench_stack_up() {
	BENCH_STACK=$1
	lab_step "$1: building the map"
	"bench_up_$1"
	lab_wait 60 "every path of $BENCH_MAPNAME usable" bench_all_usable
	BENCH_SHAPE=$(bench_shape)
	lab_event info "$1: $BENCH_MAPNAME groups: $(bench_layout)"
}
bench_stack_down() {
	lab_step "$BENCH_STACK: taking the map down"
	"bench_down_$BENCH_STACK"
	BENCH_STACK=
}

# --- one run --------------------------------------------------------------------------------
# bench_run FAULT: verified IO on the map, the fault on the path carrying it after
# BENCH_PRE_S, removed after BENCH_FAULT_S; then (daemons) up to BENCH_RECOVER_S for the
# path to be usable and in its group again, with IO still running; then the stack is
# brought back to where it started for the next run.
bench_run() {
	local f=$1 s=$BENCH_STACK a dir t_io t_f t_r t_back="" t_manual="" log0=0 mark log
	a=$(bench_used_path)
	dir=$BENCH_RUNS/$f.$s
	rm -rf "$dir"
	mkdir -p "$dir"
	lab_step "$f with $s (path $a, ${LAB_DEV[a]} ${LAB_DEVT[a]})"
	log=$(bench_daemon_log)
	[ -f "$log" ] && log0=$(wc -l <"$log")
	mark=$(bench_clock)
	bench_status_start "$dir/status.tsv"
	t_io=$EPOCHREALTIME
	bench_io_start "$dir/trace.txt"
	sleep "$BENCH_PRE_S"
	t_f=$EPOCHREALTIME
	bench_inject "$f" "$a"
	[ "$f" = flapping ] || lab_sleep_since "$t_f" "$BENCH_FAULT_S"
	bench_restore "$f" "$a"
	t_r=$EPOCHREALTIME
	if [ "$s" = kernel ]; then
		if [ "$f" = all_paths_down ]; then
			# No path is usable and none comes back by itself: the IO stays queued until
			# an admin reinstates the paths; the bench does it once the sessions are back.
			bench_wait_sessions
			sleep 2
			t_manual=$EPOCHREALTIME
			bench_kernel_reinstate
		fi
	else
		local end=$((SECONDS + BENCH_RECOVER_S))
		until bench_settled "$BENCH_SHAPE" || [ $SECONDS -ge $end ]; do sleep 0.2; done
		bench_settled "$BENCH_SHAPE" && t_back=$EPOCHREALTIME
	fi
	sleep "$BENCH_POST_S"
	lab_io_stop 300
	bench_clock >/dev/null
	bench_status_stop
	cp /tmp/labio.json "$dir/labio.json"
	# From the run's first marker on (a line count would shift when the ring buffer wraps).
	dmesg | awk -v m="$mark" 'index($0, m) { p = 1 } p' >"$dir/dmesg.txt"
	[ -f "$log" ] && tail -n +"$((log0 + 1))" "$log" >"$dir/daemon.log"
	printf '{"stack":"%s","fault":"%s","path":%d,"dev":"%s","devt":"%s","session":"%s","portals":%d,"io_start":%s,"fault_at":%s,"restored_at":%s,"back_seen_at":%s,"manual_reinstate_at":%s,"fault_s":%s,"recover_wait_s":%s,"dir":%s}\n' \
		"$s" "$f" "$a" "${LAB_DEV[a]}" "${LAB_DEVT[a]}" "${LAB_SESSION[a]}" "$LAB_PORTALS" "$t_io" "$t_f" "$t_r" \
		"${t_back:-null}" "${t_manual:-null}" "$BENCH_FAULT_S" "$BENCH_RECOVER_S" "$(bench_json_str "compare/$f.$s")" >>"$BENCH_RAW"
	bench_reset
}

bench_wait_sessions() {
	local i
	for i in $(seq "$LAB_PORTALS"); do lab_wait_session "$i" 120; done
}

bench_kernel_reinstate() { # what a daemon would do: every failed path back, group 1 first
	local i
	for i in $(seq "$LAB_PORTALS"); do
		bench_path_is "$i" F && lab_do dmsetup message "$BENCH_MAPNAME" 0 reinstate_path "${LAB_DEVT[i]}"
	done
	lab_do dmsetup message "$BENCH_MAPNAME" 0 switch_group 1
	lab_event dm "bench: failed paths reinstated by hand, group 1 switched to"
}

# bench_reset: the stack as it was before the run: sessions logged in, every path usable
# and grouped as at the start (the kernel alone gets its paths back by hand).
bench_reset() {
	lab_step "$BENCH_STACK: back to the start"
	bench_wait_sessions
	if [ "$BENCH_STACK" = kernel ]; then
		sleep 1
		bench_kernel_reinstate
	fi
	lab_wait 120 "$BENCH_STACK to have every path usable and grouped as at the start ($BENCH_SHAPE)" bench_settled "$BENCH_SHAPE"
	sleep 2
}

# --- overhead on a healthy map ---------------------------------------------------------------
# The same map (made by mpathd, then left to whichever mode runs) under fio with: no daemon;
# mpathd (probes on); mpathd with --no-probes (what the daemon costs without its eBPF
# programs); bpftrace's biolatency, the tool an admin runs today for block latency;
# multipathd. Rounds rotate the order so drift in the VM's speed hits every mode. Then each
# daemon idle for BENCH_IDLE_S, and one more fio run under mpathd with the kernel's
# bpf_stats on: each of its programs' runs and run time per IO. CPU from /proc/PID/stat
# (all threads), RSS from /proc/PID/status.
: "${BENCH_OVH_ROUNDS:=6}"
: "${BENCH_OVH_FIO_S:=15}"
: "${BENCH_IDLE_S:=60}"
BENCH_OVH_MODES="none mpathd mpathd-noprobes bpftrace multipathd"
BENCH_OVH_DIR=$BENCH_RUNS/overhead
BENCH_OVH_PID=
BENCH_OVH_VARIANT=

bench_cpu_ticks() { # bench_cpu_ticks PID: utime + stime of every thread, in clock ticks
	local l f
	read -r l <"/proc/$1/stat" || return 1
	read -ra f <<<"${l##*) }" # after the command name: state is f[0], utime f[11], stime f[12]
	echo $((f[11] + f[12]))
}
bench_rss() { # bench_rss PID: "VmRSS VmHWM" in kB
	local k v rss=0 hwm=0
	while read -r k v _; do
		case $k in VmRSS:) rss=$v ;; VmHWM:) hwm=$v ;; esac
	done <"/proc/$1/status"
	echo "$rss $hwm"
}

bench_ovh_start() { # bench_ovh_start MODE: sets BENCH_OVH_PID (empty for none)
	local out n0
	BENCH_OVH_PID=
	BENCH_OVH_VARIANT=
	case $1 in
	none) ;;
	mpathd | mpathd-noprobes)
		n0=$(grep -c 'ready maps=' "$LAB_OUT/mpathd.log" 2>/dev/null)
		local w0 extra=()
		w0=$(grep -c 'watching iSCSI connection' "$LAB_OUT/mpathd.log" 2>/dev/null)
		[ "$1" = mpathd-noprobes ] && extra=(--no-probes)
		env -u DM_DISABLE_UDEV "$BENCH_MPATHD_BIN" --socket "$LAB_SOCK" daemon --config "$LAB_MPATHD_CONF" "${extra[@]}" \
			>>"$LAB_OUT/mpathd.log" 2>&1 &
		LAB_MPATHD_PID=$!
		BENCH_OVH_PID=$LAB_MPATHD_PID
		lab_wait 120 "mpathd's ready line" lab__mpathd_ready "${n0:-0}"
		[ "$1" = mpathd ] && lab_wait 120 "mpathd's probes" bench__watching $((${w0:-0} + LAB_PORTALS))
		;;
	multipathd)
		env -u DM_DISABLE_UDEV multipathd -d -s -v2 > >(bench_stamp "$LAB_OUT/multipathd.log") 2>&1 &
		BENCH_OVH_PID=$!
		lab_wait 120 "multipathd to answer" bench__multipathd_up
		;;
	bpftrace)
		# biolatency.bt as Debian ships it (kprobes on blk_account_io_*) when the kernel
		# can trace those functions; else the same histogram from the block tracepoints.
		# bpftrace skips a probe it cannot attach and runs anyway, so both are checked.
		out=$BENCH_OVH_DIR/bpftrace.txt
		if bench__kprobes_ok; then
			BENCH_OVH_VARIANT=biolatency.bt
			stdbuf -oL bpftrace /usr/sbin/biolatency.bt >"$out" 2>&1 &
			BENCH_OVH_PID=$!
			if ! bench__wait_tracing "$out" || grep -q 'could not attach' "$out"; then
				kill -INT "$BENCH_OVH_PID" 2>/dev/null
				wait "$BENCH_OVH_PID" 2>/dev/null
				BENCH_OVH_PID=
				cp "$out" "$BENCH_OVH_DIR/bpftrace-biolatency-failed.txt"
			fi
		fi
		if [ -z "$BENCH_OVH_PID" ]; then
			BENCH_OVH_VARIANT=tracepoints
			stdbuf -oL bpftrace -e 'BEGIN { printf("Tracing block device I/O (tracepoints)\n"); }
				tracepoint:block:block_rq_issue { @start[args->dev, args->sector] = nsecs; }
				tracepoint:block:block_rq_complete /@start[args->dev, args->sector]/ {
					@usecs = hist((nsecs - @start[args->dev, args->sector]) / 1000);
					delete(@start[args->dev, args->sector]); }' >"$out" 2>&1 &
			BENCH_OVH_PID=$!
			bench__wait_tracing "$out" || lab_fail "bpftrace did not start: $(tail -3 "$out")"
			! grep -q 'could not attach' "$out" || lab_fail "bpftrace could not attach the block tracepoints: $(grep 'could not attach' "$out" | head -2)"
		fi
		lab_event info "bpftrace: $BENCH_OVH_VARIANT"
		;;
	esac
	sleep 3 # past the start-up work
}
bench__multipathd_up() {
	kill -0 "$BENCH_OVH_PID" 2>/dev/null || lab_fail "multipathd exited: $(tail -3 "$LAB_OUT/multipathd.log")"
	# "pid N idle" between checks, "running" during them.
	multipathd show daemon 2>/dev/null | grep -qE 'idle|running'
}
bench__kprobes_ok() { # the kernel can kprobe biolatency.bt's start and done functions
	local f
	for f in /sys/kernel/tracing/available_filter_functions /sys/kernel/debug/tracing/available_filter_functions; do
		[ -r "$f" ] || continue
		grep -qE '^(__)?blk_account_io_start( |$)' "$f" 2>/dev/null && grep -qE '^(__)?blk_account_io_done( |$)' "$f"
		return
	done
	return 1
}
bench__wait_tracing() { # until bpftrace's BEGIN has run (every probe attached); 1 if it exited first
	local end=$((SECONDS + 180))
	while [ $SECONDS -lt $end ]; do
		grep -q '^Tracing' "$1" 2>/dev/null && return 0
		kill -0 "$BENCH_OVH_PID" 2>/dev/null || { wait "$BENCH_OVH_PID"; return 1; }
		sleep 0.5
	done
	lab_fail "bpftrace did not attach in 180 s: $(tail -3 "$1")"
}
bench_ovh_stop() { # bench_ovh_stop MODE: the daemon or tool gone, the map left as it is
	[ -n "$BENCH_OVH_PID" ] || return 0
	case $1 in
	bpftrace) kill -INT "$BENCH_OVH_PID" ;;
	*) kill -TERM "$BENCH_OVH_PID" ;;
	esac
	lab_wait 60 "$1 to exit" lab__gone "$BENCH_OVH_PID"
	wait "$BENCH_OVH_PID" 2>/dev/null
	BENCH_OVH_PID=
	LAB_MPATHD_PID=
}

# bench_ovh_sample MODE ROUND WHAT SECONDS CMD...: CPU and RSS of the mode's process over
# CMD (fio, or a sleep when idle); one JSON line.
bench_ovh_sample() {
	local mode=$1 r=$2 what=$3 secs=$4 c0=null c1=null t0 t1 rss="null null"
	shift 4
	[ -n "$BENCH_OVH_PID" ] && c0=$(bench_cpu_ticks "$BENCH_OVH_PID")
	t0=$EPOCHREALTIME
	"$@" || lab_fail "$what with $mode failed: $*"
	t1=$EPOCHREALTIME
	if [ -n "$BENCH_OVH_PID" ]; then
		c1=$(bench_cpu_ticks "$BENCH_OVH_PID")
		rss=$(bench_rss "$BENCH_OVH_PID")
	fi
	printf '{"kind":"overhead","what":"%s","mode":"%s","variant":%s,"round":%d,"seconds":%s,"t0":%s,"t1":%s,"cpu_ticks0":%s,"cpu_ticks1":%s,"clk_tck":%d,"rss_kb":%s,"hwm_kb":%s,"fio":%s}\n' \
		"$what" "$mode" "$( [ -n "$BENCH_OVH_VARIANT" ] && bench_json_str "$BENCH_OVH_VARIANT" || echo null)" \
		"$r" "$secs" "$t0" "$t1" "$c0" "$c1" "$(getconf CLK_TCK)" "${rss% *}" "${rss#* }" \
		"$( [ "$what" = load ] && bench_json_str "compare/overhead/fio-$mode-r$r.json" || echo null)" >>"$BENCH_RAW"
}

# bench_ovh_bpf_stats: fio once more under mpathd with kernel.bpf_stats_enabled=1 (which
# itself adds two clock reads per program run, so it is kept out of the paired rounds):
# run count and run time of each of mpathd's programs over the fio run, one JSON line.
bench_ovh_bpf_stats() {
	local before=$BENCH_OVH_DIR/bpf-progs-before.json a=$BENCH_OVH_DIR/bpf-progs-fio0.json b=$BENCH_OVH_DIR/bpf-progs-fio1.json
	local fio=$BENCH_OVH_DIR/fio-bpf-stats.json
	lab_step "overhead: mpathd's eBPF programs under fio (bpf_stats)"
	bpftool prog show --json >"$before" || lab_fail "bpftool prog show failed"
	bench_ovh_start mpathd
	sysctl -qw kernel.bpf_stats_enabled=1 || lab_fail "cannot turn on kernel.bpf_stats_enabled"
	bpftool prog show --json >"$a"
	bench_fio "$fio" "$BENCH_OVH_FIO_S" || lab_fail "fio with bpf_stats failed"
	bpftool prog show --json >"$b"
	sysctl -qw kernel.bpf_stats_enabled=0
	bench_ovh_stop mpathd
	python3 - "$before" "$a" "$b" "$fio" >>"$BENCH_RAW" <<-'PY' || lab_fail "summing bpf_stats failed"
		import json, sys
		before, a, b = ({p["id"] for p in json.load(open(sys.argv[1]))},
		                *({p["id"]: p for p in json.load(open(f))} for f in sys.argv[2:4]))
		fio = json.load(open(sys.argv[4]))["jobs"][0]
		ios = fio["read"]["total_ios"] + fio["write"]["total_ios"]
		progs = []
		for pid, p in sorted(b.items()):
		    if pid in before or pid not in a:
		        continue  # not mpathd's: loaded before it started
		    progs.append({"name": p.get("name", ""), "type": p.get("type", ""),
		                  "run_cnt": p.get("run_cnt", 0) - a[pid].get("run_cnt", 0),
		                  "run_time_ns": p.get("run_time_ns", 0) - a[pid].get("run_time_ns", 0)})
		print(json.dumps({"kind": "overhead", "what": "bpf_stats", "mode": "mpathd",
		                  "fio_ios": ios, "fio_s": fio["job_runtime"] / 1000, "progs": progs}))
	PY
}

bench_fio() { # bench_fio OUT SECONDS: 4k random 70/30 read/write, queue depth 4, O_DIRECT
	fio --name=overhead --filename="/dev/mapper/$BENCH_MAPNAME" --direct=1 --ioengine=libaio \
		--rw=randrw --rwmixread=70 --bs=4k --iodepth=4 --numjobs=1 --size=64m \
		--time_based --runtime="$2" --output-format=json --output="$1" >/dev/null 2>&1
}

bench_overhead() {
	local r mode modes
	mkdir -p "$BENCH_OVH_DIR"
	lab_step "overhead: the map, made by mpathd and left to each mode"
	BENCH_STACK=mpathd
	bench_up_mpathd
	lab_wait 60 "every path of $BENCH_MAPNAME usable" bench_all_usable
	lab_mpathd_stop
	bench_multipath_conf
	bench_fio /tmp/fio-warmup.json 5 || lab_fail "fio on /dev/mapper/$BENCH_MAPNAME failed"
	local n
	n=$(wc -w <<<"$BENCH_OVH_MODES")
	for r in $(seq "$BENCH_OVH_ROUNDS"); do
		# Rotate: round 1 none first, round 2 mpathd first, ...
		modes=$(echo "$BENCH_OVH_MODES" "$BENCH_OVH_MODES" | cut -d' ' -f"$(((r - 1) % n + 1))-$(((r - 1) % n + n))")
		for mode in $modes; do
			lab_step "overhead round $r: fio with $mode"
			bench_ovh_start "$mode"
			bench_ovh_sample "$mode" "$r" load "$BENCH_OVH_FIO_S" bench_fio "$BENCH_OVH_DIR/fio-$mode-r$r.json" "$BENCH_OVH_FIO_S"
			bench_ovh_stop "$mode"
		done
	done
	for mode in mpathd multipathd; do
		lab_step "overhead: $mode idle for $BENCH_IDLE_S s"
		bench_ovh_start "$mode"
		bench_ovh_sample "$mode" 1 idle "$BENCH_IDLE_S" sleep "$BENCH_IDLE_S"
		bench_ovh_stop "$mode"
	done
	bench_ovh_bpf_stats
	lab_do dmsetup remove "$BENCH_MAPNAME"
}
