# Guest-side helpers for scenarios where mpathd itself builds and keeps the maps.
# Source after lib.sh:
#   . "$LAB_LIB"; . "${LAB_LIB%/*}/daemon.sh"
# The daemon runs in the foreground in the background of the scenario, logging to
# $LAB_OUT/mpathd.log; its control socket is $LAB_SOCK.

LAB_SOCK=/run/mpathd-lab.sock
LAB_MPATHD_PID=
LAB_MPATHD_CONF=/tmp/mpathd.toml
LAB_MPATHD_STATE=/tmp/mpathd-state

# lab_mpathd_config EXTRA_TOML: a config with the lab's state files, the seed's alias for
# the lab LUN (sanvol1) unless LAB_NO_ALIAS=1, and EXTRA_TOML appended to [defaults]
# (give later tables after it).
lab_mpathd_config() {
	mkdir -p "$LAB_MPATHD_STATE"
	# Read once, in this shell: path 1 may be logged out later.
	[ -n "$LAB_WWID" ] || LAB_WWID=$(lab_wwid)
	{
		echo "[defaults]"
		echo "bindings_file = \"$LAB_MPATHD_STATE/bindings\""
		echo "wwids_file = \"$LAB_MPATHD_STATE/wwids\""
		printf '%s\n' "${1:-}"
		if [ "${LAB_NO_ALIAS:-0}" != 1 ]; then
			echo "[[multipaths]]"
			echo "wwid = \"$LAB_WWID\""
			echo "alias = \"sanvol1\""
		fi
	} >"$LAB_MPATHD_CONF"
	cp "$LAB_MPATHD_CONF" "$LAB_OUT/mpathd.toml"
	"$MPATHD" check-config "$LAB_MPATHD_CONF" || lab_fail "the lab's mpathd config does not check"
}

# The LUN's WWID as scsi_id prints it (3 + naa id).
LAB_WWID=
lab_wwid() {
	local w
	w=${LAB_WWID:-$(/lib/udev/scsi_id -g -u "/dev/${LAB_DEV[1]}")}
	[ -n "$w" ] || lab_fail "no WWID for /dev/${LAB_DEV[1]}"
	echo "$w"
}

# lab_mpathd_start: start the daemon and wait for its "ready" line. LAB_MPATHD_ARGS: more
# `mpathd daemon` options (word-split).
lab_mpathd_start() {
	local log=$LAB_OUT/mpathd.log n
	n=$(grep -c 'ready maps=' "$log" 2>/dev/null)
	# shellcheck disable=SC2086 # LAB_MPATHD_ARGS is several options on purpose
	MPATHD_LOG=${MPATHD_LOG:-info,mpathd=debug} "$MPATHD" --socket "$LAB_SOCK" daemon --config "$LAB_MPATHD_CONF" \
		--check-secs "${LAB_CHECK_SECS:-1}" ${LAB_MPATHD_ARGS:-} >>"$log" 2>&1 &
	LAB_MPATHD_PID=$!
	lab_event mpathd "daemon started (pid $LAB_MPATHD_PID)"
	lab_wait 60 "mpathd's ready line" lab__mpathd_ready "${n:-0}"
	lab_event mpathd "$(grep 'ready maps=' "$log" | tail -1 | sed 's/.*ready/ready/')"
}
lab__mpathd_ready() {
	kill -0 "$LAB_MPATHD_PID" 2>/dev/null || lab_fail "mpathd exited (see mpathd.log): $(tail -3 "$LAB_OUT/mpathd.log")"
	[ "$(grep -c 'ready maps=' "$LAB_OUT/mpathd.log")" -gt "$1" ]
}

