//! `cargo xtask bench compare`: the same faults on the same verified IO with the kernel
//! alone, Debian's multipathd and mpathd, side by side; and what each costs on a healthy
//! map.
//!
//! The guest (tests/lab/bench/compare.sh with compare-lib.sh) only records: per run the
//! verifier's report and every IO's latency, the map's `dmsetup status` on every change,
//! the kernel log with wall-clock markers, the daemon's log. Every figure is computed here
//! from those records, by one definition for all three stacks (docs/bench.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use super::svg;

/// The lab script, run once per part.
const SCRIPT: &str = "tests/lab/bench/compare.sh";

/// A part is one VM boot: some faults with all three stacks each, or the overhead.
pub struct Part {
    pub name: &'static str,
    /// BENCH_PART in the script.
    kind: &'static str,
    faults: &'static [&'static str],
    /// Seconds the VM may take (a fault run takes ~60-110 s under TCG, per stack).
    timeout_s: u64,
}

pub const PARTS: &[Part] = &[
    Part {
        name: "dead",
        kind: "faults",
        faults: &["link_cut", "silent_loss", "target_reset"],
        timeout_s: 2400,
    },
    Part {
        name: "gray",
        kind: "faults",
        faults: &["delay_150ms", "loss_5pct", "flapping"],
        timeout_s: 2400,
    },
    Part {
        name: "down",
        kind: "faults",
        faults: &["all_paths_down"],
        timeout_s: 1200,
    },
    Part {
        name: "overhead",
        kind: "overhead",
        faults: &[],
        timeout_s: 1800,
    },
];

/// The faults in the order of the table, with what each does in the lab.
pub const FAULTS: &[(&str, &str)] = &[
    (
        "link_cut",
        "the initiator's link to the portal goes down (no RST, no error)",
    ),
    (
        "silent_loss",
        "every packet to and from the portal dropped in the network (nft in the target's namespace)",
    ),
    (
        "target_reset",
        "the target resets the connection and refuses new ones (RST)",
    ),
    ("delay_150ms", "150 ms more delay on the path (netem)"),
    ("loss_5pct", "5% packet loss on the path (netem)"),
    (
        "flapping",
        "the link goes down 0.5 s and up 0.5 s, for 20 s",
    ),
    (
        "all_paths_down",
        "every portal's link down, then back (IO queues meanwhile)",
    ),
];

pub const STACKS: &[&str] = &["kernel", "multipathd", "mpathd"];

