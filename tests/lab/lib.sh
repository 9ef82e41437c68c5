# Guest-side primitives for mpathd lab scenarios. Sourced by every scenario:
#   . "$LAB_LIB"
# The harness (cargo xtask lab run) sets LAB_LIB, LAB_OUT (writable dir shared with the
# host), LAB_NAME, LABIO (the verifier binary) and MPATHD (the daemon binary). Scenarios set the LAB_* knobs below
# before calling lab_setup, then build a map, start IO, inject faults and assert.
#
# Timeline: every lab_event line goes to the console ("[lab +12.345s] ...") and to
# events.tsv (epoch seconds, kind, message), which the host turns into report.json.

set -u
export DM_DISABLE_UDEV=1 # no udevd in the guest: dmsetup must not wait for udev cookies
# udevadm takes the guest for a chroot (PID 1's root is not ours) and would answer settle,
# trigger, monitor and control with "Running in chroot, ignoring request." and exit 0:
# settles returned at once with events still queued. systemd's own switch turns that off.
export SYSTEMD_IGNORE_CHROOT=1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

: "${LAB_OUT:?LAB_OUT is set by the harness (cargo xtask lab run)}"
: "${LABIO:?LABIO is set by the harness (cargo xtask lab run)}"
: "${LAB_NAME:=scenario}"

# --- knobs (override in the scenario before lab_setup) ------------------------------
: "${LAB_PORTALS:=2}"            # portals = veth links = iSCSI sessions = dm paths
: "${LAB_LUN_MB:=256}"
: "${LAB_LUN_SERIAL:=6001405f00dcafe0123456789abcdef0}" # fixed WWID (naa.<serial>)
: "${LAB_LUN_BACKEND:=fileio}"   # fileio (file in /tmp) | dm (iblock over dm-linear, for lab_lun_error)
: "${LAB_IQN:=iqn.2003-01.org.mpathd.lab:tgt1}"
: "${LAB_INITIATOR:=iqn.2004-10.org.mpathd.lab:guest}"
: "${LAB_RECOVERY_TMO:=5}"       # node.session.timeo.replacement_timeout
: "${LAB_NOOP_INTERVAL:=5}"      # node.conn[0].timeo.noop_out_interval
: "${LAB_NOOP_TIMEOUT:=5}"       # node.conn[0].timeo.noop_out_timeout
: "${LAB_MAP:=mpatha}"
: "${LAB_IO_BLOCKS:=4096}"       # 16 MiB of verified blocks
: "${LAB_IO_WORKERS:=4}"
: "${LAB_DM_POLL:=0.2}"          # watcher's pause when `dmsetup wait` fails

LAB_CFG=/sys/kernel/config/target
LAB_STEP=start
LAB_T0=$EPOCHREALTIME
LAB_EVENTS=/tmp/lab-events.tsv # local tmpfs: appends from several processes stay whole
LAB_IO_PID=
LAB_DM_WATCH_PID=
declare -a LAB_DEV=() LAB_DEVT=() LAB_HCTL=() LAB_SESSION=() LAB_PORTAL=()
: >"$LAB_EVENTS"

# --- timeline and steps --------------------------------------------------------------
# lab_event KIND MESSAGE: kinds used: step, fault, restore, dm, io, iscsi, fail, info.
# (mpathd and its eBPF probe will add their own kinds; nothing here fakes them.)
lab_event() {
	local now=$EPOCHREALTIME kind=$1
	shift
	printf '%s\t%s\t%s\n' "$now" "$kind" "$*" >>"$LAB_EVENTS"
	printf '[lab +%.3fs] %s: %s\n' "$(lab__elapsed "$now")" "$kind" "$*"
}
lab_event_at() { # lab_event_at EPOCH KIND MESSAGE: an event observed at EPOCH
	local at=$1 kind=$2
	shift 2
	printf '%s\t%s\t%s\n' "$at" "$kind" "$*" >>"$LAB_EVENTS"
	printf '[lab +%.3fs] %s: %s\n' "$(lab__elapsed "$at")" "$kind" "$*"
}
lab__elapsed() { awk -v a="$1" -v b="$LAB_T0" 'BEGIN{printf "%.3f", a-b}'; }

lab_step() {
	LAB_STEP=$1
	lab_event step "$*"
}

lab_fail() {
	lab_event fail "step '$LAB_STEP': $*"
	# What a scenario's helpers know that explains a failure (daemon.sh: mpathd's view).
	declare -F lab__on_fail >/dev/null && { lab__on_fail; } 2>&1 | sed 's/^/  | /'
	echo "LAB-FAIL step=$LAB_STEP: $*"
	exit 1
}

# lab_do CMD...: run a command quietly; fail the current step, with its output, if it fails.
lab_do() {
	local out
	if ! out=$("$@" 2>&1); then
		echo "$out"
		lab_fail "command failed: $*"
	fi
}

lab_wait() { # lab_wait SECONDS WHAT CMD...: poll CMD every 0.1 s (LAB_WAIT_POLL seconds if set)
	local secs=$1 what=$2 end
	shift 2
	end=$(awk -v t="$EPOCHREALTIME" -v s="$secs" 'BEGIN{printf "%.3f", t+s}')
	until "$@" >/dev/null 2>&1; do
		if awk -v t="$EPOCHREALTIME" -v e="$end" 'BEGIN{exit !(t>e)}'; then
			lab_kernel_stacks
			lab_fail "timed out after ${secs}s waiting for $what"
		fi
		sleep "${LAB_WAIT_POLL:-0.1}"
	done
}

# lab_kernel_stacks: the kernel's backtrace of every CPU and the stacks of the blocked (D
# state) tasks, into the kernel log (saved as dmesg.txt); so a step that times out shows
# where the kernel was stuck.
lab_kernel_stacks() {
	echo l >/proc/sysrq-trigger 2>/dev/null
	echo w >/proc/sysrq-trigger 2>/dev/null
}

lab_sleep_since() { # lab_sleep_since EPOCH SECONDS: sleep until SECONDS after EPOCH
	sleep "$(awk -v s="$1" -v d="$2" -v n="$EPOCHREALTIME" 'BEGIN{r=s+d-n; printf "%.3f", (r > 0 ? r : 0)}')"
}

