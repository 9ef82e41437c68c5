//! `cargo xtask bench NAME`: benchmarks, each writing JSON under target/bench/.
//!
//! Benchmarks are separate from tests: their figures are compared against targets in the
//! JSON they write, never asserted on by a timed test.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

mod compare;
mod svg;

pub use compare::Options as CompareOptions;

/// (name, what it measures)
const BENCHES: &[(&str, &str)] = &[
    (
        "probes",
        "block probe cost per IO (kernel BPF stats), fio IOPS with probes attached vs detached, \
         kernel-to-daemon event latency; host kernel, root",
    ),
    (
        "tcp",
        "TCP probe cost per event on skipped and watched traffic (host veth), then in the lab: \
         silent loss and target reset on real iSCSI paths to the first event in mpathd",
    ),
    (
        "scrape",
        "one Prometheus scrape of 1024 paths: render time (median, p99), snapshot copy, and a \
         full GET /metrics over loopback; target under 50 ms",
    ),
    (
        "startup",
        "start-up with many paths in the lab: 128 LUNs x 2 iSCSI portals, time from start to \
         all maps live, `multipath -r` (multipath-tools) against `mpathd daemon`, same VM",
    ),
    (
        "failover",
        "each fault on the active path during verified IO (link cut, silent loss, target \
         reset, 150 ms delay, 5% loss, flapping), with the kernel alone and with mpathd, \
         same VM: longest stall, latency, errors, detection and action times",
    ),
    (
        "compare",
        "each fault (link cut, silent loss, target reset, 150 ms delay, 5% loss, flapping, all \
         paths down) with the kernel alone, Debian's multipathd and mpathd, same VM per fault \
         group; fio on a healthy map with no daemon, mpathd, bpftrace biolatency, multipathd; \
         compare.json, a table and SVG plots",
    ),
];

pub fn run(root: &Path, name: &str, compare_opts: &CompareOptions) -> Result<()> {
    if name != "compare" && (!compare_opts.parts.is_empty() || compare_opts.no_run) {
        bail!("--parts and --no-run are options of `bench compare` only");
    }
    match name {
        "compare" => compare::run(root, compare_opts),
        "probes" => cargo_bench(root, "probes", "probes.json").map(|_| ()),
        "tcp" => tcp(root),
        "scrape" => cargo_bench(root, "scrape", "scrape.json").map(|_| ()),
        "startup" => startup(root),
        "failover" => failover(root),
        _ => {
            let list: Vec<String> = BENCHES
                .iter()
                .map(|(n, what)| format!("  {n}: {what}"))
                .collect();
            bail!(
                "no benchmark named {name:?}; there are:\n{}",
                list.join("\n")
            )
        }
    }
}

/// Runs a `harness = false` bench target of multipath-daemon with `--out target/bench/FILE`.
fn cargo_bench(root: &Path, name: &str, file: &str) -> Result<PathBuf> {
    let out = root.join("target/bench").join(file);
    eprintln!(
        "bench {name}: building and running (writes {})",
        out.display()
    );
    let status = Command::new(env!("CARGO"))
        .args([
            "bench",
            "-p",
            "multipath-daemon",
            "--bench",
            name,
            "--",
            "--out",
        ])
        .arg(&out)
        .current_dir(root)
        .status()
        .context("running cargo bench")?;
    if !status.success() {
        bail!("benchmark {name} failed ({status}); its output is above");
    }
    Ok(out)
}