pub struct Options {
    /// Part names to run; empty: all.
    pub parts: Vec<String>,
    /// Summarize the last runs' results without booting the lab.
    pub no_run: bool,
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    let t0 = std::time::Instant::now();
    let target = super::target_dir(root);
    let selected: Vec<&Part> = if opts.parts.is_empty() {
        PARTS.iter().collect()
    } else {
        opts.parts
            .iter()
            .map(|n| {
                PARTS.iter().find(|p| p.name == n).with_context(|| {
                    let names: Vec<&str> = PARTS.iter().map(|p| p.name).collect();
                    format!(
                        "no part {n:?} of bench compare; parts: {}",
                        names.join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    let mut failures = Vec::new();
    if !opts.no_run {
        let mpathd = super::release_mpathd(root, "compare")?;
        for p in &selected {
            eprintln!(
                "bench compare: part {} ({}) in one lab VM",
                p.name,
                if p.faults.is_empty() {
                    "overhead on a healthy map".to_owned()
                } else {
                    p.faults.join(", ")
                }
            );
            if let Err(e) = run_part(root, &target, p, &mpathd) {
                let msg = format!("{e:#}");
                eprintln!("bench compare: part {} failed: {msg}", p.name);
                failures.push(format!("{}: {msg}", p.name));
                // SIGINT or SIGTERM (the lab's message says so): boot no further VM.
                if msg.contains("interrupted; the VM was killed") {
                    eprintln!("bench compare: interrupted, the other parts are not run");
                    break;
                }
            }
        }
    }
    // Every part's last results, also those not run now: the summary is always whole.
    let mut raw = String::new();
    let mut dirs = Vec::new();
    for p in PARTS {
        let dir = target.join("lab").join(format!("compare-{}", p.name));
        if let Ok(text) = std::fs::read_to_string(dir.join("compare-raw.jsonl")) {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let mut v: Value = serde_json::from_str(line).with_context(|| {
                    format!("a line of {}/compare-raw.jsonl is not JSON", dir.display())
                })?;
                v["lab_dir"] = json!(dir);
                raw.push_str(&v.to_string());
                raw.push('\n');
            }
            dirs.push(dir);
        }
    }
    if dirs.is_empty() {
        bail!(
            "no results of bench compare under {}/lab/compare-*: run it without --no-run",
            target.display()
        );
    }
    let mut v = summarize(&raw)?;
    v["failed_parts"] = json!(failures);
    v["lab_dirs"] = json!(dirs);
    v["wall_s"] = json!((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    let out = target.join("bench");
    std::fs::create_dir_all(&out)?;
    write_outputs(&out, &v)?;
    if !failures.is_empty() {
        bail!(
            "bench compare: {} part(s) failed (their figures are missing or from an earlier \
             run): {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

/// One VM: a copy of compare.sh with the part's knobs under its header.
fn run_part(root: &Path, target: &Path, p: &Part, mpathd: &Path) -> Result<PathBuf> {
    let text =
        std::fs::read_to_string(root.join(SCRIPT)).with_context(|| format!("reading {SCRIPT}"))?;
    let dir = target.join("bench/compare-lab");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join(format!("compare-{}.sh", p.name));
    std::fs::write(&copy, part_script(&text, p, mpathd))?;
    crate::lab::run_builtin(root, &copy.to_string_lossy())
}

/// The script with the part's timeout in its header and its knobs right after the header
/// (the lab passes no environment of ours into the guest).
fn part_script(text: &str, p: &Part, mpathd: &Path) -> String {
    let (header, body) = super::split_header(text);
    let header: String = header
        .lines()
        .map(|l| {
            if l.starts_with("# lab-timeout:") {
                format!("# lab-timeout: {}\n", p.timeout_s)
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    format!(
        "{header}# set by cargo xtask bench compare:\nBENCH_MPATHD='{}'\nBENCH_PART={}\nBENCH_FAULTS='{}'\n{body}",
        mpathd.display(),
        p.kind,
        p.faults.join(" ")
    )
}

// --- the guest's records ----------------------------------------------------------------

#[derive(Deserialize, Clone, Debug)]
struct RunMeta {
    stack: String,
    fault: String,
    dev: String,
    devt: String,
    session: String,
    io_start: f64,
    fault_at: f64,
    restored_at: f64,
    back_seen_at: Option<f64>,
    manual_reinstate_at: Option<f64>,
    recover_wait_s: f64,
    dir: String,
    lab_dir: PathBuf,
}

/// One path group of a multipath map, from `dmsetup status`.
#[derive(Debug, Clone, PartialEq)]
struct Group {
    /// A: the group in use, E: enabled, D: disabled.
    state: char,
    /// (major:minor, A or F)
    paths: Vec<(String, char)>,
}

/// The groups of a multipath `dmsetup status` line ("0 SIZE multipath ...").
fn parse_status(line: &str) -> Option<Vec<Group>> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let mut i = w.iter().position(|x| *x == "multipath")? + 1;
    let num = |i: usize| w.get(i)?.parse::<usize>().ok();
    let nf = num(i)?;
    i += 1 + nf;
    let nh = num(i)?;
    i += 1 + nh;
    let ng = num(i)?;
    i += 2;
    let mut groups = Vec::with_capacity(ng);
    for _ in 0..ng {
        let state = w.get(i)?.chars().next()?;
        i += 1;
        let ns = num(i)?;
        i += 1 + ns;
        let (np, na) = (num(i)?, num(i + 1)?);
        i += 2;
        let mut paths = Vec::with_capacity(np);
        for _ in 0..np {
            let dev = (*w.get(i)?).to_owned();
            let st = w.get(i + 1)?.chars().next()?;
            paths.push((dev, st));
            i += 3 + na;
        }
        groups.push(Group { state, paths });
    }
    Some(groups)
}

/// The path carries IO: usable, in the group in use.
fn in_use(groups: &[Group], devt: &str) -> bool {
    groups
        .iter()
        .any(|g| g.state == 'A' && g.paths.iter().any(|(d, s)| d == devt && *s == 'A'))
}

fn usable(groups: &[Group], devt: &str) -> bool {
    groups
        .iter()
        .any(|g| g.paths.iter().any(|(d, s)| d == devt && *s == 'A'))
}

/// Which paths are in which group, in order (states left out).
fn shape(groups: &[Group]) -> Vec<Vec<&str>> {
    groups
        .iter()
        .map(|g| g.paths.iter().map(|(d, _)| d.as_str()).collect())
        .collect()
}

/// status.tsv: (epoch, groups) per change.
fn read_status(path: &Path) -> Result<Vec<(f64, Vec<Group>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (t, st) = l.split_once('\t')?;
            Some((t.parse().ok()?, parse_status(st)?))
        })
        .collect())
}

/// trace.txt: (completion epoch, latency in seconds, failed) per IO.
fn read_trace(path: &Path) -> Result<Vec<(f64, f64, bool)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(' ');
            let done: f64 = f.next()?.parse().ok()?;
            let lat: f64 = f.next()?.parse::<f64>().ok()? / 1e6;
            let failed = f.next()? == "1";
            Some((done, lat, failed))
        })
        .collect())
}

/// The kernel log of a run, each line dated on the wall clock through the bench's
/// `mpathd-bench: clock EPOCH` markers (printk time + offset).
fn read_dmesg(path: &Path) -> Result<Vec<(f64, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<(f64, &str)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix('[')?;
            let (t, msg) = rest.split_once(']')?;
            Some((t.trim().parse().ok()?, msg.trim()))
        })
        .collect();
    let offset = lines
        .iter()
        .find_map(|(mono, msg)| {
            let wall: f64 = msg
                .strip_prefix("mpathd-bench: clock ")?
                .trim()
                .parse()
                .ok()?;
            Some(wall - mono)
        })
        .with_context(|| format!("no clock marker in {}", path.display()))?;
    Ok(lines
        .into_iter()
        .map(|(mono, msg)| (mono + offset, msg.to_owned()))
        .collect())
}

/// `2026-11-29T07:52:09.123456Z` as epoch seconds (tracing's UTC timestamps).
fn parse_utc(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

/// The daemon's first word about the faulted path after the fault: (epoch it noticed,
/// epoch it acted if it says, the line). mpathd: its first decision on the path, dated at
/// the kernel signal behind it. multipathd: its first log line naming the path.
fn daemon_first(stack: &str, log: &str, run: &RunMeta) -> Option<(f64, Option<f64>, String)> {
    let names_path = |l: &str| {
        // Words keep their colons (a devt is "8:0"), less a trailing one ("sda: ...").
        l.split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
            .map(|w| w.trim_end_matches(':'))
            .any(|w| w == run.dev || w == run.devt)
    };
    match stack {
        "multipathd" => log.lines().find_map(|l| {
            let (t, msg) = l.split_once(' ')?;
            let t: f64 = t.parse().ok()?;
            (t >= run.fault_at && names_path(msg)).then(|| (t, None, msg.trim().to_owned()))
        }),
        "mpathd" => log.lines().find_map(|l| {
            let ts = parse_utc(l.split_whitespace().next()?)?;
            let decision = ["fail_path: ", "demote: "].iter().any(|k| l.contains(k));
            let on_path = l.contains(&format!("path={} ", run.dev))
                || l.ends_with(&format!("path={}", run.dev));
            if ts < run.fault_at || !decision || !on_path {
                return None;
            }
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k)?.parse::<f64>().ok())
            };
            let behind = field("signal_to_decision_ms=").unwrap_or(0.0)
                + field("decision_to_done_ms=").unwrap_or(0.0);
            let msg = l.split_once("mpathd::daemon: ").map_or(l, |(_, m)| m);
            Some((ts - behind / 1000.0, Some(ts), msg.trim().to_owned()))
        }),
        _ => None,
    }
}

fn rel(t: Option<f64>, t0: f64) -> Value {
    t.map_or(Value::Null, |t| json!(round3(t - t0)))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The worst wait of any IO per bin of `bin` seconds from `t0` to `t1`: the age of the
/// oldest IO still in flight at the bin's end, or the latency of the slowest one that
/// completed in it. A stall shows as a ramp, not as a gap. None: no IO in the bin.
fn worst_wait(trace: &[(f64, f64, bool)], t0: f64, t1: f64, bin: f64) -> Vec<Option<f64>> {
    let n = ((t1 - t0) / bin).ceil().max(0.0) as usize;
    let mut out: Vec<Option<f64>> = vec![None; n];
    for &(done, lat, _) in trace {
        let issue = done - lat;
        if done < t0 || issue >= t1 {
            continue;
        }
        let first = (((issue - t0) / bin).floor().max(0.0)) as usize;
        let last = ((((done - t0) / bin).floor()) as usize).min(n.saturating_sub(1));
        for (b, slot) in out.iter_mut().enumerate().take(last + 1).skip(first) {
            let end = t0 + (b + 1) as f64 * bin;
            let w = done.min(end) - issue;
            if slot.is_none_or(|v| w > v) {
                *slot = Some(w);
            }
        }
    }
    out
}

/// Seconds of the plots before the fault.
const PLOT_BEFORE_S: f64 = 3.0;
/// Seconds of the plots after the fault is removed.
const PLOT_AFTER_S: f64 = 15.0;
const PLOT_BIN_S: f64 = 0.1;

/// Every figure of one run, by the same definitions for every stack.
fn figures(run: &RunMeta) -> Result<Value> {
    let dir = run.lab_dir.join(&run.dir);
    let labio: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("labio.json"))
            .with_context(|| format!("reading {}/labio.json", dir.display()))?,
    )?;
    let trace = read_trace(&dir.join("trace.txt"))?;
    let status = read_status(&dir.join("status.tsv"))?;
    let dmesg = read_dmesg(&dir.join("dmesg.txt")).unwrap_or_default();
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let (tf, tr) = (run.fault_at, run.restored_at);