lab__finish() {
	local rc=$?
	[ -n "$LAB_IO_PID" ] && kill "$LAB_IO_PID" 2>/dev/null
	[ -n "$LAB_DM_WATCH_PID" ] && { pkill -P "$LAB_DM_WATCH_PID"; kill "$LAB_DM_WATCH_PID"; } 2>/dev/null
	[ -n "${LAB_PROBE_PID:-}" ] && lab_probe_stop
	local pokes
	pokes=$(lab__report_text_pokes)
	[ -z "$pokes" ] || lab_event warning "kernel text patched while IO ran: $pokes; under TCG that can livelock the guest (tests/lab/README.md)"
	cp "$LAB_EVENTS" "$LAB_OUT/events.tsv" 2>/dev/null
	[ -f /tmp/labio.json ] && cp /tmp/labio.json "$LAB_OUT/labio.json"
	dmesg >"$LAB_OUT/dmesg.txt" 2>/dev/null
	exit $rc
}
trap lab__finish EXIT

lab_done() {
	lab_event step "scenario passed"
	echo "LAB-PASS $LAB_NAME"
	exit 0
}

# --- setup ---------------------------------------------------------------------------
lab_modules() {
	lab_do modprobe -a target_core_mod target_core_file target_core_iblock iscsi_target_mod iscsi_tcp sd_mod \
		dm_multipath dm_round_robin dm_queue_length dm_service_time veth sch_netem loop \
		nf_tables nft_reject_inet nft_reject_ipv4 inet_diag tcp_diag
	lab__pin_tracepoints
	lab__watch_text_pokes
}

# Every batch of live kernel text patching (text_poke_bp_batch) is recorded in a trace
# instance of its own; lab__finish says what patched text while lab_io_start's IO ran, so a
# new source of the hazard lab__target_netns describes shows up before it locks a run up.
lab__watch_text_pokes() {
	local t=/sys/kernel/tracing d=/sys/kernel/tracing/instances/lab_poke
	[ -w "$t/kprobe_events" ] || return 0
	echo 'p:lab_poke text_poke_bp_batch' >>"$t/kprobe_events" 2>/dev/null || return 0
	mkdir -p "$d" && echo 1 >"$d/events/kprobes/lab_poke/enable" || return 0
	LAB_POKE_TRACE=$d/trace
}
lab__report_text_pokes() { # after IO started: "N batches (comm xK, ...)" or nothing
	[ -n "${LAB_POKE_TRACE:-}" ] && [ -n "${LAB_POKE_SINCE:-}" ] || return 0
	awk -v since="$LAB_POKE_SINCE" '
		/^#/ { next }
		{ for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) { t = $i + 0; break } }
		t >= since { n++; c = $1; sub(/-[0-9]+$/, "", c); by[c]++ }
		END { if (n) { s = ""; for (c in by) s = s (s ? ", " : "") c " x" by[c]; printf "%d batches (%s)", n, s } }
	' "$LAB_POKE_TRACE" 2>/dev/null
}

# The tracepoints mpathd's programs attach to, each held by two probes from set-up on, so
# a daemon started, stopped or killed under IO patches no kernel text (see
# lab__target_netns for why that matters under TCG). The first probe on a tracepoint
# patches its static key and static call, the second its static call again; from two on,
# probes come and go with no patch (traced: every mpathd start and exit under IO patched
# about 20 sites before). Two trace instances with their buffers off each enable every
# event: two probes that return at once. The overhead bench sets LAB_PIN_TRACEPOINTS=0 so
# the no-daemon baseline carries no probe.
LAB_PIN_TRACEPOINTS=${LAB_PIN_TRACEPOINTS:-1}
LAB_PINNED_EVENTS="block/block_rq_issue block/block_rq_complete block/block_rq_requeue
	tcp/tcp_probe tcp/tcp_retransmit_skb tcp/tcp_receive_reset sock/inet_sock_set_state"
lab__pin_tracepoints() {
	[ "$LAB_PIN_TRACEPOINTS" = 1 ] || return 0
	local t=/sys/kernel/tracing i d e
	[ -d "$t/instances" ] || mount -t tracefs nodev "$t" || lab_fail "mounting tracefs on $t"
	for i in 1 2; do
		d=$t/instances/lab_pin$i
		mkdir -p "$d" || lab_fail "making the trace instance $d"
		echo 0 >"$d/tracing_on"
		for e in $LAB_PINNED_EVENTS; do
			echo 1 >"$d/events/$e/enable" || lab_fail "holding the tracepoint $e ($d/events/$e/enable)"
		done
	done
}

# lab_portal_link I: veth pair p<I> (root ns, 10.99.<I>.1) <-> p<I>-t (netns tgt,
# 10.99.<I>.2): the network of portal I.
lab_portal_link() {
	local i=$1
	lab_do ip link add "p$i" type veth peer name "p$i-t"
	lab_do ip link set "p$i-t" netns tgt
	ip addr add "10.99.$i.1/24" dev "p$i"
	ip link set "p$i" up
	ip -n tgt addr add "10.99.$i.2/24" dev "p$i-t"
	ip -n tgt link set "p$i-t" up
	LAB_PORTAL[i]=10.99.$i.2
}

# lab__target_netns: netns tgt, before any link or IO.
#
# Nothing may patch the kernel's text while the lab's IO runs. Under TCG a vCPU can keep
# executing a translation made while a patch site held its temporary int3, after the
# patch ended; the kernel finds no int3 in memory there, backs up to run the instruction
# again, and both vCPUs spin on that int3 for good (soft lockup, RIP at the site or in
# asm_exc_int3, memory at the site already the new instruction). Netfilter hooks are
# static keys: the first hook of a kind patches every NF_HOOK site (traced: 11 sites, 4
# text_poke_bp batches for a fault's inet table), and a fault adding the first one during
# heavy traffic livelocked both vCPUs in ip_local_deliver (daemon-failover's target reset
# once; daemon-responsive's silent loss once in 20, its setup lacking these hooks). Empty
# hooks registered now keep the keys on, so a fault's table only counts up. Modules loaded
# mid-scenario patch text too: lab_modules loads them all up front.
lab__target_netns() {
	ip link set lo up
	lab_do ip netns add tgt
	ip -n tgt link set lo up
	lab_do nsenter --net=/run/netns/tgt nft -f - <<-EOF
		table inet lab_keep_hooks {
			chain i { type filter hook input priority 0; }
			chain o { type filter hook output priority 0; }
		}
	EOF
}

