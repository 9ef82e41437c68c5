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
];

pub fn run(root: &Path, name: &str) -> Result<()> {
    match name {
        "probes" => cargo_bench(root, "probes", "probes.json").map(|_| ()),
        "tcp" => tcp(root),
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
