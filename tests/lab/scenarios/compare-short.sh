# lab: silent loss on the path carrying verified IO with the kernel alone, multipathd and mpathd in one VM: no IO error or mismatch with any, both daemons put the path back, mpathd stalls IO least (the short form of cargo xtask bench compare)
# lab-timeout: 900
# A scenario (it passes or fails), for `cargo xtask test`: one fault of the comparison
# with its three stacks. The figures of the full comparison come from `cargo xtask bench
# compare`; here only what must hold is checked.
: "${BENCH_FAULT_S:=25}"   # the kernel alone fails a silently dead path after ~20 s here
: "${BENCH_RECOVER_S:=60}"
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"
. "${LAB_LIB%/*}/bench/compare-lib.sh"

lab_udev_start
lab_setup
LAB_WWID=$(lab_wwid)
bench_record_setup
for s in kernel multipathd mpathd; do
	bench_stack_up "$s"
	bench_run silent_loss
	bench_stack_down
done

lab_step "check: every stack kept the data, the daemons put the path back, mpathd stalled least"
python3 - "$BENCH_RAW" "$LAB_OUT" <<'PY' || lab_fail "the comparison's checks failed (see above)"
import json, sys
raw, out = sys.argv[1], sys.argv[2]
runs = {r["stack"]: r for r in map(json.loads, open(raw)) if r.get("fault") == "silent_loss"}
bad, stall = [], {}
for s in ("kernel", "multipathd", "mpathd"):
    if s not in runs:
        bad.append("no run recorded for %s" % s)
        continue
    r = runs[s]
    io = json.load(open("%s/%s/labio.json" % (out, r["dir"])))
    st = io["longest_stall"]
    stall[s] = st["seconds"]
    print("%-10s longest stall %7.3f s, p99 %8.1f ms, max %8.1f ms, errors %d, mismatches %d, ops %d"
          % (s, st["seconds"], io["latency_ms"]["p99"], io["latency_ms"]["max"],
             io["io_errors"]["count"], io["mismatches"]["count"], io["ops"]))
    if io["io_errors"]["count"] or io["mismatches"]["count"]:
        bad.append("%s: %d IO errors, %d mismatches (want none)"
                   % (s, io["io_errors"]["count"], io["mismatches"]["count"]))
    if st["end"] >= io["end"] - 0.2:
        bad.append("%s: IO never resumed after its longest stall" % s)
    if s != "kernel" and r["back_seen_at"] is None:
        bad.append("%s did not put the path back within %s s of the fault's end" % (s, r["recover_wait_s"]))
if len(stall) == 3 and not stall["mpathd"] < min(stall["kernel"], stall["multipathd"]):
    bad.append("mpathd's longest stall (%.3f s) is not below the kernel's (%.3f s) and multipathd's (%.3f s)"
               % (stall["mpathd"], stall["kernel"], stall["multipathd"]))
for b in bad:
    print("compare: FAIL: " + b)
sys.exit(1 if bad else 0)
PY
lab_done
