//! `cargo xtask lab`: a real LIO iSCSI target, open-iscsi and dm-multipath in a QEMU guest.
//!
//! The host kernel has no device-mapper, SCSI or iSCSI, so every scenario runs in its own
//! VM (vm.rs). Scenarios are bash scripts under tests/lab/scenarios/ that source
//! tests/lab/lib.sh; the guest sees the host's root read-only, so it runs the host's
//! binaries (labio, mpathd) at their host paths, and writes its results to
//! target/lab/<name>/ through a writable share. report.rs turns them into report.json.

mod console;
mod report;
mod vcpu;
mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use report::Report;

#[derive(clap::Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub cmd: LabCmd,
}

#[derive(clap::Subcommand)]
pub enum LabCmd {
    /// List the built-in scenarios
    List,
    /// Run one scenario by name or by path to a scenario file anywhere
    Run {
        /// A built-in scenario name (see `lab list`) or a path to a scenario .sh file.
        scenario: String,
        /// Kill the VM after this many seconds (default: the scenario's `# lab-timeout:`, else 600).
        #[arg(long)]
        timeout: Option<u64>,
        /// Echo every guest console line, not only the scenario's steps and events.
        #[arg(long, short)]
        verbose: bool,
    },
}

pub struct ScenarioOutcome {
    pub name: String,
    pub passed: bool,
    pub wall: std::time::Duration,
    pub detail: String,
    /// The guest console's log, when the scenario got as far as booting.
    pub console: Option<PathBuf>,
}

pub fn run(root: &Path, args: LabArgs) -> Result<()> {
    match args.cmd {
        LabCmd::List => {
            for s in builtin_scenarios(root)? {
                let tag = if s.baseline { " [baseline]" } else { "" };
                println!("{:<18} {}{tag}", s.name, s.description);
            }
            Ok(())
        }
        LabCmd::Run {
            scenario,
            timeout,
            verbose,
        } => {
            let s = Scenario::resolve(root, &scenario)?;
            let echo = if verbose { Echo::All } else { Echo::Progress };
            let r = run_scenario(root, &s, timeout.map(Duration::from_secs), echo)?;
            r.print_summary();
            r.into_result()
        }
    }
}

/// Runs every built-in scenario one VM at a time (used by `cargo xtask test`).
pub fn run_builtin_scenarios(root: &Path) -> Vec<ScenarioOutcome> {
    let list = match builtin_scenarios(root) {
        Ok(l) => l,
        Err(e) => {
            return vec![ScenarioOutcome {
                name: "lab".into(),
                passed: false,
                wall: Duration::ZERO,
                detail: format!("{e:#}"),
                console: None,
            }];
        }
    };
    list.iter()
        .filter(|s| {
            if s.baseline {
                eprintln!(
                    "lab: {} is a baseline of the kernel alone, not run here (cargo xtask lab run {})",
                    s.name, s.name
                );
            }
            !s.baseline
        })
        .map(|s| {
            let t0 = Instant::now();
            match run_scenario(root, s, None, Echo::Progress) {
                Ok(r) => {
                    r.print_summary();
                    let detail = r.one_line();
                    ScenarioOutcome {
                        name: s.name.clone(),
                        passed: r.passed,
                        wall: r.wall,
                        detail,
                        console: Some(r.out_dir.join("console.log")),
                    }
                }
                Err(e) => ScenarioOutcome {
                    name: s.name.clone(),
                    passed: false,
                    wall: t0.elapsed(),
                    detail: format!("{e:#}"),
                    console: None,
                },
            }
        })
        .collect()
}

/// Runs one built-in scenario and returns its output directory (benchmarks read the
/// figures they need from it); an error if it failed.
pub fn run_builtin(root: &Path, name: &str) -> Result<PathBuf> {
    let s = Scenario::resolve(root, name)?;
    let r = run_scenario(root, &s, None, Echo::Progress)?;
    r.print_summary();
    let out = r.out_dir.clone();
    r.into_result()?;
    Ok(out)
}