# lab_mpathd_stop: SIGTERM, and wait for it to exit.
lab_mpathd_stop() {
	[ -n "$LAB_MPATHD_PID" ] || return 0
	kill -TERM "$LAB_MPATHD_PID"
	lab_wait 20 "mpathd to exit" lab__mpathd_gone
	wait "$LAB_MPATHD_PID" 2>/dev/null
	LAB_MPATHD_PID=
	lab_event mpathd "daemon stopped"
}
lab__mpathd_gone() { ! kill -0 "$LAB_MPATHD_PID" 2>/dev/null; }
lab__gone() { ! kill -0 "$1" 2>/dev/null; }

# lab_mpathd_kill: SIGKILL, as a crash: no clean-up of any kind.
lab_mpathd_kill() {
	[ -n "$LAB_MPATHD_PID" ] || return 0
	kill -KILL "$LAB_MPATHD_PID"
	wait "$LAB_MPATHD_PID" 2>/dev/null
	LAB_MPATHD_PID=
	lab_event mpathd "daemon killed (SIGKILL)"
}

# On a failure, mpathd's view of the paths and its last decisions go to the console:
# CI keeps only the tail of its output, and that has to say why.
lab__on_fail() {
	[ -n "${LAB_MPATHD_PID:-}" ] || return 0
	echo "mpathd show paths:"
	timeout 5 "$MPATHD" --socket "$LAB_SOCK" show paths
	echo "last lines of mpathd.log:"
	tail -40 "$LAB_OUT/mpathd.log" | cut -c1-400
}

# lab_mpathd CMD...: the CLI against the lab daemon.
lab_mpathd() { "$MPATHD" --socket "$LAB_SOCK" "$@"; }

# lab_expect_log PATTERN: the daemon's log has a line matching PATTERN (grep -E).
lab_expect_log() {
	grep -Eq "$1" "$LAB_OUT/mpathd.log" || lab_fail "mpathd.log has no line matching /$1/"
}

# lab_map_paths MAP: the table's path devices (MAJ:MIN), space separated.
lab_map_paths() {
	dmsetup table "$1" | python3 -c '
import sys
w = sys.stdin.read().split()[3:]
i = 0
nf = int(w[i]); i += 1 + nf
nh = int(w[i]); i += 1 + nh
ng = int(w[i]); i += 2
out = []
for _ in range(ng):
    i += 1
    ns = int(w[i]); i += 1 + ns
    np_, na = int(w[i]), int(w[i + 1]); i += 2
    for _ in range(np_):
        out.append(w[i]); i += 1 + na
print(" ".join(out))'
}

# lab_map_groups MAP: the number of path groups in MAP's table.
lab_map_groups() {
	dmsetup table "$1" | python3 -c '
import sys
w = sys.stdin.read().split()[3:]
nf = int(w[0]); nh = int(w[1 + nf])
print(w[2 + nf + nh])'
}

# lab_wait_map_paths MAP N SECONDS: until MAP's table has N paths.
lab_wait_map_paths() {
	lab_wait "$3" "map $1 to have $2 paths" lab__map_has "$1" "$2"
	lab_event dm "map $1 has $2 paths: $(lab_map_paths "$1")"
}
lab__map_has() { [ "$(lab_map_paths "$1" 2>/dev/null | wc -w)" = "$2" ]; }

# lab_portal_add I: one more portal on the running target (veth p<I>, target address
# 10.99.<I>.2) and a login through it; fills LAB_DEV[I] and friends.
lab_portal_add() {
	local i=$1 T="$LAB_CFG/iscsi/$LAB_IQN/tpgt_1"
	lab_portal_link "$i"
	lab_do nsenter --net=/run/netns/tgt mkdir "$T/np/10.99.$i.2:3260"
	lab_do iscsiadm -m discovery -t sendtargets -p "10.99.$i.2"
	lab_do iscsiadm -m node -T "$LAB_IQN" -p "10.99.$i.2" -o update -n node.session.timeo.replacement_timeout -v "$LAB_RECOVERY_TMO"
	lab_do iscsiadm -m node -T "$LAB_IQN" -p "10.99.$i.2" --login
	lab_wait 20 "the SCSI disk behind portal $i" lab__find_disk "$i"
	lab__find_disk "$i"
	lab_event iscsi "portal $i added: ${LAB_DEV[i]} (${LAB_DEVT[i]})"
}