/// The TCP probes: host cost, then the lab's `probes` scenario for fault-to-event times.
fn tcp(root: &Path) -> Result<()> {
    let host = cargo_bench(root, "tcp", "tcp-host.json")?;
    let host: Value = serde_json::from_str(&std::fs::read_to_string(&host)?)
        .context("reading the host part's JSON")?;
    eprintln!("bench tcp: lab part: the `probes` scenario (real iSCSI paths in QEMU)");
    let dir = crate::lab::run_builtin(root, "probes")?;
    let lab = lab_fault_to_event(&dir)?;
    let out = root.join("target/bench/tcp.json");
    let v = json!({ "bench": "tcp", "host": host, "lab": lab });
    std::fs::write(&out, serde_json::to_string_pretty(&v)? + "\n")?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// From a `probes` lab run: each fault's time (taken just before the command that
/// injects it, so the figures include the command's own time) to mpathd's first event
/// of each kind for the faulted path, the retransmission schedule seen, and how long the
/// daemon took to have each event after the kernel stamped it.
fn lab_fault_to_event(dir: &Path) -> Result<Value> {
    let events: Vec<Value> = std::fs::read_to_string(dir.join("probe.jsonl"))
        .context("reading probe.jsonl of the lab run")?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e.get("kind").is_some())
        .collect();
    let faults: Vec<(f64, String)> = std::fs::read_to_string(dir.join("events.tsv"))
        .context("reading events.tsv of the lab run")?
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            let (t, kind, msg) = (f.next()?, f.next()?, f.next()?);
            (kind == "fault").then(|| Some((t.parse().ok()?, msg.to_owned())))?
        })
        .collect();
    let fault_at = |needle: &str| {
        faults
            .iter()
            .find(|(_, m)| m.contains(needle))
            .map(|(t, _)| *t)
            .with_context(|| format!("no fault matching {needle:?} in events.tsv"))
    };
    let after = |t0: f64, dev: &str, kind: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["device"] == dev && e["kind"] == kind && e["wall"].as_f64() >= Some(t0))
            .collect()
    };
    let first = |t0: f64, dev: &str, kind: &str| {
        after(t0, dev, kind)
            .first()
            .and_then(|e| e["wall"].as_f64())
            .map(|w| ((w - t0) * 1000.0).round())
    };
    let loss = fault_at("silent loss in the network")?;
    let reset = fault_at("target-side TCP reset")?;
    let schedule: Vec<Value> = after(loss, "sda", "tcp_retransmits")
        .iter()
        .map(|e| {
            json!({"ms_after_fault": ((e["wall"].as_f64().unwrap_or(0.0) - loss) * 1000.0).round(),
                   "consecutive_retrans": e["consecutive_retrans"]})
        })
        .collect();
    let reset_lag = after(reset, "sdb", "tcp_reset")
        .first()
        .and_then(|e| e["lag_us"].as_u64());
    let mut lags: Vec<u64> = events.iter().filter_map(|e| e["lag_us"].as_u64()).collect();
    lags.sort_unstable();
    Ok(json!({
        "scenario": dir.join("report.json"),
        "note": "fault times are taken just before the injecting command runs (nft or ss under \
                 TCG take up to ~1 s themselves), so fault-to-event figures are upper bounds; \
                 lag_us is from the kernel's timestamp of the event to mpathd reading it",
        "silent_loss_portal_1": {
            "ms_to_first_stalled": first(loss, "sda", "stalled"),
            "ms_to_first_retransmits_event": first(loss, "sda", "tcp_retransmits"),
            "retransmit_events": schedule,
        },
        "target_reset_portal_2": {
            "ms_to_tcp_reset_event": first(reset, "sdb", "tcp_reset"),
            "kernel_to_daemon_us": reset_lag,
            "target_ms": 10,
        },
        "event_lag_us": {
            "events": lags.len(),
            "p50": lags.get(lags.len() / 2),
            "max": lags.last(),
        },
    }))
}

/// The lab script of the start-up benchmark (not under scenarios/: `cargo xtask test`
/// must not run it).
const STARTUP_SCRIPT: &str = "tests/lab/bench/startup.sh";
/// The issue's target: mpathd's median time to all maps, and faster than multipath -r.
const STARTUP_TARGET_S: f64 = 2.0;