/// Boots the lab and runs the same fault on the same IO twice: with the kernel alone (a
/// map made by dmsetup) and with mpathd managing the map; prints both timelines and the
/// two longest stalls side by side.
pub fn demo(root: &Path) -> Result<()> {
    let s = Scenario {
        name: "demo".into(),
        path: root.join("tests/lab/demo.sh"),
        description: String::new(),
        timeout: None,
        baseline: false,
    };
    if !s.path.exists() {
        bail!(
            "{} is missing: the demo script ships with the repository",
            s.path.display()
        );
    }
    println!(
        "demo: a real LIO iSCSI target with two portals, open-iscsi and dm-multipath in a QEMU VM;\n\
         the active portal's link is cut during verified IO, first with the kernel alone, then with mpathd"
    );
    let r = run_scenario(root, &s, Some(Duration::from_secs(480)), Echo::Scenario)?;
    let phases = ["kernel", "mpathd"];
    for (i, p) in phases.iter().enumerate() {
        println!();
        println!(
            "{} (times relative to the link cut):",
            if i == 0 {
                "Kernel alone"
            } else {
                "mpathd managing the map"
            }
        );
        r.report.print_phase_timeline(
            &format!("phase: {p}"),
            &["fault", "restore", "dm", "io", "mpathd"],
        );
    }
    println!();
    println!(
        "Side by side (labio, O_DIRECT, checksummed 4 KiB blocks, every block re-read at the end):"
    );
    println!(
        "  {:<10} {:>16} {:>8} {:>10} {:>11} {:>9}",
        "", "longest stall", "IOs", "app errors", "mismatches", "p99"
    );
    for p in phases {
        let f = r.out_dir.join(format!("labio-{p}.json"));
        let v: Option<serde_json::Value> = std::fs::read_to_string(&f)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let num = |ptr: &str| v.as_ref().and_then(|v| v.pointer(ptr)?.as_f64());
        match (num("/longest_stall/seconds"), num("/ops")) {
            (Some(stall), Some(ops)) => println!(
                "  {:<10} {:>14.3} s {:>8} {:>10} {:>11} {:>6.1} ms",
                p,
                stall,
                ops,
                num("/io_errors/count").unwrap_or(0.0),
                num("/mismatches/count").unwrap_or(0.0),
                num("/latency_ms/p99").unwrap_or(0.0)
            ),
            _ => println!("  {p:<10} (no verifier report: the phase did not finish)"),
        }
    }
    r.print_summary();
    r.into_result()
}

/// A scenario file and what its header says.
pub struct Scenario {
    pub name: String,
    pub path: PathBuf,
    pub description: String,
    /// From a `# lab-timeout: SECONDS` header line.
    pub timeout: Option<Duration>,
    /// `# lab-suite: baseline`: the kernel alone (a map made by dmsetup), run by name or by
    /// the benchmarks, not by `cargo xtask test`.
    pub baseline: bool,
}

impl Scenario {
    fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        let header = |key: &str| {
            text.lines()
                .take(20)
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        };
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into());
        Ok(Scenario {
            name,
            path: path
                .canonicalize()
                .with_context(|| format!("resolving {}", path.display()))?,
            description: header("# lab:").unwrap_or_default(),
            timeout: header("# lab-timeout:")
                .and_then(|v| v.parse().ok())
                .map(Duration::from_secs),
            baseline: header("# lab-suite:").is_some_and(|v| v == "baseline"),
        })
    }

    /// A built-in name, or a path to a scenario file anywhere.
    fn resolve(root: &Path, arg: &str) -> Result<Self> {
        let p = Path::new(arg);
        if arg.contains('/') || arg.ends_with(".sh") || p.exists() {
            return Self::load(p);
        }
        let f = scenarios_dir(root).join(format!("{arg}.sh"));
        if !f.exists() {
            let names: Vec<String> = builtin_scenarios(root)?
                .into_iter()
                .map(|s| s.name)
                .collect();
            bail!(
                "no built-in scenario {arg:?}; built-in: {}; or give a path to a .sh file",
                names.join(", ")
            );
        }
        Self::load(&f)
    }
}