# lab_logout I: log out of portal I's session (the path goes away for good).
lab_logout() {
	lab_do iscsiadm -m node -T "$LAB_IQN" -p "10.99.$1.2" --logout
	lab_event iscsi "logged out of portal $1 (${LAB_DEV[$1]} removed)"
}

# lab_mpathd_wait_probes [N]: until the daemon's probes watch N iSCSI connections (2 by
# default). Loading the programs takes seconds under emulation: faults wait for it.
lab_mpathd_wait_probes() {
	lab_wait 120 "mpathd's probes on ${1:-2} connections" lab__watching "${1:-2}"
}
lab__watching() { [ "$(grep -c 'watching iSCSI connection' "$LAB_OUT/mpathd.log")" -ge "$1" ]; }

# lab_active_path [MAP]: the path number I whose group is active in dm (the first active
# path of the active group).
lab_active_path() {
	local i g
	g=$(dmsetup status "${1:-$LAB_MAP}" | python3 -c '
import sys
w = sys.stdin.read().split()[3:]
i = 0; nf = int(w[i]); i += 1 + nf
nh = int(w[i]); i += 1 + nh
ng = int(w[i]); i += 2
for _ in range(ng):
    st = w[i]; i += 1
    ns = int(w[i]); i += 1 + ns
    np_, na = int(w[i]), int(w[i + 1]); i += 2
    for _ in range(np_):
        if st == "A" and w[i + 1] == "A":
            print(w[i]); sys.exit()
        i += 3 + na')
	for i in $(seq "$LAB_PORTALS"); do
		[ "${LAB_DEVT[i]}" = "$g" ] && { echo "$i"; return; }
	done
	echo 1
}

# lab_io_path: the path number I whose disk completes the I/O now, from the disks' own
# counters (dm's active group says where the next I/O goes, and none is active right
# after a reload); returns 1 if no path moves for 5 s. The checker's one read a second
# per path stays below the threshold.
lab_io_path() {
	local i best n try
	local -a before f
	for ((try = 0; try < 10; try++)); do
		for ((i = 1; i <= LAB_PORTALS; i++)); do
			read -ra f <"/sys/block/${LAB_DEV[i]}/stat"
			before[i]=$((f[0] + f[4]))
		done
		sleep 0.5
		best=0 n=5
		for ((i = 1; i <= LAB_PORTALS; i++)); do
			read -ra f <"/sys/block/${LAB_DEV[i]}/stat"
			(( f[0] + f[4] - before[i] > n )) && { best=$i n=$((f[0] + f[4] - before[i])); }
		done
		[ "$best" -gt 0 ] && { echo "$best"; return; }
	done
	return 1
}

# lab_tmo_is SECS: every iSCSI session's recovery_tmo is SECS.
lab_tmo_is() {
	local f
	for f in /sys/class/iscsi_session/session*/recovery_tmo; do
		[ "$(cat "$f")" = "$1" ] || return 1
	done
}
lab_tmo() { cat /sys/class/iscsi_session/session*/recovery_tmo | tr '\n' ' '; }

# lab_decisions KIND [SINCE_LINE]: how many decision lines of KIND (fail_path,
# reinstate_path, demote, restore) the daemon logged, from line SINCE_LINE of its log.
lab_decisions() { # lab_decisions KIND [FROM_LINE [PATH_NAME]]: decisions of KIND logged
	tail -n +"${2:-1}" "$LAB_OUT/mpathd.log" | grep -E "mpathd::daemon: $1: " \
		| grep -cE "${3:+ path=$3 }" || true
}
lab_log_lines() { wc -l <"$LAB_OUT/mpathd.log"; }