# lab_target_start: netns tgt, one veth pair per portal (p<i> in the root ns at 10.99.<i>.1,
# p<i>-t in tgt at 10.99.<i>.2), an LIO target with one LUN on every portal.
lab_target_start() {
	local i C=$LAB_CFG T="$LAB_CFG/iscsi/$LAB_IQN/tpgt_1" sz=$((LAB_LUN_MB * 1048576)) bs
	lab__target_netns
	for i in $(seq "$LAB_PORTALS"); do
		lab_portal_link "$i"
	done
	truncate -s "$sz" /tmp/lun0.img
	if [ "$LAB_LUN_BACKEND" = dm ]; then
		# iblock submits bios straight to the dm device, so swapping its table to
		# `error` fails the target's IO at once (fileio would hide it in the page cache).
		local loopdev
		loopdev=$(losetup -f --show /tmp/lun0.img) || lab_fail "losetup for the LUN"
		lab_do dmsetup create lab_lun --table "0 $((sz / 512)) linear $loopdev 0"
		LAB_LUN_LOOP=$loopdev
		bs=$C/core/iblock_0/lun0
		mkdir -p "$bs"
		echo "udev_path=/dev/mapper/lab_lun" >"$bs/control"
	else
		bs=$C/core/fileio_0/lun0
		mkdir -p "$bs"
		echo "fd_dev_name=/tmp/lun0.img,fd_dev_size=$sz" >"$bs/control"
	fi
	echo 1 >"$bs/enable" || lab_fail "enabling the LIO backstore $bs"
	# Without a unit serial LIO reports no WWID and the paths cannot be grouped.
	echo "$LAB_LUN_SERIAL" >"$bs/wwn/vpd_unit_serial"
	mkdir -p "$T/lun/lun_0"
	ln -s "$bs" "$T/lun/lun_0/lun0"
	for i in $(seq "$LAB_PORTALS"); do
		# `ip netns exec` remounts /sys and hides configfs; nsenter keeps it.
		lab_do nsenter --net=/run/netns/tgt mkdir "$T/np/10.99.$i.2:3260"
	done
	echo 1 >"$T/attrib/generate_node_acls"
	echo 0 >"$T/attrib/demo_mode_write_protect"
	echo 0 >"$T/attrib/authentication"
	echo 1 >"$T/attrib/cache_dynamic_acls"
	echo 1 >"$T/enable"
	lab_event info "LIO target $LAB_IQN: $LAB_PORTALS portals, ${LAB_LUN_MB} MiB $LAB_LUN_BACKEND LUN, serial $LAB_LUN_SERIAL"
}

# lab_login: iscsid, discovery and login through every portal; fills LAB_DEV/DEVT/HCTL/SESSION.
lab_login() {
	local i s d p
	echo "InitiatorName=$LAB_INITIATOR" >/etc/iscsi/initiatorname.iscsi
	mkdir -p /run/lock/iscsi /var/lib/iscsi
	# iscsid daemonizes: keep it off lab_do's captured stdout or the capture never ends.
	iscsid </dev/null >/dev/null 2>&1 || lab_fail "iscsid did not start"
	sleep 0.3
	for i in $(seq "$LAB_PORTALS"); do
		lab_do iscsiadm -m discovery -t sendtargets -p "10.99.$i.2"
		lab_do iscsiadm -m node -T "$LAB_IQN" -p "10.99.$i.2" -o update -n node.session.timeo.replacement_timeout -v "$LAB_RECOVERY_TMO"
		lab_do iscsiadm -m node -T "$LAB_IQN" -p "10.99.$i.2" -o update -n 'node.conn[0].timeo.noop_out_interval' -v "$LAB_NOOP_INTERVAL"
		lab_do iscsiadm -m node -T "$LAB_IQN" -p "10.99.$i.2" -o update -n 'node.conn[0].timeo.noop_out_timeout' -v "$LAB_NOOP_TIMEOUT"
		lab_do iscsiadm -m node -T "$LAB_IQN" -p "10.99.$i.2" --login
	done
	for i in $(seq "$LAB_PORTALS"); do
		lab_wait 20 "the SCSI disk behind portal $i" lab__find_disk "$i"
		lab__find_disk "$i"
	done
	lab_event iscsi "logged in through $LAB_PORTALS portals (recovery_tmo=$LAB_RECOVERY_TMO noop=$LAB_NOOP_INTERVAL/$LAB_NOOP_TIMEOUT)"
}

# lab__find_disk I: the sd disk of the session whose connection goes to portal I.
lab__find_disk() {
	local i=$1 s n blk
	for s in /sys/class/iscsi_session/session*; do
		n=${s##*session}
		[ "$(cat "/sys/class/iscsi_connection/connection$n:0/persistent_address" 2>/dev/null)" = "10.99.$i.2" ] || continue
		for blk in "$s"/device/target*/*:*:*:*/block/sd*; do
			[ -e "$blk" ] || continue
			LAB_DEV[i]=${blk##*/}
			LAB_DEVT[i]=$(cat "$blk/dev")
			LAB_HCTL[i]=$(basename "$(dirname "$(dirname "$blk")")")
			LAB_SESSION[i]=session$n
			[ -b "/dev/${LAB_DEV[i]}" ] && return 0
		done
	done
	return 1
}

# lab_udev_start: systemd-udevd, with only the block and scsi subsystems triggered (a
# full coldplug costs ~25 s under TCG; this takes well under a second). Call it before
# lab_setup so the iSCSI disks get their udev properties and /dev/disk/by-id links as
# they appear. dmsetup keeps DM_DISABLE_UDEV=1: it does not wait for udev cookies.
# With LAB_UDEV_LOG=FILE its log goes to FILE (raise the level with `udevadm control
# --log-level=debug`); otherwise it would go to the kernel log, whose ring is too small.
lab_udev_start() {
	if [ -n "${LAB_UDEV_LOG:-}" ]; then
		SYSTEMD_LOG_TARGET=console SYSTEMD_LOG_COLOR=0 /lib/systemd/systemd-udevd --resolve-names=never \
			</dev/null >>"$LAB_UDEV_LOG" 2>&1 &
		lab_wait 10 "systemd-udevd to answer" udevadm control --ping
	else
		/lib/systemd/systemd-udevd --daemon --resolve-names=never >/dev/null 2>&1 || lab_fail "systemd-udevd did not start"
	fi
	lab_do udevadm trigger --action=add --subsystem-match=block --subsystem-match=scsi
	lab_do udevadm settle --timeout=30
	lab_event info "systemd-udevd running (block and scsi triggered)"
}

# lab_setup: modules, target, login; the usual first step of a scenario.
lab_setup() {
	lab_step "setup: modules, LIO target, iSCSI login"
	lab_modules
	lab_target_start
	lab_login
	local i w0 w
	w0=$(cat "/sys/block/${LAB_DEV[1]}/device/wwid")
	for i in $(seq "$LAB_PORTALS"); do
		w=$(cat "/sys/block/${LAB_DEV[i]}/device/wwid")
		[ "$w" = "$w0" ] || lab_fail "path $i (${LAB_DEV[i]}) has WWID $w, path 1 has $w0"
	done
}

# lab_map [failover|multibus] [queue]: a dm multipath map over all paths, made with dmsetup.
# failover: one path per priority group, path 1 first; multibus: one group with all paths.
# queue: feature queue_if_no_path (IO waits instead of failing when every path is down).
lab_map() {
	local policy=${1:-failover} queue=${2:-} feat="0" sz i table
	[ "$queue" = queue ] && feat="1 queue_if_no_path"
	sz=$(blockdev --getsz "/dev/${LAB_DEV[1]}") || lab_fail "reading the size of /dev/${LAB_DEV[1]}"
	case $policy in
	failover)
		table="0 $sz multipath $feat 0 $LAB_PORTALS 1"
		for i in $(seq "$LAB_PORTALS"); do table+=" round-robin 0 1 1 ${LAB_DEVT[i]} 1"; done
		;;
	multibus)
		table="0 $sz multipath $feat 0 1 1 round-robin 0 $LAB_PORTALS 1"
		for i in $(seq "$LAB_PORTALS"); do table+=" ${LAB_DEVT[i]} 1"; done
		;;
	*) lab_fail "unknown map policy '$policy' (failover or multibus)" ;;
	esac
	lab_do dmsetup create "$LAB_MAP" --table "$table"
	lab_wait 5 "/dev/mapper/$LAB_MAP" test -b "/dev/mapper/$LAB_MAP"
	lab_event dm "map $LAB_MAP created ($policy${queue:+, queue_if_no_path})"
}