    // Latency of the IOs in flight at some point during the fault.
    let mut during: Vec<f64> = trace
        .iter()
        .filter(|(done, lat, _)| *done > tf && done - lat < tr)
        .map(|(_, lat, _)| lat * 1000.0)
        .collect();
    during.sort_by(f64::total_cmp);

    // The kernel: the first message of the faulted session's connection, and dm failing
    // the path (whoever asked).
    let n = run.session.trim_start_matches("session");
    let conn = format!("connection{n}:0");
    let sess = format!("session{n}:");
    let kernel_first = dmesg
        .iter()
        .find(|(t, m)| *t >= tf && (m.contains(&conn) || m.contains(&sess)));
    let failing = format!("Failing path {}.", run.devt);
    let dm_fail = dmesg
        .iter()
        .find(|(t, m)| *t >= tf && m.contains(&failing))
        .map(|(t, _)| *t);
    let daemon = daemon_first(&run.stack, &log, run);

    // The map: when IO left the path, and when the path was back in place.
    let before = status
        .iter()
        .take_while(|(t, _)| *t <= tf)
        .last()
        .map(|(_, g)| g.clone())
        .or_else(|| status.first().map(|(_, g)| g.clone()));
    let rerouted = status
        .iter()
        .find(|(t, g)| *t >= tf && !in_use(g, &run.devt))
        .map(|(t, _)| *t);
    // The stack acted when dm failed the path (the kernel's own stamp) or when IO left
    // it, whichever came first: a demote moves IO with the path still active in dm, and
    // a fail can follow seconds later.
    let act = [dm_fail, rerouted]
        .into_iter()
        .flatten()
        .min_by(f64::total_cmp);
    let settled =
        |g: &[Group]| usable(g, &run.devt) && before.as_ref().is_some_and(|b| shape(b) == shape(g));
    // The kernel alone never puts a path back: a path back in its records was
    // reinstated by the bench, by hand (after all paths down).
    let recovered = act.filter(|_| run.stack != "kernel").and_then(|_| {
        let at_restore = status.iter().take_while(|(t, _)| *t <= tr).last();
        if at_restore.is_some_and(|(t, g)| *t >= act.unwrap_or(tf) && settled(g)) {
            return Some(tr);
        }
        status
            .iter()
            .find(|(t, g)| *t > tr && settled(g))
            .map(|(t, _)| *t)
    });
    let detect = [kernel_first.map(|(t, _)| *t), daemon.as_ref().map(|d| d.0)]
        .into_iter()
        .flatten()
        .min_by(f64::total_cmp);

    let stall = &labio["longest_stall"];
    let plot_t0 = tf - PLOT_BEFORE_S;
    let plot_t1 = tr + PLOT_AFTER_S;
    let series: Vec<Value> = worst_wait(&trace, plot_t0, plot_t1, PLOT_BIN_S)
        .into_iter()
        .map(|w| w.map_or(Value::Null, |w| json!((w * 1e4).round() / 10.0)))
        .collect();
    let errors_during = trace
        .iter()
        .filter(|(done, _, failed)| *failed && *done > tf)
        .count();
    Ok(json!({
        "stack": run.stack,
        "fault": run.fault,
        "path": run.dev,
        "fault_s": round3(tr - tf),
        "longest_stall_s": stall["seconds"],
        "longest_stall_from_fault_s": stall["start"].as_f64().map(|s| round3(s - tf)),
        "p99_ms": percentile(&during, 99.0).map(round3),
        "max_ms": during.last().copied().map(round3),
        "ios_during_fault": during.len(),
        "errors": labio["io_errors"]["count"],
        "errors_after_fault": errors_during,
        "mismatches": labio["mismatches"]["count"],
        "ops": labio["ops"],
        "iops": labio["ops"].as_f64().zip(labio["duration_s"].as_f64()).map(|(o, d)| (o / d).round()),
        "detect_s": rel(detect, tf),
        "kernel_detect_s": rel(kernel_first.map(|(t, _)| *t), tf),
        "kernel_first_message": kernel_first.map(|(_, m)| m.clone()),
        "daemon_detect_s": rel(daemon.as_ref().map(|d| d.0), tf),
        "daemon_act_logged_s": rel(daemon.as_ref().and_then(|d| d.1), tf),
        "daemon_first_line": daemon.as_ref().map(|d| d.2.clone()),
        "act_s": rel(act, tf),
        "dm_failing_path_s": rel(dm_fail, tf),
        "io_left_path_s": rel(rerouted, tf),
        "recover_s": rel(recovered, tr),
        "left_the_path": act.is_some(),
        "back_seen_by_guest_s": rel(run.back_seen_at, tr),
        "manual_reinstate_s": rel(run.manual_reinstate_at, tr),
        "recover_wait_s": run.recover_wait_s,
        "plot": { "t0_from_fault_s": -PLOT_BEFORE_S, "bin_s": PLOT_BIN_S, "worst_wait_ms": series },
        "io_start_from_fault_s": round3(run.io_start - tf),
        "dir": dir,
    }))
}

/// The modes of the healthy-map overhead part, no daemon first (compare-lib.sh's
/// BENCH_OVH_MODES).
const OVH_MODES: [&str; 5] = [
    "none",
    "mpathd",
    "mpathd-noprobes",
    "bpftrace",
    "multipathd",
];

