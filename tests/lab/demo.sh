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

# mpathd watches both paths from inside the kernel: its events land on the timeline as
# `ebpf` rows. It only watches so far; failing the path itself comes with the health
# engine, so dm still fails it when the iSCSI layer gives up.
lab_probe_start --stall-ms 500 --retrans-limit 3

lab_step "verified IO running, then the link of portal 1 (active path) is cut"
lab_io_start
sleep 5
lab_link_down 1
lab_wait_dm 1 F 60
sleep 5
lab_io_stop
lab_probe_stop
echo
echo "Topology after the fault:"
lab_topology
echo
lab_io_check errors=0 mismatches=0 resumed=1
lab_done
