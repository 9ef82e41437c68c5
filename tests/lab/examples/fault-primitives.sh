# lab: every fault primitive once (netem, TCP reset, SCSI offline, target LUN errors) on a multibus map
# Run: cargo xtask lab run tests/lab/examples/fault-primitives.sh. Not built-in: with the LUN
# failing and no queueing, the application sees IO errors on purpose (min_errors=1).
# lab-timeout: 400
LAB_LUN_BACKEND=dm
. "$LAB_LIB"
lab_setup
lab_step map
lab_map multibus
lab_dm_watch_start
lab_io_start
sleep 4
lab_step netem
lab_netem 1 "delay 100ms loss 5%"
sleep 5
lab_netem_clear 1
lab_step tcp-reset
lab_tcp_reset 1
sleep 8
lab_topology
lab_tcp_reset_clear 1
lab_wait_session 1 60
lab_reinstate 1
lab_wait_dm 1 A 10
lab_step sdev-offline
lab_sdev_offline 2
lab_wait_dm 2 F 30
lab_sdev_running 2
lab_reinstate 2
lab_wait_dm 2 A 10
sleep 2
lab_step lun-error
lab_lun_error
sleep 4
lab_topology
lab_lun_ok
# dm failed both paths on the LUN errors; reinstate them so IO and the verify pass read data.
lab_reinstate 1
lab_reinstate 2
lab_wait_dm 1 A 10
lab_wait_dm 2 A 10
sleep 3
lab_io_stop
lab_topology
lab_io_check min_errors=1 verify_errors=0 mismatches=0
lab_done