/// The healthy-map overhead from the `overhead` records and fio's JSON.
fn overhead(recs: &[&Value]) -> Result<Value> {
    let cpu_pct = |r: &Value| -> Option<f64> {
        let ticks = r["cpu_ticks1"].as_f64()? - r["cpu_ticks0"].as_f64()?;
        let secs = r["t1"].as_f64()? - r["t0"].as_f64()?;
        Some((ticks / r["clk_tck"].as_f64()? / secs * 1000.0).round() / 10.0)
    };
    let fio_of = |r: &Value| -> Result<Option<(f64, f64, f64)>> {
        let Some(f) = r["fio"].as_str() else {
            return Ok(None);
        };
        let dir = PathBuf::from(r["lab_dir"].as_str().unwrap_or("."));
        let text = std::fs::read_to_string(dir.join(f))
            .with_context(|| format!("reading fio's {}", dir.join(f).display()))?;
        // fio may print notes before its JSON.
        let v: Value = serde_json::from_str(&text[text.find('{').unwrap_or(0)..])
            .with_context(|| format!("fio's {f} is not JSON"))?;
        let j = &v["jobs"][0];
        let p99 = |d: &str| {
            j[d]["clat_ns"]["percentile"]["99.000000"]
                .as_f64()
                .map(|n| n / 1e6)
        };
        Ok(Some((
            j["read"]["iops"].as_f64().unwrap_or(0.0) + j["write"]["iops"].as_f64().unwrap_or(0.0),
            p99("read").unwrap_or(f64::NAN),
            p99("write").unwrap_or(f64::NAN),
        )))
    };
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.retain(|x| x.is_finite());
        v.sort_by(f64::total_cmp);
        let n = v.len();
        (n > 0).then(|| {
            if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        })
    };
    let mut modes = serde_json::Map::new();
    for mode in OVH_MODES {
        let load: Vec<&&Value> = recs
            .iter()
            .filter(|r| r["mode"] == mode && r["what"] == "load")
            .collect();
        let mut rounds = Vec::new();
        for r in &load {
            if let Some((iops, rp99, wp99)) = fio_of(r)? {
                rounds.push(
                    json!({"round": r["round"], "iops": iops.round(), "read_p99_ms": round3(rp99),
                                   "write_p99_ms": round3(wp99), "cpu_pct": cpu_pct(r),
                                   "rss_kb": r["rss_kb"], "variant": r["variant"]}),
                );
            }
        }
        let col = |k: &str| -> Vec<f64> { rounds.iter().filter_map(|r| r[k].as_f64()).collect() };
        let idle = recs
            .iter()
            .find(|r| r["mode"] == mode && r["what"] == "idle");
        modes.insert(
            mode.to_owned(),
            json!({
                "rounds": rounds.len(),
                "iops_median": median(col("iops")),
                "read_p99_ms_median": median(col("read_p99_ms")).map(round3),
                "write_p99_ms_median": median(col("write_p99_ms")).map(round3),
                "cpu_pct_under_load_median": median(col("cpu_pct")),
                "rss_kb_under_load_max": col("rss_kb").into_iter().reduce(f64::max),
                "idle": idle.map(|r| json!({"seconds": r["seconds"], "cpu_pct": cpu_pct(r),
                                             "rss_kb": r["rss_kb"], "hwm_kb": r["hwm_kb"]})),
                "variant": load.first().map(|r| r["variant"].clone()),
                "round_records": rounds,
            }),
        );
    }
    let base = modes["none"]["iops_median"].as_f64();
    let pct = |m: f64, b: f64| ((m / b - 1.0) * 1000.0).round() / 10.0;
    // IOPS in one round against no daemon in the same round: a round's modes run within
    // two minutes, while the VM's speed drifts over a run's ten (one run's own rounds of no
    // daemon spread by 45%).
    let iops_in = |modes: &serde_json::Map<String, Value>, mode: &str| -> BTreeMap<i64, f64> {
        modes[mode]["round_records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["round"].as_i64()?, r["iops"].as_f64()?)))
            .collect()
    };
    let none = iops_in(&modes, "none");
    for &mode in &OVH_MODES[1..] {
        let d = match (base, modes[mode]["iops_median"].as_f64()) {
            (Some(b), Some(m)) if b > 0.0 => json!(pct(m, b)),
            _ => Value::Null,
        };
        modes[mode]["iops_vs_none_pct"] = d;
        let paired: Vec<f64> = iops_in(&modes, mode)
            .iter()
            .filter_map(|(r, m)| none.get(r).filter(|b| **b > 0.0).map(|b| pct(*m, *b)))
            .collect();
        modes[mode]["iops_vs_none_paired_pct"] = if paired.is_empty() {
            Value::Null
        } else {
            json!({
                "rounds": paired.len(),
                "median": median(paired.clone()),
                "min": paired.iter().copied().reduce(f64::min),
                "max": paired.iter().copied().reduce(f64::max),
            })
        };
    }
    if let Some(b) = recs.iter().find(|r| r["what"] == "bpf_stats") {
        modes.insert("mpathd_bpf_stats".to_owned(), bpf_stats(b));
    }
    Ok(Value::Object(modes))
}

/// mpathd's programs over one fio run with kernel.bpf_stats_enabled: runs and nanoseconds
/// per fio IO, each program and in all. The block programs run about twice per IO (issue,
/// completion); the TCP ones once per segment of any socket.
fn bpf_stats(r: &Value) -> Value {
    let ios = r["fio_ios"].as_f64().filter(|n| *n > 0.0);
    let per_io = |x: f64| ios.map(|n| (x / n * 100.0).round() / 100.0);
    let progs: Vec<Value> = r["progs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let (cnt, ns) = (
                p["run_cnt"].as_f64().unwrap_or(0.0),
                p["run_time_ns"].as_f64().unwrap_or(0.0),
            );
            json!({
                "name": p["name"], "type": p["type"], "run_cnt": cnt, "run_time_ns": ns,
                "ns_per_run": (cnt > 0.0).then(|| (ns / cnt).round()),
                "runs_per_io": per_io(cnt), "ns_per_io": per_io(ns),
            })
        })
        .collect();
    let total: f64 = progs.iter().filter_map(|p| p["run_time_ns"].as_f64()).sum();
    json!({
        "fio_ios": r["fio_ios"], "fio_s": r["fio_s"],
        "ns_per_io": per_io(total),
        "programs": progs,
    })
}