# lab_topology: the map as `multipath -ll` would print it.
lab_topology() {
	local i st pg=0 w
	w=$(cat "/sys/block/${LAB_DEV[1]}/device/wwid")
	echo "$LAB_MAP ($w) dm-$(dmsetup info -c --noheadings -o minor "$LAB_MAP" | tr -d ' ') $(cat "/sys/block/${LAB_DEV[1]}/device/vendor" | tr -d ' '),$(cat "/sys/block/${LAB_DEV[1]}/device/model" | tr -d ' ')"
	echo "size=$(($(blockdev --getsize64 "/dev/mapper/$LAB_MAP") / 1048576))M features='$(dmsetup table "$LAB_MAP" | awk '{n=$4; s=""; for(i=5;i<5+n;i++) s=s (s?" ":"") $i; print n (s?" " s:"")}')'"
	st=$(dmsetup status "$LAB_MAP")
	for i in $(seq "$LAB_PORTALS"); do
		echo "  path $i: ${LAB_HCTL[i]} ${LAB_DEV[i]} ${LAB_DEVT[i]} portal ${LAB_PORTAL[i]}:3260 ${LAB_SESSION[i]} dm=$(lab_dm_path_state "$i") sd=$(cat "/sys/block/${LAB_DEV[i]}/device/state") session=$(cat "/sys/class/iscsi_session/${LAB_SESSION[i]}/state")"
	done
	echo "  dmsetup table:  $(dmsetup table "$LAB_MAP")"
	echo "  dmsetup status: $st"
	: "$pg"
}

# lab_dm_path_state I: A or F for path I in `dmsetup status`.
lab_dm_path_state() {
	dmsetup status "$LAB_MAP" | grep -oE "${LAB_DEVT[$1]} [AF]" | awk '{print $2}'
}

lab_expect_dm() { # lab_expect_dm I A|F
	local s
	s=$(lab_dm_path_state "$1")
	[ "$s" = "$2" ] || lab_fail "dm path $1 (${LAB_DEV[$1]} ${LAB_DEVT[$1]}) is '$s' in dmsetup status, expected $2: $(dmsetup status "$LAB_MAP")"
}

lab_wait_dm() { # lab_wait_dm I A|F SECONDS
	lab_wait "$3" "dm path $1 to be $2" lab__dm_is "$1" "$2"
}
lab__dm_is() { [ "$(lab_dm_path_state "$1")" = "$2" ]; }

# lab_dm_watch_start: logs every path state change of the map on the timeline. It sleeps
# in `dmsetup wait` (dm raises an event when multipath fails or reinstates a path) and
# stamps a change with the wake-up time, so the timeline is not late by a poll interval
# or by dmsetup's start-up time under TCG.
lab_dm_watch_start() {
	(
		declare -A prev=()
		t=$EPOCHREALTIME
		while :; do
			# Event number first: a change after this read makes the wait return at once.
			ev=$(dmsetup info -c --noheadings -o events "$LAB_MAP" 2>/dev/null | tr -d ' ')
			st=$(dmsetup status "$LAB_MAP" 2>/dev/null)
			# Path entries are "<maj:min> <A|F> <fail count>".
			while read -r dev state fails; do
				[ -n "$dev" ] || continue
				if [ "${prev[$dev]:-}" != "$state" ]; then
					[ -n "${prev[$dev]:-}" ] && lab_event_at "$t" dm "path $(lab__path_name "$dev") ${prev[$dev]} -> $state (fail count $fails) in dmsetup status"
					prev[$dev]=$state
				fi
			done < <(grep -oE '[0-9]+:[0-9]+ [AF] [0-9]+' <<<"$st")
			# The timeout is only a safety net should an event ever be missed.
			timeout 5 dmsetup wait "$LAB_MAP" "${ev:-0}" >/dev/null 2>&1 || sleep "$LAB_DM_POLL"
			t=$EPOCHREALTIME
		done
	) &
	LAB_DM_WATCH_PID=$!
}
lab__path_name() {
	local i
	for i in $(seq "$LAB_PORTALS"); do
		[ "${LAB_DEVT[i]}" = "$1" ] && { echo "$i (${LAB_DEV[i]} $1, portal ${LAB_PORTAL[i]})"; return; }
	done
	echo "$1"
}

lab_reinstate() { # lab_reinstate I: dm reinstate_path (what a daemon does once the path works)
	lab_do dmsetup message "$LAB_MAP" 0 reinstate_path "${LAB_DEVT[$1]}"
	lab_event dm "reinstate_path ${LAB_DEV[$1]} ${LAB_DEVT[$1]} sent"
}

lab_wait_session() { # lab_wait_session I SECONDS: until the session is LOGGED_IN again
	lab_wait "$2" "session ${LAB_SESSION[$1]} (portal $1) to be LOGGED_IN" \
		grep -qx LOGGED_IN "/sys/class/iscsi_session/${LAB_SESSION[$1]}/state"
	lab_event iscsi "session ${LAB_SESSION[$1]} (portal $1) LOGGED_IN"
}

