# lab: mpathd's eBPF probes on real iSCSI paths: a slow path, silent loss and a target reset, each seen on its own path only
# lab-timeout: 420
. "$LAB_LIB"

lab_setup
lab_step "map"
lab_map multibus
lab_topology
lab_dm_watch_start

lab_step "probes attached, healthy paths report nothing"
# The limits sit well above what a healthy path shows under TCG on a busy host (IO and
# RTT up to ~400 ms were seen at a host load of 9 on 2 cores) and well below the faults
# (netem 1500 ms; silent loss never completes), so each fault shows on its path only.
lab_probe_start --latency-limit-ms 800 --slow-count 3 --slow-window-ms 5000 \
	--stall-ms 1000 --scan-ms 50 --retrans-limit 3 --rtt-limit-ms 1000
t0=$EPOCHREALTIME
lab_io_start
sleep 4
lab_probe_none 1 "$t0"
lab_probe_none 2 "$t0"

lab_step "slow path: netem delay 1500ms on portal 2"
t=$EPOCHREALTIME
lab_netem 2 "delay 1500ms"
lab_probe_wait slow 2 "$t" 20
lab_netem_clear 2
lab_probe_none 1 "$t" "$EPOCHREALTIME"

lab_step "silent loss on portal 1: stalled IO and retransmissions on path 1 only"
sleep 2
t=$EPOCHREALTIME
lab_drop_net 1
lab_probe_wait stalled 1 "$t" 15
lab_probe_wait tcp_retransmits 1 "$t" 15
lab_probe_none 2 "$t" "$EPOCHREALTIME" stalled,io_error,tcp_retransmits,tcp_reset,tcp_left_established
lab_wait_dm 1 F 60
lab_undrop_net 1
lab_wait_session 1 60
lab_reinstate 1
lab_wait_dm 1 A 10
# The session logged in again on a new TCP connection: the probe must follow it.
lab_wait 10 "mpathd probe to re-learn path 1's connection" grep -q "iSCSI connection changed.*${LAB_DEV[1]}" "$LAB_OUT/probe.log"

lab_step "target-side TCP reset on portal 2"
t=$EPOCHREALTIME
lab_tcp_reset 2
lab_probe_wait tcp_reset 2 "$t" 10
lab_probe_none 1 "$t" "$EPOCHREALTIME" stalled,io_error,tcp_retransmits,tcp_reset,tcp_left_established
lab_tcp_reset_clear 2
# The session may log in again before its recovery timeout fails the path in dm.
lab_wait_session 2 60
[ "$(lab_dm_path_state 2)" = F ] && lab_reinstate 2
lab_wait_dm 2 A 15

lab_step "check: IO survived every fault"
lab_io_stop
lab_io_check errors=0 mismatches=0 min_ops=200
lab_probe_stop
lab_done