/// Turns the guest's records of every part into compare.json's content.
fn summarize(raw: &str) -> Result<Value> {
    let recs: Vec<Value> = raw
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("a record of bench compare is not JSON")?;
    let setup = recs
        .iter()
        .find(|r| r["kind"] == "setup")
        .cloned()
        .unwrap_or(Value::Null);
    let mut runs = Vec::new();
    for r in recs.iter().filter(|r| r.get("stack").is_some()) {
        let meta: RunMeta =
            serde_json::from_value(r.clone()).context("a run record lacks a field")?;
        runs.push(figures(&meta).with_context(|| format!("{} with {}", meta.fault, meta.stack))?);
    }
    let ovh: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "overhead").collect();
    let faults: Vec<Value> = FAULTS
        .iter()
        .filter(|(f, _)| runs.iter().any(|r| r["fault"] == *f))
        .map(|(f, what)| {
            let mut by = serde_json::Map::new();
            for s in STACKS {
                by.insert(
                    (*s).to_owned(),
                    runs.iter()
                        .find(|r| r["fault"] == *f && r["stack"] == *s)
                        .cloned()
                        .unwrap_or(Value::Null),
                );
            }
            json!({"fault": f, "what": what, "stacks": by})
        })
        .collect();
    Ok(json!({
        "bench": "compare",
        "what": "each fault on the path carrying verified IO (labio, 4 workers, 4 KiB blocks, \
                 O_DIRECT, 50% reads) with the kernel alone (dmsetup map), Debian's multipathd \
                 and mpathd, all three in one VM per fault group (QEMU TCG: times are 10-50x \
                 native); then fio on a healthy map with and without each tool",
        "setup": setup,
        "faults": faults,
        "overhead": if ovh.is_empty() { Value::Null } else { overhead(&ovh)? },
        "definitions": DEFINITIONS,
    }))
}

/// What each figure means, written into compare.json (docs/bench.md says the same).
const DEFINITIONS: &str = "longest_stall_s: the longest time no IO completed (labio, whole run); \
    p99_ms/max_ms: latency of the IOs in flight at some point between the fault and its \
    removal; detect_s: from the fault to the first sign of it on the host, the kernel's \
    (a message of the path's iSCSI connection) or the daemon's (multipathd: its first log \
    line naming the path; mpathd: the kernel timestamp of the signal behind its first \
    decision on the path); act_s: from the fault to IO leaving the path (dm failing it, or \
    the map no longer sending IO to it); recover_s: from the fault's removal to the path \
    usable again in its place in the map (null: never, or it never left)";

fn fmt_s(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 10.0 => format!("{x:.1} s"),
        Some(x) => format!("{x:.2} s"),
        None => "–".into(),
    }
}

fn fmt_ms(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 10_000.0 => format!("{:.1} s", x / 1000.0),
        Some(x) if x >= 1000.0 => format!("{:.2} s", x / 1000.0),
        Some(x) if x >= 10.0 => format!("{x:.0} ms"),
        Some(x) => format!("{x:.1} ms"),
        None => "–".into(),
    }
}