# --- verified IO -----------------------------------------------------------------------
lab_io_start() { # lab_io_start [DEV]: labio in the background until lab_io_stop
	local dev=${1:-/dev/mapper/$LAB_MAP}
	rm -f /tmp/labio.stop /tmp/labio.json
	"$LABIO" --dev "$dev" --blocks "$LAB_IO_BLOCKS" --workers "$LAB_IO_WORKERS" \
		--stop-file /tmp/labio.stop --out /tmp/labio.json --progress 5 &
	LAB_IO_PID=$!
	[ -n "${LAB_POKE_SINCE:-}" ] || LAB_POKE_SINCE=$(cut -d' ' -f1 /proc/uptime)
	lab_event io "verified IO started on $dev ($LAB_IO_WORKERS workers, $LAB_IO_BLOCKS blocks)"
}

lab_io_stop() { # lab_io_stop [SECONDS]: stop the load, wait for the verify pass
	local rc
	touch /tmp/labio.stop
	lab_event io "stop requested"
	lab_wait "${1:-120}" "labio to finish (IO hung?)" lab__io_exited
	wait "$LAB_IO_PID"
	rc=$?
	LAB_IO_PID=
	[ -f /tmp/labio.json ] || lab_fail "labio exited with $rc and wrote no report"
	lab_event io "verifier finished (exit $rc)"
	# The longest stall goes on the timeline: it lines up with the fault events.
	python3 - "$LAB_EVENTS" "$LAB_T0" <<-'PY'
		import json, sys
		r = json.load(open("/tmp/labio.json"))
		s = r["longest_stall"]
		ev = [(s["start"], "longest IO stall begins (last IO completion before it)"),
		      (s["end"], "IO resumed after the longest stall (%.3f s)" % s["seconds"])]
		with open(sys.argv[1], "a") as f:
		    for t, msg in ev:
		        f.write("%.6f\tio\t%s\n" % (t, msg))
		        print("[lab +%.3fs] io: %s" % (t - float(sys.argv[2]), msg))
	PY
}
lab__io_exited() { ! kill -0 "$LAB_IO_PID" 2>/dev/null; }

# lab_io_check [errors=N | min_errors=N] [verify_errors=N] [mismatches=N] [min_ops=N] [max_stall=S] [min_stall=S] [resumed=1]
# Defaults: errors=0 mismatches=0 min_ops=1.
lab_io_check() {
	python3 - "$@" <<-'PY' || lab_fail "verifier check failed (see above; labio.json in the output dir)"
		import json, sys
		r = json.load(open("/tmp/labio.json"))
		want = {"errors": "0", "mismatches": "0", "min_ops": "1"}
		want.update(a.split("=", 1) for a in sys.argv[1:])
		s = r["longest_stall"]
		print("verifier: ops=%d (reads %d, writes %d) verify_reads=%d io_errors=%d (%d in verify) mismatches=%d "
		      "latency p50=%.1fms p99=%.1fms max=%.1fms longest_stall=%.3fs"
		      % (r["ops"], r["reads"], r["writes"], r["verify_reads"], r["io_errors"]["count"], r["io_errors"]["in_verify"],
		         r["mismatches"]["count"], r["latency_ms"]["p50"], r["latency_ms"]["p99"],
		         r["latency_ms"]["max"], s["seconds"]))
		bad = []
		if "min_errors" in want:
		    if r["io_errors"]["count"] < int(want["min_errors"]):
		        bad.append("IO errors seen by the application: %d, expected at least %s"
		                   % (r["io_errors"]["count"], want["min_errors"]))
		elif r["io_errors"]["count"] != int(want["errors"]):
		    bad.append("IO errors seen by the application: %d, expected %s; first: %s"
		               % (r["io_errors"]["count"], want["errors"], r["io_errors"]["first"][:3]))
		if "verify_errors" in want and r["io_errors"]["in_verify"] != int(want["verify_errors"]):
		    bad.append("%d blocks could not be re-read in the verify pass, expected %s"
		               % (r["io_errors"]["in_verify"], want["verify_errors"]))
		if r["mismatches"]["count"] != int(want["mismatches"]):
		    bad.append("data mismatches: %d, expected %s; first: %s"
		               % (r["mismatches"]["count"], want["mismatches"], r["mismatches"]["first"][:3]))
		if r["ops"] < int(want["min_ops"]):
		    bad.append("only %d IOs completed, expected at least %s" % (r["ops"], want["min_ops"]))
		if "max_stall" in want and s["seconds"] > float(want["max_stall"]):
		    bad.append("longest stall %.3f s > %s s" % (s["seconds"], want["max_stall"]))
		if "min_stall" in want and s["seconds"] < float(want["min_stall"]):
		    bad.append("longest stall %.3f s < %s s: the fault did not stop IO" % (s["seconds"], want["min_stall"]))
		if want.get("resumed") == "1" and s["end"] >= r["end"] - 0.2:
		    bad.append("IO never resumed after the longest stall (it lasted until the load stopped)")
		for b in bad:
		    print("verifier: FAIL: " + b)
		sys.exit(1 if bad else 0)
	PY
}

# --- faults (I = portal number) --------------------------------------------------------
lab_link_down() { lab_do ip link set "p$1" down; lab_event fault "link p$1 (portal $1) down"; }
lab_link_up() {
	lab__target_forgets "$1"
	lab_do ip link set "p$1" up
	lab_event restore "link p$1 (portal $1) up"
}

# The target must have dropped a connection the fault cut before the initiator logs in
# again: LIO (6.1) reinstating a session whose old connection it still holds open spins
# its transmit thread and a kworker forever (soft lockups on both vCPUs, seen in the lab
# with mpathd's probes not even loaded). A real array's port drops such a connection on
# its own NOP-In timeout; the lab's LIO takes its NOP-In settings from node ACLs it does
# not have (generate_node_acls), so the restore closes the target's side itself, while
# the fault still hides that from the initiator.
lab__target_forgets() { # lab__target_forgets I: the target's connections to path I closed
	nsenter --net=/run/netns/tgt ss -K -t state established src "10.99.$1.2" dst "10.99.$1.1" >/dev/null 2>&1
	lab_wait 20 "the target to close its connection to portal $1's initiator" lab__no_target_conn "$1"
}
lab__no_target_conn() {
	[ -z "$(nsenter --net=/run/netns/tgt ss -Htn state established src "10.99.$1.2" dst "10.99.$1.1" 2>/dev/null)" ]
}

# Silent loss: drop the portal's traffic both ways, no RST, no link change.
lab_drop() {
	lab_do nft -f - <<-EOF
		table inet lab_drop_$1 {
			chain o { type filter hook output priority 0; ip daddr 10.99.$1.2 drop; }
			chain i { type filter hook input priority 0; ip saddr 10.99.$1.2 drop; }
		}
	EOF
	lab_event fault "nft drop both ways on portal $1 (silent loss)"
}
lab_undrop() {
	lab__target_forgets "$1"
	lab_do nft delete table inet "lab_drop_$1"
	lab_event restore "nft drop on portal $1 removed"
}