/// Start-up with many paths: builds a release mpathd, runs tests/lab/bench/startup.sh in
/// the lab with it, and summarizes the rounds into target/bench/startup.json.
fn startup(root: &Path) -> Result<()> {
    let t0 = std::time::Instant::now();
    let target = target_dir(root);
    let mpathd = release_mpathd(root, "startup")?;
    eprintln!("bench startup: lab part ({STARTUP_SCRIPT}; 128 LUNs x 2 portals under TCG)");
    let out = run_lab_bench(root, &target, STARTUP_SCRIPT, "startup", &mpathd)?;
    let raw = std::fs::read_to_string(out.join("startup-raw.jsonl"))
        .context("reading startup-raw.jsonl of the lab run")?;
    let mut v = startup_summary(&raw)?;
    v["lab_dir"] = json!(out);
    v["wall_s"] = json!((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    let file = target.join("bench/startup.json");
    std::fs::write(&file, serde_json::to_string_pretty(&v)? + "\n")?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    eprintln!("wrote {}", file.display());
    Ok(())
}

fn target_dir(root: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.canonicalize().unwrap_or(target)
}

/// The debug mpathd the lab builds is not what a host runs: benchmarks time a release
/// build.
fn release_mpathd(root: &Path, bench: &str) -> Result<PathBuf> {
    eprintln!("bench {bench}: building a release mpathd");
    let st = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "multipath-daemon",
            "--bin",
            "mpathd",
        ])
        .current_dir(root)
        .status()
        .context("running cargo build --release")?;
    if !st.success() {
        bail!("building the release mpathd failed ({st}); its output is above");
    }
    Ok(target_dir(root).join("release/mpathd"))
}

/// Runs a lab bench script with BENCH_MPATHD set to `mpathd`: the lab passes no
/// environment of ours into the guest, so a copy of the script gets it at its top (after
/// the header lines the harness reads). Returns the run's output dir.
fn run_lab_bench(
    root: &Path,
    target: &Path,
    script: &str,
    name: &str,
    mpathd: &Path,
) -> Result<PathBuf> {
    let text =
        std::fs::read_to_string(root.join(script)).with_context(|| format!("reading {script}"))?;
    let dir = target.join(format!("bench/{name}-lab"));
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join(format!("{name}.sh"));
    let (header, body) = split_header(&text);
    std::fs::write(
        &copy,
        format!(
            "{header}BENCH_MPATHD='{}' # set by cargo xtask bench {name}\n{body}",
            mpathd.display()
        ),
    )?;
    crate::lab::run_builtin(root, &copy.to_string_lossy())
}

/// The lab script of the failover benchmark.
const FAILOVER_SCRIPT: &str = "tests/lab/bench/failover.sh";

