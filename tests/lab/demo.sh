# lab: the demo: topology, the active portal's link cut during verified IO, failover
# Run by `cargo xtask demo`; the host prints the timeline and the verifier's result after.
. "$LAB_LIB"

lab_setup
lab_step "map"
lab_map failover
echo
echo "Topology (dm multipath map built with dmsetup; paths = iSCSI sessions, one per portal):"
lab_topology
echo
lab_dm_watch_start

# MPATHD: the daemon (and its eBPF first-kernel-signal probe) starts here once it exists;
# it will log its own timeline events (kinds `mpathd` and `ebpf`) with lab_event.

lab_step "verified IO running, then the link of portal 1 (active path) is cut"
lab_io_start
sleep 5
lab_link_down 1
lab_wait_dm 1 F 60
sleep 5
lab_io_stop
echo
echo "Topology after the fault:"
lab_topology
echo
lab_io_check errors=0 mismatches=0 resumed=1
lab_done