fn scenarios_dir(root: &Path) -> PathBuf {
    root.join("tests/lab/scenarios")
}

fn builtin_scenarios(root: &Path) -> Result<Vec<Scenario>> {
    let dir = scenarios_dir(root);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    // The cheapest first, so a broken lab shows up quickly.
    let order = ["two-paths", "link-cut", "silent-loss", "all-paths-down"];
    files.sort_by_key(|p| {
        let stem = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        (
            order.iter().position(|o| *o == stem).unwrap_or(order.len()),
            stem,
        )
    });
    files.iter().map(|p| Scenario::load(p)).collect()
}

/// Which console lines to echo while the VM runs.
#[derive(Clone, Copy, PartialEq)]
enum Echo {
    /// Boot progress, the scenario's events and steps, verifier lines, failures.
    Progress,
    /// Everything the scenario prints (the demo: topology tables too), no kernel boot noise.
    Scenario,
    All,
}

/// The result of one scenario run.
pub struct ScenarioRun {
    pub name: String,
    pub passed: bool,
    pub wall: Duration,
    pub report: Report,
    pub out_dir: PathBuf,
}

impl ScenarioRun {
    fn one_line(&self) -> String {
        let r = &self.report;
        match (&r.labio_summary(), self.passed) {
            (Some(io), true) => format!("wall {:.1} s; {io}", self.wall.as_secs_f64()),
            (None, true) => format!("wall {:.1} s", self.wall.as_secs_f64()),
            (_, false) => format!(
                "{} (console log: {})",
                r.failure.as_deref().unwrap_or("failed"),
                self.out_dir.join("console.log").display()
            ),
        }
    }

    fn print_summary(&self) {
        let status = if self.passed { "PASSED" } else { "FAILED" };
        eprintln!(
            "lab: {} {status} in {:.1} s: {}",
            self.name,
            self.wall.as_secs_f64(),
            self.one_line()
        );
        if let Some(a) = &self.report.kernel_alarm {
            eprintln!(
                "lab: guest console around the {} (host load {}, {}):",
                a.kind.describe(),
                a.host_loadavg.as_deref().unwrap_or("unknown"),
                a.host_cpu_pressure
                    .as_deref()
                    .unwrap_or("cpu pressure unknown")
            );
            print_excerpt(&a.excerpt);
        } else if !self.report.timeout_dump.is_empty() {
            eprintln!("lab: guest console after sysrq l, w at the timeout:");
            print_excerpt(&self.report.timeout_dump);
        }
        for w in &self.report.kernel_warnings {
            eprintln!("lab: kernel warning: {w}");
        }
        eprintln!("lab: report {}", self.out_dir.join("report.json").display());
    }

    fn into_result(self) -> Result<()> {
        if self.passed {
            return Ok(());
        }
        bail!(
            "lab scenario {} failed: {}\n  console log: {}\n  report: {}",
            self.name,
            self.report.failure.as_deref().unwrap_or("unknown failure"),
            self.out_dir.join("console.log").display(),
            self.out_dir.join("report.json").display()
        )
    }
}