# Silent loss in the network: the portal's namespace drops the traffic both ways, so the
# initiator's segments leave it normally and vanish, as behind a dead switch. (A drop on
# the initiator's own output hook instead fails each retransmission locally with EPERM,
# which the kernel does not trace as a retransmission.)
lab_drop_net() {
	local t=$EPOCHREALTIME
	lab_do nsenter --net=/run/netns/tgt nft -f - <<-EOF
		table inet lab_drop_net_$1 {
			chain i { type filter hook input priority 0; ip saddr 10.99.$1.1 drop; }
			chain o { type filter hook output priority 0; ip daddr 10.99.$1.1 drop; }
		}
	EOF
	# Stamped before the command: under TCG nft takes long enough to matter.
	lab_event_at "$t" fault "nft drop both ways in the target's namespace for portal $1 (silent loss in the network)"
}
lab_undrop_net() {
	lab__target_forgets "$1"
	lab_do nsenter --net=/run/netns/tgt nft delete table inet "lab_drop_net_$1"
	lab_event restore "network drop on portal $1 removed"
}

# TCP reset from the target side: reject new segments with RST and kill the target's socket.
lab_tcp_reset() {
	local t=$EPOCHREALTIME
	lab_do nsenter --net=/run/netns/tgt nft -f - <<-EOF
		table inet lab_rst_$1 {
			chain i { type filter hook input priority 0; ip saddr 10.99.$1.1 tcp dport 3260 reject with tcp reset; }
		}
	EOF
	nsenter --net=/run/netns/tgt ss -K -t dst "10.99.$1.1" >/dev/null 2>&1
	lab_event_at "$t" fault "target-side TCP reset on portal $1 (RST + socket killed)"
}
lab_tcp_reset_clear() {
	lab_do nsenter --net=/run/netns/tgt nft delete table inet "lab_rst_$1"
	lab_event restore "TCP reset rule on portal $1 removed"
}

lab_netem() { # lab_netem I "delay 200ms loss 5%"
	local i=$1
	shift
	# shellcheck disable=SC2086 # the netem spec is several words on purpose
	lab_do tc qdisc replace dev "p$i" root netem $*
	lab_event fault "netem on p$i: $*"
}
lab_netem_clear() { lab_do tc qdisc del dev "p$1" root; lab_event restore "netem on p$1 removed"; }

# Target-side LUN errors (needs LAB_LUN_BACKEND=dm): every IO to the LUN fails.
lab_lun_error() {
	[ "$LAB_LUN_BACKEND" = dm ] || lab_fail "lab_lun_error needs LAB_LUN_BACKEND=dm before lab_setup"
	lab_do dmsetup suspend --noflush lab_lun
	lab_do dmsetup load lab_lun --table "0 $((LAB_LUN_MB * 2048)) error"
	lab_do dmsetup resume lab_lun
	lab_event fault "target LUN now fails every IO (dm error table)"
}
lab_lun_ok() {
	lab_do dmsetup suspend --noflush lab_lun
	lab_do dmsetup load lab_lun --table "0 $((LAB_LUN_MB * 2048)) linear $LAB_LUN_LOOP 0"
	lab_do dmsetup resume lab_lun
	lab_event restore "target LUN back to its data (dm linear table)"
}

lab_sdev_offline() { echo offline >"/sys/block/${LAB_DEV[$1]}/device/state" || lab_fail "offlining ${LAB_DEV[$1]}"; lab_event fault "SCSI device ${LAB_DEV[$1]} (path $1) offline"; }
lab_sdev_running() { echo running >"/sys/block/${LAB_DEV[$1]}/device/state" || lab_fail "onlining ${LAB_DEV[$1]}"; lab_event restore "SCSI device ${LAB_DEV[$1]} (path $1) running"; }

# --- mpathd's eBPF probes ----------------------------------------------------------------
# lab_probe_start [ARGS...]: `mpathd probe --json ARGS` on every path's sd device in the
# background (and, through sysfs, on each one's iSCSI connection). Events go to
# $LAB_OUT/probe.jsonl as the kernel reports them; lab_probe_stop puts them on the
# timeline (kind ebpf) at the time the kernel saw them.
LAB_PROBE_PID=
lab_probe_start() {
	local devs=() i
	for i in $(seq "$LAB_PORTALS"); do devs+=("/dev/${LAB_DEV[i]}"); done
	: "${MPATHD:?MPATHD is set by the harness (cargo xtask lab run)}"
	"$MPATHD" probe --json "$@" "${devs[@]}" >"$LAB_OUT/probe.jsonl" 2>"$LAB_OUT/probe.log" &
	LAB_PROBE_PID=$!
	lab_wait 30 "mpathd probe to attach (see probe.log)" lab__probe_ready
	lab_event mpathd "mpathd probe watching ${devs[*]} and their iSCSI connections"
}
lab__probe_ready() {
	kill -0 "$LAB_PROBE_PID" 2>/dev/null || lab_fail "mpathd probe exited: $(tail -3 "$LAB_OUT/probe.log")"
	[ "$(grep -c 'watching iSCSI connection' "$LAB_OUT/probe.log")" -ge "$LAB_PORTALS" ]
}

lab_probe_stop() {
	[ -n "$LAB_PROBE_PID" ] || return 0
	kill -TERM "$LAB_PROBE_PID" 2>/dev/null
	wait "$LAB_PROBE_PID"
	LAB_PROBE_PID=
	python3 - "$LAB_OUT/probe.jsonl" "$LAB_EVENTS" <<-'PY'
		import json, sys
		with open(sys.argv[2], "a") as out:
		    for line in open(sys.argv[1]):
		        e = json.loads(line)
		        if "kind" not in e:
		            continue  # the per-device summary printed on exit
		        skip = {"wall", "mono_ns", "device", "dev", "kind", "lag_us"}
		        detail = " ".join("%s=%s" % (k, v) for k, v in e.items() if k not in skip)
		        out.write("%.6f\tebpf\t%s %s %s\n" % (e["wall"], e["device"], e["kind"], detail))
	PY
	lab_event mpathd "mpathd probe stopped ($(grep -c '"kind"' "$LAB_OUT/probe.jsonl") events)"
}