/// The summary table (Markdown).
fn table(v: &Value) -> String {
    let mut t = String::from(
        "| fault | stack | longest stall | p99 / max latency during the fault | app IO errors | mismatches | detect | act | recover |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for f in v["faults"].as_array().into_iter().flatten() {
        for s in STACKS {
            let r = &f["stacks"][*s];
            if r.is_null() {
                t.push_str(&format!(
                    "| {} | {s} | not run | | | | | | |\n",
                    f["fault"].as_str().unwrap_or("")
                ));
                continue;
            }
            let recover = if r["left_the_path"] == false {
                "not needed".to_owned()
            } else if r["recover_s"].is_null() {
                match (*s, r["manual_reinstate_s"].as_f64()) {
                    ("kernel", Some(m)) => format!("never (reinstated by hand at {m:.1} s)"),
                    ("kernel", None) => "never (no daemon)".to_owned(),
                    _ => format!("not in {} s", r["recover_wait_s"]),
                }
            } else {
                fmt_s(&r["recover_s"])
            };
            t.push_str(&format!(
                "| {} | {s} | {} | {} / {} | {} | {} | {} | {} | {recover} |\n",
                f["fault"].as_str().unwrap_or(""),
                fmt_s(&r["longest_stall_s"]),
                fmt_ms(&r["p99_ms"]),
                fmt_ms(&r["max_ms"]),
                r["errors"],
                r["mismatches"],
                fmt_s(&r["detect_s"]),
                fmt_s(&r["act_s"]),
            ));
        }
    }
    let o = &v["overhead"];
    if !o.is_null() {
        t.push_str(
            "\n| healthy map | fio IOPS (vs none) | read p99 | write p99 | CPU under load | RSS under load | CPU idle | RSS idle |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        for (mode, label) in [
            ("none", "no daemon"),
            ("mpathd", "mpathd (probes on)"),
            ("mpathd-noprobes", "mpathd --no-probes"),
            ("bpftrace", "bpftrace biolatency"),
            ("multipathd", "multipathd"),
        ] {
            let m = &o[mode];
            if m["rounds"].as_u64().unwrap_or(0) == 0 {
                continue; // not in this run (or a run from before the mode existed)
            }
            let paired = &m["iops_vs_none_paired_pct"];
            let pct = match (
                m["iops_vs_none_pct"].as_f64(),
                paired["median"].as_f64(),
                paired["min"].as_f64(),
                paired["max"].as_f64(),
            ) {
                (Some(p), Some(med), Some(lo), Some(hi)) => {
                    format!(" ({p:+.1}%; paired by round {med:+.1}%, {lo:+.1} to {hi:+.1}%)")
                }
                (Some(p), ..) => format!(" ({p:+.1}%)"),
                _ => String::new(),
            };
            let kb = |x: &Value| {
                x.as_f64()
                    .map_or("–".to_owned(), |k| format!("{:.1} MiB", k / 1024.0))
            };
            let cpu = |x: &Value| x.as_f64().map_or("–".to_owned(), |c| format!("{c:.1}%"));
            t.push_str(&format!(
                "| {label} | {}{pct} | {} | {} | {} | {} | {} | {} |\n",
                m["iops_median"]
                    .as_f64()
                    .map_or("–".to_owned(), |x| format!("{x:.0}")),
                fmt_ms(&m["read_p99_ms_median"]),
                fmt_ms(&m["write_p99_ms_median"]),
                cpu(&m["cpu_pct_under_load_median"]),
                kb(&m["rss_kb_under_load_max"]),
                cpu(&m["idle"]["cpu_pct"]),
                kb(&m["idle"]["rss_kb"]),
            ));
        }
        let b = &o["mpathd_bpf_stats"];
        if let Some(total) = b["ns_per_io"].as_f64() {
            let progs: Vec<String> = b["programs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["run_cnt"].as_f64().unwrap_or(0.0) > 0.0)
                .map(|p| {
                    format!(
                        "{} {:.2} runs and {:.0} ns",
                        p["name"].as_str().unwrap_or("?"),
                        p["runs_per_io"].as_f64().unwrap_or(0.0),
                        p["ns_per_io"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            t.push_str(&format!(
                "\nmpathd's eBPF programs per fio IO (kernel bpf_stats, one {:.0} s fio run): {total:.0} ns in all; {}.\n",
                b["fio_s"].as_f64().unwrap_or(0.0),
                progs.join("; ")
            ));
        }
    }
    t
}

fn write_outputs(out: &Path, v: &Value) -> Result<()> {
    let file = out.join("compare.json");
    std::fs::write(&file, serde_json::to_string_pretty(v)? + "\n")?;
    let md = table(v);
    std::fs::write(out.join("compare.md"), &md)?;
    let mut svgs = Vec::new();
    for f in v["faults"].as_array().into_iter().flatten() {
        let name = f["fault"].as_str().unwrap_or("fault");
        let lines: Vec<svg::Line> = STACKS
            .iter()
            .enumerate()
            .filter_map(|(series, s)| {
                let r = &f["stacks"][*s];
                let p = &r["plot"];
                let pts = p["worst_wait_ms"].as_array()?;
                let (t0, bin) = (p["t0_from_fault_s"].as_f64()?, p["bin_s"].as_f64()?);
                Some(svg::Line {
                    label: (*s).to_owned(),
                    series,
                    points: pts
                        .iter()
                        .enumerate()
                        .map(|(i, y)| (t0 + (i as f64 + 0.5) * bin, y.as_f64()))
                        .collect(),
                })
            })
            .collect();
        let fault_s = STACKS
            .iter()
            .filter_map(|s| f["stacks"][*s]["fault_s"].as_f64())
            .fold(0.0, f64::max);
        let p = out.join(format!("compare-{name}.svg"));
        std::fs::write(
            &p,
            svg::latency_plot(
                &format!("{name}: worst IO wait, per 100 ms"),
                f["what"].as_str().unwrap_or(""),
                &lines,
                fault_s,
            ),
        )?;
        svgs.push(p);
    }
    let bars: Vec<(String, Vec<Option<f64>>)> = v["faults"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["fault"].as_str().unwrap_or("").to_owned(),
                STACKS
                    .iter()
                    .map(|s| f["stacks"][*s]["longest_stall_s"].as_f64())
                    .collect(),
            )
        })
        .collect();
    if !bars.is_empty() {
        let p = out.join("compare-stalls.svg");
        std::fs::write(
            &p,
            svg::stall_bars("Longest IO stall per fault", STACKS, &bars),
        )?;
        svgs.push(p);
    }
    println!("{md}");
    eprintln!(
        "wrote {} and {}",
        file.display(),
        out.join("compare.md").display()
    );
    for p in svgs {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RR: &str = "0 524288 multipath 2 0 0 0 2 1 A 0 1 0 8:0 A 0 E 0 1 0 8:16 A 0";
    const ST: &str = "0 524288 multipath 2 0 0 0 2 2 E 0 1 2 8:0 F 1 0 1 A 0 1 2 8:16 A 0 0 1";

    #[test]
    fn a_part_sets_its_knobs_below_the_header() {
        let script = "# lab: x\n# lab-timeout: 9\n: \"${BENCH_PART:=faults}\"\n. \"$LAB_LIB\"\n";
        let s = part_script(script, &PARTS[1], Path::new("/t/release/mpathd"));
        assert_eq!(
            s,
            "# lab: x\n# lab-timeout: 2400\n# set by cargo xtask bench compare:\n\
             BENCH_MPATHD='/t/release/mpathd'\nBENCH_PART=faults\n\
             BENCH_FAULTS='delay_150ms loss_5pct flapping'\n: \"${BENCH_PART:=faults}\"\n. \"$LAB_LIB\"\n"
        );
        // Every fault is in exactly one part, in the table's order.
        let in_parts: Vec<&str> = PARTS
            .iter()
            .flat_map(|p| p.faults.iter().copied())
            .collect();
        let table: Vec<&str> = FAULTS.iter().map(|f| f.0).collect();
        assert_eq!(in_parts, table);
    }

    /// The guest knows the same faults, by the same names.
    #[test]
    fn the_guest_has_every_fault() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let lib = std::fs::read_to_string(root.join("tests/lab/bench/compare-lib.sh")).unwrap();
        let line = lib
            .lines()
            .find_map(|l| l.strip_prefix("BENCH_FAULTS_ALL="))
            .expect("BENCH_FAULTS_ALL in compare-lib.sh");
        let guest: Vec<&str> = line.trim_matches('"').split(' ').collect();
        let table: Vec<&str> = FAULTS.iter().map(|f| f.0).collect();
        assert_eq!(guest, table);
    }

    #[test]
    fn status_lines_parse_into_groups() {
        let g = parse_status(RR).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(
            g[0],
            Group {
                state: 'A',
                paths: vec![("8:0".into(), 'A')]
            }
        );
        assert!(in_use(&g, "8:0") && !in_use(&g, "8:16") && usable(&g, "8:16"));
        // service-time has two per-path status words; path 1 failed, group 2 in use.
        let g2 = parse_status(ST).unwrap();
        assert_eq!(g2[0].paths, vec![("8:0".to_owned(), 'F')]);
        assert_eq!(g2[1].state, 'A');
        assert!(!in_use(&g2, "8:0") && in_use(&g2, "8:16") && !usable(&g2, "8:0"));
        assert_eq!(shape(&g), shape(&g2));
        assert!(parse_status("0 524288 linear").is_none());
        assert!(parse_status("0 1 multipath 2 0").is_none(), "cut short");
    }

    #[test]
    fn utc_timestamps() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_utc("2000-03-01T00:00:01.5Z"), Some(951_868_801.5));
        assert_eq!(parse_utc("2024-02-29T23:59:59Z"), Some(1_709_251_199.0));
        assert_eq!(parse_utc("2024-02-29 23:59:59"), None);
    }

    #[test]
    fn worst_wait_ramps_through_a_stall() {
        // IOs of 10 ms every 10 ms, then one stuck 1 s from t=0.5.
        let mut tr: Vec<(f64, f64, bool)> =
            (1..50).map(|i| (i as f64 * 0.01, 0.01, false)).collect();
        tr.push((1.5, 1.0, false));
        let w = worst_wait(&tr, 0.0, 2.0, 0.1);
        assert_eq!(w.len(), 20);
        assert!((w[2].unwrap() - 0.01).abs() < 1e-9);
        // Bin 9 ends at 1.0: the stuck IO is 0.5 s old.
        assert!((w[9].unwrap() - 0.5).abs() < 1e-9, "{:?}", w[9]);
        assert!((w[14].unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(w[16], None, "no IO after 1.5 s");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v[..1], 99.0), Some(1.0));
        assert_eq!(percentile(&[], 99.0), None);
    }

    fn meta(stack: &str, dir: &Path) -> RunMeta {
        RunMeta {
            stack: stack.into(),
            fault: "silent_loss".into(),
            dev: "sda".into(),
            devt: "8:0".into(),
            session: "session1".into(),
            io_start: 97.0,
            fault_at: 100.0,
            restored_at: 130.0,
            back_seen_at: Some(141.0),
            manual_reinstate_at: None,
            recover_wait_s: 90.0,
            dir: "run".into(),
            lab_dir: dir.to_owned(),
        }
    }

    /// A made-up run of each stack through the whole computation: the figures come from
    /// the right records.
    #[test]
    fn figures_of_a_recorded_run() {
        let base = std::env::temp_dir().join(format!("compare-test-{}", std::process::id()));
        let dir = base.join("run");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("labio.json"),
            r#"{"ops": 300, "duration_s": 40.0, "io_errors": {"count": 0}, "mismatches": {"count": 0},
                "longest_stall": {"seconds": 0.8, "start": 100.1, "end": 100.9}}"#,
        )
        .unwrap();
        // IO every 10 ms before the fault, one IO stuck 0.8 s, then IO every 10 ms again.
        let mut trace = String::from("# labio trace\n");
        for i in 0..300 {
            trace.push_str(&format!("{:.6} 10000 0\n", 97.0 + i as f64 * 0.01));
        }
        trace.push_str("100.900000 800000 0\n");
        for i in 0..100 {
            trace.push_str(&format!("{:.6} 10000 0\n", 100.91 + i as f64 * 0.01));
        }
        std::fs::write(dir.join("trace.txt"), trace).unwrap();
        let a = "0 1 multipath 2 0 0 0 2 1 A 0 1 0 8:0 A 0 E 0 1 0 8:16 A 0";
        let f = "0 1 multipath 2 0 0 0 2 2 E 0 1 0 8:0 F 1 A 0 1 0 8:16 A 0";
        let back = "0 1 multipath 2 0 0 0 2 1 A 0 1 0 8:0 A 1 E 0 1 0 8:16 A 0";
        std::fs::write(
            dir.join("status.tsv"),
            format!("96.0\t{a}\n100.7\t{f}\n140.5\t{back}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("dmesg.txt"),
            "[   10.000000] mpathd-bench: clock 96.000000\n\
             [   14.350000] connection2:0: ping timeout\n\
             [   14.600000] device-mapper: multipath: 253:0: Failing path 8:0.\n\
             [   24.900000] connection1:0: detected conn error (1022)\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("daemon.log"),
            "2025-01-01T00:00:00Z  INFO mpathd::daemon: ready maps=1\n\
             1970-01-01T00:01:40.650000Z  INFO mpathd::daemon: fail_path: active -> failed (stall): x path=sda dev=8:0 map=mpbench signal_to_decision_ms=20.0 decision_to_done_ms=30.0\n",
        )
        .unwrap();
        let m = figures(&meta("mpathd", &base)).unwrap();
        assert_eq!(m["longest_stall_s"], 0.8);
        assert_eq!(m["max_ms"], 800.0);
        assert_eq!(
            m["kernel_detect_s"], 10.9,
            "session2's message is not this path's"
        );
        assert_eq!(m["daemon_detect_s"], 0.6);
        assert_eq!(m["detect_s"], 0.6);
        assert_eq!(m["dm_failing_path_s"], 0.6);
        assert_eq!(m["io_left_path_s"], 0.7);
        assert_eq!(m["act_s"], 0.6);
        assert_eq!(m["recover_s"], 10.5);
        assert_eq!(m["left_the_path"], true);
        assert_eq!(m["iops"], 8.0);
        // A demote moves IO first with the path still active in dm; the fail follows.
        let demoted = "0 1 multipath 2 0 0 0 2 2 E 0 1 0 8:0 A 0 A 0 1 0 8:16 A 0";
        std::fs::write(
            dir.join("status.tsv"),
            format!("96.0\t{a}\n100.3\t{demoted}\n100.7\t{f}\n140.5\t{back}\n"),
        )
        .unwrap();
        let d = figures(&meta("mpathd", &base)).unwrap();
        assert_eq!(d["io_left_path_s"], 0.3);
        assert_eq!(d["dm_failing_path_s"], 0.6);
        assert_eq!(d["act_s"], 0.3);
        std::fs::write(
            dir.join("status.tsv"),
            format!("96.0\t{a}\n100.7\t{f}\n140.5\t{back}\n"),
        )
        .unwrap();
        let plot = m["plot"]["worst_wait_ms"].as_array().unwrap();
        assert_eq!(
            plot.len(),
            480,
            "3 s before, 30 s of fault, 15 s after, per 100 ms"
        );
        // The kernel alone: no daemon log, never back, even when the bench reinstated
        // the path by hand.
        let mut km = meta("kernel", &base);
        km.manual_reinstate_at = Some(139.0);
        let k = figures(&km).unwrap();
        assert_eq!(k["recover_s"], Value::Null);
        assert_eq!(k["manual_reinstate_s"], 9.0);
        assert!(
            table(&json!({"faults": [{"fault": "x", "stacks": {"kernel": k}}]}))
                .contains("never (reinstated by hand at 9.0 s)")
        );
        std::fs::write(dir.join("status.tsv"), format!("96.0\t{a}\n100.7\t{f}\n")).unwrap();
        let k = figures(&meta("kernel", &base)).unwrap();
        assert_eq!(k["daemon_detect_s"], Value::Null);
        assert_eq!(k["detect_s"], 10.9);
        assert_eq!(k["recover_s"], Value::Null);
        // Nothing ever left the path: nothing to recover.
        std::fs::write(dir.join("status.tsv"), format!("96.0\t{a}\n")).unwrap();
        std::fs::write(
            dir.join("dmesg.txt"),
            "[   10.000000] mpathd-bench: clock 96.000000\n",
        )
        .unwrap();
        let n = figures(&meta("kernel", &base)).unwrap();
        assert_eq!(n["left_the_path"], false);
        assert_eq!(n["act_s"], Value::Null);
        let v = json!({"faults": [{"fault": "silent_loss", "stacks": {"kernel": k, "multipathd": null, "mpathd": m}}]});
        let t = table(&v);
        assert!(t.contains("| silent_loss | kernel | 0.80 s | 10 ms / 800 ms | 0 | 0 | 10.9 s | 0.60 s | never (no daemon) |"), "{t}");
        assert!(t.contains("| silent_loss | multipathd | not run |"), "{t}");
        std::fs::remove_dir_all(&base).ok();
    }

    #[test]
    fn overhead_medians_and_cost_against_no_daemon() {
        let base = std::env::temp_dir().join(format!("compare-ovh-{}", std::process::id()));
        std::fs::create_dir_all(base.join("o")).unwrap();
        let fio = |iops: f64, p99_us: f64| {
            format!(
                "note: fio says hello\n{{\"jobs\": [{{\"read\": {{\"iops\": {}, \"clat_ns\": {{\"percentile\": {{\"99.000000\": {}}}}}}}, \
                 \"write\": {{\"iops\": {}, \"clat_ns\": {{\"percentile\": {{\"99.000000\": {}}}}}}}}}]}}",
                iops * 0.7,
                p99_us * 1000.0,
                iops * 0.3,
                p99_us * 2000.0
            )
        };
        let mut recs = Vec::new();
        for (mode, r, iops, cpu) in [
            ("none", 1, 1000.0, None),
            ("none", 2, 1200.0, None),
            ("mpathd", 1, 900.0, Some(50.0)),
            ("mpathd", 2, 1000.0, Some(30.0)),
        ] {
            let f = format!("o/fio-{mode}-r{r}.json");
            std::fs::write(base.join(&f), fio(iops, 500.0)).unwrap();
            recs.push(json!({"kind": "overhead", "what": "load", "mode": mode, "round": r,
                "t0": 0.0, "t1": 10.0, "cpu_ticks0": cpu.map(|_| 100.0), "cpu_ticks1": cpu.map(|c| 100.0 + c),
                "clk_tck": 100, "rss_kb": cpu.map(|_| 20480), "fio": f, "lab_dir": base}));
        }
        recs.push(json!({"kind": "overhead", "what": "idle", "mode": "mpathd", "round": 1, "seconds": 60,
            "t0": 0.0, "t1": 60.0, "cpu_ticks0": 0, "cpu_ticks1": 30, "clk_tck": 100, "rss_kb": 10240,
            "hwm_kb": 11000, "fio": null, "lab_dir": base}));
        recs.push(json!({"kind": "overhead", "what": "bpf_stats", "mode": "mpathd", "fio_ios": 1000,
            "fio_s": 15.0, "progs": [
                {"name": "block_issue", "type": "tracepoint", "run_cnt": 1000, "run_time_ns": 80000},
                {"name": "tcp_probe", "type": "tracepoint", "run_cnt": 3000, "run_time_ns": 90000},
                {"name": "idle_prog", "type": "tracepoint", "run_cnt": 0, "run_time_ns": 0}]}));
        let refs: Vec<&Value> = recs.iter().collect();
        let o = overhead(&refs).unwrap();
        std::fs::remove_dir_all(&base).ok();
        let b = &o["mpathd_bpf_stats"];
        assert_eq!(b["ns_per_io"], 170.0);
        assert_eq!(b["programs"][1]["runs_per_io"], 3.0);
        assert_eq!(b["programs"][1]["ns_per_run"], 30.0);
        assert_eq!(b["programs"][2]["ns_per_run"], Value::Null);
        assert_eq!(o["none"]["iops_median"], 1100.0);
        assert_eq!(o["mpathd"]["iops_median"], 950.0);
        assert_eq!(o["mpathd"]["iops_vs_none_pct"], -13.6);
        // Paired by round: 900 against 1000 (-10%), 1000 against 1200 (-16.7%).
        let p = &o["mpathd"]["iops_vs_none_paired_pct"];
        assert_eq!(p["rounds"], 2);
        assert_eq!(p["min"], -16.7);
        assert_eq!(p["max"], -10.0);
        assert_eq!(p["median"], -13.35);
        assert_eq!(o["multipathd"]["iops_vs_none_paired_pct"], Value::Null);
        assert_eq!(o["mpathd"]["read_p99_ms_median"], 0.5);
        assert_eq!(o["mpathd"]["write_p99_ms_median"], 1.0);
        // 30 and 50 ticks of 10 ms over 10 s: 3% and 5%.
        assert_eq!(o["mpathd"]["cpu_pct_under_load_median"], 4.0);
        assert_eq!(o["mpathd"]["idle"]["cpu_pct"], 0.5);
        assert_eq!(o["none"]["cpu_pct_under_load_median"], Value::Null);
        assert_eq!(o["multipathd"]["rounds"], 0);
        let t = table(&json!({"faults": [], "overhead": o}));
        assert!(t.contains("| mpathd (probes on) | 950 (-13.6%; paired by round -13.3%, -16.7 to -10.0%) | 0.5 ms | 1.0 ms | 4.0% | 20.0 MiB | 0.5% | 10.0 MiB |"), "{t}");
        // Modes with no rounds have no row.
        assert!(!t.contains("| multipathd |"), "{t}");
        assert!(
            t.contains(
                "170 ns in all; block_issue 1.00 runs and 80 ns; tcp_probe 3.00 runs and 90 ns."
            ),
            "{t}"
        );
    }

    #[test]
    fn multipathd_first_line_names_the_path() {
        let base = std::env::temp_dir();
        let run = meta("multipathd", &base);
        let log = "99.0 sda: something before the fault\n\
                   100.2 mpbench: load table [0 1 multipath]\n\
                   100.3 sdab: another device\n\
                   104.5 checker failed path 8:0 in map mpbench\n\
                   104.6 sda: mark as failed\n";
        let d = daemon_first("multipathd", log, &run).unwrap();
        assert_eq!(d.0, 104.5);
        assert_eq!(d.2, "checker failed path 8:0 in map mpbench");
        let d = daemon_first(
            "multipathd",
            "100.1 sdab: no\n103.0 sda: mark as failed\n",
            &run,
        )
        .unwrap();
        assert_eq!((d.0, d.2.as_str()), (103.0, "sda: mark as failed"));
        assert!(daemon_first("kernel", log, &run).is_none());
    }
}