/// Builds labio, prepares the kernel and initramfs, boots one VM for the scenario and
/// writes target/lab/<name>/report.json.
fn run_scenario(
    root: &Path,
    s: &Scenario,
    timeout: Option<Duration>,
    echo: Echo,
) -> Result<ScenarioRun> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = target.canonicalize().unwrap_or(target);
    let (labio, mpathd, dm_kernel_test) = build_guest_binaries(root, &target)?;
    let lab_dir = target.join("lab");
    std::fs::create_dir_all(&lab_dir).with_context(|| format!("creating {}", lab_dir.display()))?;
    let kernel = vm::Kernel::find()?;
    let vmlinux = vm::ensure_vmlinux(&lab_dir, &kernel)?;
    let initramfs = vm::ensure_initramfs(&lab_dir, &kernel)?;

    let out_dir = lab_dir.join(&s.name);
    // Fresh results only: a stale labio.json must never pass for this run's.
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let lib = root.join("tests/lab/lib.sh");
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let run_sh = format!(
        "# Written by cargo xtask lab: the environment of the scenario, then the scenario.\n\
         export LAB_NAME={} LAB_OUT={} LAB_LIB={} LABIO={} MPATHD={} MPATHD_ROOT={} LAB_SCENARIO_FILE={} DM_KERNEL_TEST={}\n\
         cd \"$LAB_OUT\" || exit 125\n\
         exec /bin/bash \"$LAB_OUT/scenario.sh\"\n",
        shell_quote(&s.name),
        q(&out_dir),
        q(&lib),
        q(&labio),
        q(&mpathd),
        q(root),
        q(&s.path),
        q(&dm_kernel_test)
    );
    std::fs::write(out_dir.join("run.sh"), run_sh)?;
    // The guest has its own /tmp (and may not see other host paths the same way): it runs
    // a copy of the scenario from the shared output dir.
    std::fs::copy(&s.path, out_dir.join("scenario.sh"))
        .with_context(|| format!("copying {}", s.path.display()))?;
    let console_log = out_dir.join("console.log");
    let timeout = timeout.or(s.timeout).unwrap_or(Duration::from_secs(600));
    eprintln!(
        "lab: {}: booting kernel {} under QEMU (TCG), timeout {} s",
        s.name,
        kernel.version,
        timeout.as_secs()
    );
    let spec = vm::VmSpec {
        vmlinux: &vmlinux,
        initramfs: &initramfs,
        out_dir: &out_dir,
        console_log: &console_log,
        timeout,
    };
    let mut fail_line = None;
    let mut last_step = None::<String>;
    let mut passed_marker = false;
    let mut in_scenario = false;
    let res = vm::run_vm(&spec, |line| {
        if let Some(i) = line.find("] step: ").filter(|_| line.starts_with("[lab ")) {
            last_step = Some(line[i + "] step: ".len()..].to_string());
        }
        if let Some(f) = line.strip_prefix("LAB-FAIL ") {
            fail_line = Some(f.to_string());
        }
        passed_marker |= line.starts_with("LAB-PASS");
        if line.contains("LAB-INIT-DONE") {
            in_scenario = true;
            eprintln!("lab: guest up, running {}", s.path.display());
            return;
        }
        let show = match echo {
            Echo::All => true,
            // Kernel messages start with "[  12.345678]"; the scenario's own lines do not.
            Echo::Scenario => in_scenario && !line.starts_with("[ "),
            Echo::Progress => is_progress(line),
        };
        if show
            || line.contains("Kernel panic")
            || line.starts_with("lab-init:")
            || line.starts_with("qemu:")
        {
            eprintln!("  | {line}");
        }
    })?;
    let step = last_step.as_deref().unwrap_or("boot");
    let failure = if let Some(a) = &res.alarm {
        // The kernel's word first: a scenario step that failed after it is a consequence.
        Some(format!(
            "guest kernel {} at {:.1} s, in step '{step}': {} (host: {}; stacks in report.json kernel_alarm.excerpt)",
            a.kind.describe(),
            a.at_s,
            a.line.trim(),
            a.host_vcpus
                .as_ref()
                .map(|v| v.verdict.clone())
                .unwrap_or_else(|| format!(
                    "load {}",
                    a.host_loadavg.as_deref().unwrap_or("unknown")
                )),
        ))
    } else if res.timed_out {
        Some(format!(
            "timed out after {} s in step '{}'{}",
            timeout.as_secs(),
            step,
            fail_line
                .as_deref()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default()
        ))
    } else if let Some(f) = fail_line {
        Some(f)
    } else {
        match res.exit_code {
            Some(0) if passed_marker => None,
            Some(0) => Some("the scenario exited 0 without calling lab_done".into()),
            Some(c) => Some(format!("the scenario exited with {c}")),
            None => Some(
                "the VM stopped without reporting an exit code (kernel panic or init failure?)"
                    .into(),
            ),
        }
    };
    let report = Report::build(s, &out_dir, &res, failure);
    report.write(&out_dir.join("report.json"))?;
    Ok(ScenarioRun {
        name: s.name.clone(),
        passed: report.passed,
        wall: res.wall,
        report,
        out_dir,
    })
}