# lab_probe_wait KIND I SINCE SECONDS: until the probe reports KIND (io_error, slow,
# stalled, tcp_reset, tcp_retransmits, ...) for path I at or after epoch SINCE. Prints
# how long after SINCE the kernel saw it.
lab_probe_wait() {
	local kind=$1 i=$2 since=$3 secs=$4
	lab_wait "$secs" "an mpathd $kind event for ${LAB_DEV[$i]}" lab__probe_has "$kind" "${LAB_DEV[$i]}" "$since"
	lab__probe_has "$kind" "${LAB_DEV[$i]}" "$since" print
}
lab__probe_has() {
	python3 - "$LAB_OUT/probe.jsonl" "$@" <<-'PY'
		import json, sys
		path, kind, dev, since = sys.argv[1:5]
		for line in open(path):
		    e = json.loads(line)
		    if e.get("kind") == kind and e["device"] == dev and e["wall"] >= float(since):
		        if len(sys.argv) > 5:
		            print("probe: %s %s %.3f s after the fault" % (dev, kind, e["wall"] - float(since)))
		        sys.exit(0)
		sys.exit(1)
	PY
}

# lab_probe_none I SINCE [UNTIL [KIND,KIND...]]: fail if the probe reported anything (or
# any of these kinds) for path I in between.
lab_probe_none() {
	python3 - "$LAB_OUT/probe.jsonl" "${LAB_DEV[$1]}" "$2" "${3:-1e12}" "${4:-}" <<-'PY' || lab_fail "path $1 had events it should not have"
		import json, sys
		path, dev, since, until = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
		kinds = set(filter(None, sys.argv[5].split(",")))
		evs = [json.loads(l) for l in open(path) if '"kind"' in l]
		bad = [e for e in evs if e["device"] == dev and since <= e["wall"] <= until
		       and (not kinds or e["kind"] in kinds)]
		for b in bad:
		    print("probe: unexpected event: " + json.dumps(b))
		sys.exit(1 if bad else 0)
	PY
}

# --- many LUNs (benchmarks) ------------------------------------------------------------------
# A target with many small LUNs, each with its own WWID, mapped on every portal. Not used by
# lab_setup: the scenarios keep their one fileio LUN; the start-up benchmark uses these.
: "${LAB_LUNS_SERIAL_PREFIX:=6001405be0c4}" # + 13 hex digits of the LUN number: 25 hex digits, one WWID per LUN

# lab_target_start_luns N [MB]: like lab_target_start, but N rd_mcp (RAM) LUNs of MB MiB
# (default 1) as lun_0..lun_<N-1> of one TPG, so every session sees all N. One python3 run
# does the configfs work (a fork per mkdir/ln costs seconds under TCG for 128 LUNs).
lab_target_start_luns() {
	local n=$1 mb=${2:-1} i T="$LAB_CFG/iscsi/$LAB_IQN/tpgt_1"
	lab__target_netns
	for i in $(seq "$LAB_PORTALS"); do
		lab_portal_link "$i"
	done
	python3 - "$LAB_CFG" "$T" "$n" "$mb" "$LAB_LUNS_SERIAL_PREFIX" <<-'PY' || lab_fail "configuring $n LIO LUNs"
		import os, sys
		cfg, tpg, n, mb, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
		def put(path, value):
		    with open(path, "w") as f:
		        f.write(value)
		for i in range(n):
		    bs = "%s/core/rd_mcp_0/lun%d" % (cfg, i)
		    os.makedirs(bs)
		    put(bs + "/control", "rd_pages=%d" % (mb * 256))
		    put(bs + "/enable", "1")
		    # Without a unit serial LIO reports no WWID; its NAA takes the first 25 hex digits.
		    put(bs + "/wwn/vpd_unit_serial", "%s%013x" % (prefix, i))
		    os.makedirs("%s/lun/lun_%d" % (tpg, i))
		    os.symlink(bs, "%s/lun/lun_%d/lun%d" % (tpg, i, i))
	PY
	for i in $(seq "$LAB_PORTALS"); do
		lab_do nsenter --net=/run/netns/tgt mkdir "$T/np/10.99.$i.2:3260"
	done
	echo 1 >"$T/attrib/generate_node_acls"
	echo 0 >"$T/attrib/demo_mode_write_protect"
	echo 0 >"$T/attrib/authentication"
	echo 1 >"$T/attrib/cache_dynamic_acls"
	echo 1 >"$T/enable"
	lab_event info "LIO target $LAB_IQN: $LAB_PORTALS portals, $n rd_mcp LUNs of $mb MiB, serials $LAB_LUNS_SERIAL_PREFIX<13 hex digits>"
}

lab_sd_count() { # lab_sd_count: how many sd disks the guest has (a glob, no fork)
	local d=(/sys/block/sd*)
	[ -e "${d[0]}" ] && echo "${#d[@]}" || echo 0
}

# lab_wait_disks N SECONDS: until the guest has N sd disks with their /dev nodes.
lab_wait_disks() {
	lab_wait "$2" "$1 SCSI disks" lab__disks_at_least "$1"
}
lab__disks_at_least() {
	local b
	[ "$(lab_sd_count)" -ge "$1" ] || return 1
	for b in /sys/block/sd*; do [ -b "/dev/${b##*/}" ] || return 1; done
}

# lab_login_all: like lab_login with fewer commands (each costs a second or two under TCG):
# the timeouts go into iscsid.conf, one discovery through portal 1 finds every portal, one
# iscsiadm logs in to all of them at once. Fills LAB_DEV/DEVT/HCTL/SESSION from a disk of
# each session (with many LUNs, any one of them).
lab_login_all() {
	local i
	echo "InitiatorName=$LAB_INITIATOR" >/etc/iscsi/initiatorname.iscsi
	sed -i -e "s/^node.session.timeo.replacement_timeout = .*/node.session.timeo.replacement_timeout = $LAB_RECOVERY_TMO/" \
		-e "s/^node.conn\[0\].timeo.noop_out_interval = .*/node.conn[0].timeo.noop_out_interval = $LAB_NOOP_INTERVAL/" \
		-e "s/^node.conn\[0\].timeo.noop_out_timeout = .*/node.conn[0].timeo.noop_out_timeout = $LAB_NOOP_TIMEOUT/" \
		/etc/iscsi/iscsid.conf
	mkdir -p /run/lock/iscsi /var/lib/iscsi
	iscsid </dev/null >/dev/null 2>&1 || lab_fail "iscsid did not start"
	sleep 0.3
	lab_do iscsiadm -m discovery -t sendtargets -p 10.99.1.2
	lab_do iscsiadm -m node -T "$LAB_IQN" --login
	for i in $(seq "$LAB_PORTALS"); do
		lab_wait 60 "a SCSI disk behind portal $i" lab__find_disk "$i"
		lab__find_disk "$i"
	done
	lab_event iscsi "logged in through $LAB_PORTALS portals at once (recovery_tmo=$LAB_RECOVERY_TMO noop=$LAB_NOOP_INTERVAL/$LAB_NOOP_TIMEOUT)"
}