/// Each fault on the active path, with the kernel alone and with mpathd, in one VM:
/// target/bench/failover.json has per fault the longest IO stall with and without
/// mpathd, the application's latency, errors, mismatches, and mpathd's detection and
/// action times.
fn failover(root: &Path) -> Result<()> {
    let t0 = std::time::Instant::now();
    let target = target_dir(root);
    let mpathd = release_mpathd(root, "failover")?;
    eprintln!("bench failover: lab part ({FAILOVER_SCRIPT}; every fault twice, under TCG)");
    let out = run_lab_bench(root, &target, FAILOVER_SCRIPT, "failover", &mpathd)?;
    let raw = std::fs::read_to_string(out.join("failover-raw.jsonl"))
        .context("reading failover-raw.jsonl of the lab run")?;
    let mut v = failover_summary(&raw)?;
    v["lab_dir"] = json!(out);
    v["wall_s"] = json!((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    let file = target.join("bench/failover.json");
    std::fs::write(&file, serde_json::to_string_pretty(&v)? + "\n")?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    eprintln!("wrote {}", file.display());
    Ok(())
}

/// Pairs the kernel's and mpathd's rows of each fault.
fn failover_summary(raw: &str) -> Result<Value> {
    let rows: Vec<Value> = raw
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("a line of failover-raw.jsonl is not JSON")?;
    let mut faults: Vec<String> = Vec::new();
    for r in &rows {
        if let Some(f) = r["fault"].as_str()
            && !faults.iter().any(|x| x == f)
        {
            faults.push(f.to_string());
        }
    }
    let pick = |daemon: &str, fault: &str| {
        rows.iter()
            .find(|r| r["daemon"] == daemon && r["fault"] == fault)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let scenarios: Vec<Value> = faults
        .iter()
        .map(|f| {
            let (k, m) = (pick("kernel", f), pick("mpathd", f));
            let ratio = match (k["longest_stall_s"].as_f64(), m["longest_stall_s"].as_f64()) {
                (Some(a), Some(b)) if b > 0.0 => json!(round3(a / b)),
                _ => Value::Null,
            };
            json!({ "fault": f, "kernel": k, "mpathd": m, "stall_kernel_over_mpathd": ratio })
        })
        .collect();
    Ok(json!({ "bench": "failover", "scenarios": scenarios }))
}

/// The script's leading comment lines (the harness reads `# lab:` headers there) and the rest.
fn split_header(script: &str) -> (&str, &str) {
    let end = script
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.len() + 1)
        .sum::<usize>()
        .min(script.len());
    script.split_at(end)
}

/// Seconds to the millisecond, as the guest wrote them.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// min and median of some seconds; None when there are none.
fn min_median(xs: &[f64]) -> (Option<f64>, Option<f64>) {
    if xs.is_empty() {
        return (None, None);
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (Some(round3(v[0])), Some(round3(med)))
}

/// Turns the guest's records (one JSON object a line: setup, tools, rounds) into the
/// benchmark's JSON: per tool its rounds, seconds to all maps live, min, median, maps
/// reached; and the target check.
fn startup_summary(raw: &str) -> Result<Value> {
    let recs: Vec<Value> = raw
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()
        .context("a line of startup-raw.jsonl is not JSON")?;
    let kind = |k: &'static str| recs.iter().filter(move |r| r["kind"] == k);
    let setup = kind("setup")
        .next()
        .context("no setup record: the lab run stopped before the paths were up")?;
    let tools = kind("tools").next().cloned().unwrap_or(json!({}));
    let luns = setup["luns"].as_u64().unwrap_or(0);
    // Records before the daemon was named in them were mpathd's.
    let scale = |stack: &str| {
        kind("fault_at_scale")
            .find(|r| r["stack"].as_str().unwrap_or("mpathd") == stack)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let side = |tool: &str, extra_key: &str| {
        let rounds: Vec<&Value> = kind("round").filter(|r| r["tool"] == tool).collect();
        let secs: Vec<f64> = rounds.iter().filter_map(|r| r["maps_s"].as_f64()).collect();
        let extra: Vec<f64> = rounds
            .iter()
            .filter_map(|r| r[extra_key].as_f64())
            .collect();
        let (min, median) = min_median(&secs);
        let (emin, emedian) = min_median(&extra);
        let maps_min = rounds.iter().filter_map(|r| r["maps"].as_u64()).min();
        let complete = !rounds.is_empty() && secs.len() == rounds.len() && maps_min == Some(luns);
        json!({
            "rounds": rounds.len(),
            "seconds": secs,
            "min": min,
            "median": median,
            "maps": maps_min,
            "all_maps_every_round": complete,
            extra_key: { "seconds": extra, "min": emin, "median": emedian },
            "round_records": rounds,
        })
    };
    let mut multipath = side("multipath", "exit_s");
    // BENCH_MP_UDEV_SYNC=0 ran it without waiting on udev's rules.
    let udev_sync = !kind("round").any(|r| r["tool"] == "multipath" && r["udev_sync"] == false);
    multipath["command"] = json!(if udev_sync {
        "multipath -r"
    } else {
        "DM_DISABLE_UDEV=1 multipath -r"
    });
    multipath["udev_sync"] = json!(udev_sync);
    multipath["version"] = tools["multipath_version"].clone();
    let mpathd_available = tools["mpathd_available"].as_bool().unwrap_or(false);
    let mut mpathd = side("mpathd", "ready_s");
    mpathd["command"] = json!("mpathd daemon --config FILE --socket PATH");
    mpathd["binary"] = tools["mpathd"].clone();
    mpathd["available"] = json!(mpathd_available);
    if !mpathd_available {
        let why = tools["mpathd_unavailable_reason"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("mpathd daemon not available");
        mpathd["error"] = json!(why);
    }
    let mp_med = multipath["median"].as_f64();
    let md_med = mpathd["median"].as_f64();
    let md_complete = mpathd["all_maps_every_round"].as_bool() == Some(true);
    let (met, why) = match (md_med, mp_med) {
        _ if !mpathd_available => (Value::Null, "mpathd daemon not available".to_owned()),
        _ if !md_complete => (
            json!(false),
            "mpathd did not bring up every map in every round".to_owned(),
        ),
        (Some(m), Some(p)) => (
            json!(m <= STARTUP_TARGET_S && m < p),
            format!("mpathd median {m} s <= {STARTUP_TARGET_S} s and < multipath -r median {p} s"),
        ),
        (Some(m), None) => (
            json!(false),
            format!("mpathd median {m} s; no multipath -r figure to compare with"),
        ),
        (None, _) => (json!(false), "no mpathd figure".to_owned()),
    };
    Ok(json!({
        "bench": "startup",
        "what": "seconds from a tool's start until all maps are live in the kernel (dm device \
                 with a loaded, resumed table), all paths present and settled in udev, no map \
                 before; rounds alternate between the tools in one lab VM (QEMU TCG: expect \
                 10-50x native times)",
        "luns": luns,
        "paths": setup["paths"],
        "portals": setup["portals"],
        "kernel": setup["kernel"],
        "setup": setup,
        "rounds_at_most": tools["max_rounds"],
        "rounds_budget_s": tools["budget_s"],
        "multipath": multipath,
        "mpathd": mpathd,
        // One portal's silent loss with a daemon managing every map under IO, by daemon
        // (`mpathd`, `multipathd`); a daemon whose part did not run is null.
        "fault_at_scale": {
            "mpathd": scale("mpathd"),
            "multipathd": scale("multipathd"),
        },
        "target": {
            "rule": format!("mpathd median <= {STARTUP_TARGET_S} s and < multipath -r median"),
            "mpathd_median_s": md_med,
            "multipath_median_s": mp_med,
            "met": met,
            "check": why,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_pairs_each_faults_rows() {
        let raw = r#"{"daemon":"kernel","fault":"link_cut","longest_stall_s":15.3,"errors":0}
{"daemon":"kernel","fault":"silent_loss","longest_stall_s":15.0,"errors":0}
{"daemon":"mpathd","fault":"link_cut","longest_stall_s":0.5,"errors":0,"fault_to_action_s":0.4}
"#;
        let v = failover_summary(raw).unwrap();
        let s = v["scenarios"].as_array().unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0]["fault"], "link_cut");
        assert_eq!(s[0]["mpathd"]["fault_to_action_s"], 0.4);
        assert_eq!(s[0]["stall_kernel_over_mpathd"], 30.6);
        assert!(s[1]["mpathd"].is_null(), "no mpathd row for silent_loss");
        assert!(failover_summary("not json").is_err());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(min_median(&[]), (None, None));
        assert_eq!(min_median(&[3.0, 1.0, 2.0]), (Some(1.0), Some(2.0)));
        assert_eq!(min_median(&[4.0, 1.0, 2.0, 3.0]), (Some(1.0), Some(2.5)));
    }

    #[test]
    fn header_stays_first() {
        let (h, b) = split_header("# lab: x\n# lab-timeout: 9\n: \"${A:=1}\"\n");
        assert_eq!(h, "# lab: x\n# lab-timeout: 9\n");
        assert_eq!(b, ": \"${A:=1}\"\n");
    }

    const SETUP: &str = r#"{"kind":"setup","luns":2,"portals":2,"paths":4,"wwids":2,"lun_mb":1,"kernel":"6.1.0","total_s":9.5}"#;

    #[test]
    fn summary_without_the_daemon() {
        let raw = format!(
            "{SETUP}\n{}\n{}\n{}\n",
            r#"{"kind":"tools","multipath_version":"0.9.4","mpathd":"/m","mpathd_available":false,"mpathd_unavailable_reason":"mpathd daemon not available: no subcommand"}"#,
            r#"{"kind":"round","tool":"multipath","round":1,"exit_code":0,"exit_s":5.1,"maps_s":5.0,"maps":2}"#,
            r#"{"kind":"round","tool":"multipath","round":2,"exit_code":0,"exit_s":4.1,"maps_s":4.0,"maps":2}"#,
        );
        let v = startup_summary(&raw).unwrap();
        assert_eq!(v["multipath"]["rounds"], 2);
        assert_eq!(v["multipath"]["min"], 4.0);
        assert_eq!(v["multipath"]["median"], 4.5);
        assert_eq!(v["multipath"]["all_maps_every_round"], true);
        assert_eq!(v["multipath"]["command"], "multipath -r");
        assert_eq!(v["multipath"]["udev_sync"], true);
        let nosync = raw.replace(r#""maps":2}"#, r#""maps":2,"paths":4,"udev_sync":false}"#);
        let v2 = startup_summary(&nosync).unwrap();
        assert_eq!(v2["multipath"]["command"], "DM_DISABLE_UDEV=1 multipath -r");
        assert_eq!(v2["multipath"]["udev_sync"], false);
        assert_eq!(v2["multipath"]["round_records"][0]["paths"], 4);
        assert_eq!(v["mpathd"]["available"], false);
        assert!(
            v["mpathd"]["error"]
                .as_str()
                .unwrap()
                .contains("not available")
        );
        assert_eq!(v["target"]["met"], Value::Null);
        assert_eq!(v["fault_at_scale"]["mpathd"], Value::Null);
        assert_eq!(v["fault_at_scale"]["multipathd"], Value::Null);
    }

    #[test]
    fn summary_with_the_daemon() {
        let raw = format!(
            "{SETUP}\n{}\n{}\n{}\n{}\n",
            r#"{"kind":"tools","multipath_version":"0.9.4","mpathd":"/m","mpathd_available":true,"mpathd_unavailable_reason":""}"#,
            r#"{"kind":"round","tool":"multipath","round":1,"exit_code":0,"exit_s":5.1,"maps_s":5.0,"maps":2}"#,
            r#"{"kind":"round","tool":"mpathd","round":1,"ready_s":1.2,"maps_s":1.1,"maps":2,"ready_line":"ready maps=2 paths=4","error":null}"#,
            r#"{"kind":"round","tool":"mpathd","round":2,"ready_s":null,"maps_s":null,"maps":1,"ready_line":"","error":"no ready line"}"#,
        );
        let v = startup_summary(&raw).unwrap();
        assert_eq!(v["mpathd"]["median"], 1.1);
        assert_eq!(v["mpathd"]["maps"], 1);
        assert_eq!(v["target"]["met"], false);
        let ok = raw.lines().take(4).collect::<Vec<_>>().join("\n");
        assert_eq!(startup_summary(&ok).unwrap()["target"]["met"], true);
        let ours = r#"{"kind":"fault_at_scale","stack":"mpathd","maps":2,"failed_by_daemon":2,"last_fail_s":0.6}"#;
        let theirs = r#"{"kind":"fault_at_scale","stack":"multipathd","maps":2,"failed_by_daemon":1,"last_fail_s":14.2}"#;
        let v = startup_summary(&format!("{ok}\n{ours}\n{theirs}\n")).unwrap();
        assert_eq!(v["fault_at_scale"]["mpathd"]["failed_by_daemon"], 2);
        assert_eq!(v["fault_at_scale"]["mpathd"]["last_fail_s"], 0.6);
        assert_eq!(v["fault_at_scale"]["multipathd"]["last_fail_s"], 14.2);
        // Only mpathd's part ran.
        let v = startup_summary(&format!("{ok}\n{ours}\n")).unwrap();
        assert_eq!(v["fault_at_scale"]["mpathd"]["maps"], 2);
        assert_eq!(v["fault_at_scale"]["multipathd"], Value::Null);
    }
}