/// The console lines of a kernel alarm, cut to what a terminal shows (report.json and
/// console.log have them all).
fn print_excerpt(lines: &[String]) {
    const MAX: usize = 120;
    for l in lines.iter().take(MAX) {
        eprintln!("  | {l}");
    }
    if lines.len() > MAX {
        eprintln!("  | ... {} more lines in report.json", lines.len() - MAX);
    }
}

fn is_progress(line: &str) -> bool {
    [
        "[lab ",
        "LAB-",
        "labio:",
        "verifier:",
        "  path ",
        "mpatha (",
    ]
    .iter()
    .any(|p| line.starts_with(p))
}

/// The guest runs the verifier, mpathd and the dm_kernel tests from the host's target dir.
fn build_guest_binaries(root: &Path, target: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    Ok((
        build_bin(root, target, "xtask", "labio")?,
        build_bin(root, target, "multipath-daemon", "mpathd")?,
        build_test(root, "multipath-daemon", "dm_kernel")?,
    ))
}

/// Builds an integration test without running it and returns its executable, which
/// cargo names with a hash: it is the artifact's `executable` in cargo's JSON messages.
fn build_test(root: &Path, package: &str, test: &str) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let what = format!("cargo test -p {package} --test {test} --no-run");
    let out = Command::new(cargo)
        .args(["test", "--quiet", "-p", package, "--test", test, "--no-run"])
        .arg("--message-format=json")
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "building test {test} failed ({}); run `{what}` to see why",
            out.status
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == test)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("{what} named no executable"))
}

fn build_bin(root: &Path, target: &Path, package: &str, bin: &str) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let what = format!("cargo build -p {package} --bin {bin}");
    let st = Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(root)
        .status()
        .with_context(|| format!("running {what}"))?;
    if !st.success() {
        bail!("building {bin} failed ({st}); run `{what}` to see why");
    }
    let p = target.join("debug").join(bin);
    if !p.exists() {
        bail!("{} missing after cargo build", p.display());
    }
    Ok(p)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_header_and_name() {
        let dir = std::env::temp_dir().join(format!("lab-hdr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("my-case.sh");
        std::fs::write(
            &f,
            "# lab: does a thing\n# lab-timeout: 123\n. \"$LAB_LIB\"\n",
        )
        .unwrap();
        let s = Scenario::load(&f).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(s.name, "my-case");
        assert_eq!(s.description, "does a thing");
        assert_eq!(s.timeout, Some(Duration::from_secs(123)));
    }

    #[test]
    fn builtin_scenarios_are_listed_cheapest_first() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let names: Vec<String> = builtin_scenarios(root)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names[..4],
            ["two-paths", "link-cut", "silent-loss", "all-paths-down"]
        );
        let baselines: Vec<String> = builtin_scenarios(root)
            .unwrap()
            .into_iter()
            .filter(|s| s.baseline)
            .map(|s| s.name)
            .collect();
        assert_eq!(baselines, ["link-cut", "silent-loss", "all-paths-down"]);
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
    }
}