# lab_setup_luns N [MB]: modules, a target with N LUNs (lab_target_start_luns), login
# through every portal (one session per portal, each seeing all N LUNs), then waits for the
# N x LAB_PORTALS disks and, if udevd runs (lab_udev_start), for udev to settle.
lab_setup_luns() {
	local n=$1 mb=${2:-1}
	lab_step "setup: modules, LIO target with $n LUNs, iSCSI login"
	lab_modules
	lab_target_start_luns "$n" "$mb"
	lab_login_all
	lab_wait_disks $((n * LAB_PORTALS)) 600
	pidof systemd-udevd >/dev/null && lab_do udevadm settle --timeout=600
	lab_event iscsi "$((n * LAB_PORTALS)) SCSI disks ($n LUNs x $LAB_PORTALS portals)"
}

# --- ALUA: one target port group per portal ---------------------------------------------
# LIO keeps ALUA port groups on the backstore (core/<hba>/<dev>/alua/<group>) and each
# iSCSI TPG's LUN is a member of one. A TPG of its own per portal gives each path its own
# port group, as an array's two controllers do; the states are then set per portal.
: "${LAB_ALUA_TYPE:=1}"          # alua_access_type: 1 implicit (the target alone moves its
                                 # states: the initiator's handler sends no SET TARGET PORT
                                 # GROUPS), 3 implicit and explicit
: "${LAB_ALUA_NONOP_DELAY_MS:=0}" # LIO delays each command on a non-optimized port by this
                                 # (100 ms by default, far beyond an array's proxy cost:
                                 # 0 keeps the health engine's latency rules out of it)

lab__backstore() { # the LUN's backstore dir in configfs
	if [ "$LAB_LUN_BACKEND" = dm ]; then echo "$LAB_CFG/core/iblock_0/lun0"; else echo "$LAB_CFG/core/fileio_0/lun0"; fi
}

# lab_alua_tpgs: after lab_target_start, before the login. Portal i > 1 moves from
# tpgt_1 to a TPG of its own, tpgt_i, exporting the same LUN; port group pg<i> (id i) is
# made for TPG i's LUN, active/optimized until lab_alua_set says otherwise.
lab_alua_tpgs() {
	local i T G bs T1="$LAB_CFG/iscsi/$LAB_IQN/tpgt_1"
	bs=$(lab__backstore)
	for i in $(seq 2 "$LAB_PORTALS"); do
		T="$LAB_CFG/iscsi/$LAB_IQN/tpgt_$i"
		lab_do nsenter --net=/run/netns/tgt rmdir "$T1/np/10.99.$i.2:3260"
		lab_do mkdir "$T"
		lab_do nsenter --net=/run/netns/tgt mkdir "$T/np/10.99.$i.2:3260"
		lab_do mkdir -p "$T/lun/lun_0"
		lab_do ln -s "$bs" "$T/lun/lun_0/lun0"
		echo 1 >"$T/attrib/generate_node_acls"
		echo 0 >"$T/attrib/demo_mode_write_protect"
		echo 0 >"$T/attrib/authentication"
		echo 1 >"$T/attrib/cache_dynamic_acls"
		echo 1 >"$T/enable" || lab_fail "enabling $T"
	done
	for i in $(seq "$LAB_PORTALS"); do
		G=$bs/alua/pg$i
		lab_do mkdir "$G"
		echo "$i" >"$G/tg_pt_gp_id" || lab_fail "setting the id of port group $G"
		echo "$LAB_ALUA_TYPE" >"$G/alua_access_type" || lab_fail "setting the access type of $G"
		echo "$LAB_ALUA_NONOP_DELAY_MS" >"$G/nonop_delay_msecs" || lab_fail "setting nonop_delay_msecs of $G"
		echo "pg$i" >"$LAB_CFG/iscsi/$LAB_IQN/tpgt_$i/lun/lun_0/alua_tg_pt_gp" ||
			lab_fail "putting TPG $i's LUN into port group pg$i"
	done
	lab_event info "LIO: one TPG and ALUA port group per portal (pg1..pg$LAB_PORTALS, access type $LAB_ALUA_TYPE, nonop delay ${LAB_ALUA_NONOP_DELAY_MS} ms)"
}

# lab_alua_set I STATE: the target sets port group pg<I> (portal I) to STATE
# (active/optimized, active/non-optimized, standby, unavailable, transitioning), as an
# array moving its ports does; each I_T nexus of the group gets a unit attention.
lab_alua_set() {
	local i=$1 code
	case $2 in
	active/optimized) code=0 ;;
	active/non-optimized) code=1 ;;
	standby) code=2 ;;
	unavailable) code=3 ;;
	transitioning) code=15 ;;
	*) lab_fail "lab_alua_set: unknown ALUA state '$2'" ;;
	esac
	echo "$code" >"$(lab__backstore)/alua/pg$i/alua_access_state" || lab_fail "LIO refused ALUA state $2 for port group pg$i"
	LAB_ALUA_AT=$EPOCHREALTIME # when the target had it (events are late by a fork or two under TCG)
	lab_event_at "$LAB_ALUA_AT" fault "target port group pg$i (portal $i): ALUA $2"
}

# lab_setup_alua STATE...: like lab_setup, with one ALUA port group per portal in the
# given states (path 1's first). scsi_dh_alua is loaded before the login: the kernel
# attaches the handler, and shows access_state, only for disks that appear after it (as
# on hosts that load it from the initramfs).
lab_setup_alua() {
	local i w0 w st
	lab_step "setup: modules, LIO target with one ALUA port group per portal, iSCSI login"
	lab_modules
	lab_do modprobe scsi_dh_alua
	lab_target_start
	lab_alua_tpgs
	for i in $(seq "$#"); do lab_alua_set "$i" "${!i}"; done
	lab_login
	w0=$(cat "/sys/block/${LAB_DEV[1]}/device/wwid")
	for i in $(seq "$LAB_PORTALS"); do
		w=$(cat "/sys/block/${LAB_DEV[i]}/device/wwid")
		[ "$w" = "$w0" ] || lab_fail "path $i (${LAB_DEV[i]}) has WWID $w, path 1 has $w0"
		st=$(cat "/sys/block/${LAB_DEV[i]}/device/access_state" 2>/dev/null) ||
			lab_fail "path $i (${LAB_DEV[i]}) has no access_state: the ALUA handler is not attached"
		lab_event info "path $i (${LAB_DEV[i]}, portal $i): access_state $st, preferred_path $(cat "/sys/block/${LAB_DEV[i]}/device/preferred_path")"
	done
}

# lab_path_io I: "READS WRITES" completed on path I's sd device so far (what iostat reads).
lab_path_io() {
	awk '{print $1, $5}' "/sys/block/${LAB_DEV[$1]}/stat"
}
