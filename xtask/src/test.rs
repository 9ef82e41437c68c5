//! `cargo xtask test`: every check the project has, summed into one closing line.
//!
//! fmt and clippy count as one test each, every Rust test counts as one, every operations
//! check (rules, dashboards, unit: see ops.rs) counts as one, every fuzz target's short run
//! counts as one, and every lab scenario counts as one. The last line is `N passed, N failed`; any failure exits 1.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result};

use crate::{bootstrap, fuzz, lab, ops, package};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the lab scenarios (QEMU); CI never passes this.
    #[arg(long)]
    no_lab: bool,
    /// Skip the short runs of the fuzz targets (cargo-fuzz, nightly).
    #[arg(long)]
    no_fuzz: bool,
}

/// How long each fuzz target runs here; `cargo xtask fuzz NAME --seconds N` runs longer.
const FUZZ_SECONDS: u64 = 10;

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, name: &str, ok: bool, secs: f64) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.failures.push(name.to_owned());
        }
        eprintln!(
            "xtask test: {name}: {} ({secs:.1} s)",
            if ok { "ok" } else { "FAILED" }
        );
    }
}

pub fn run(root: &Path, args: TestArgs) -> Result<()> {
    let start = Instant::now();
    bootstrap::ensure(root, bootstrap::Need::All)?;
    host_prepare();
    let mut tally = Tally::default();
    let mut consoles = Vec::new();

    let t = Instant::now();
    let ok = cargo(root, &["fmt", "--all", "--check"])?;
    tally.record("cargo fmt --check", ok, t.elapsed().as_secs_f64());

    let t = Instant::now();
    let ok = cargo(root, &["clippy", "--all-targets", "--", "-D", "warnings"])?;
    tally.record("cargo clippy -D warnings", ok, t.elapsed().as_secs_f64());

    let t = Instant::now();
    let (passed, failed, ok) = cargo_test(root)?;
    tally.passed += passed;
    tally.failed += failed;
    if !ok && failed == 0 {
        // The build or a test binary broke before reporting: count it, never hide it.
        tally.record(
            "cargo test (did not complete)",
            false,
            t.elapsed().as_secs_f64(),
        );
    } else {
        eprintln!(
            "xtask test: cargo test: {passed} passed, {failed} failed ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
        if failed > 0 {
            tally.failures.push(format!("{failed} Rust test(s)"));
        }
    }

    // Prometheus rules, dashboards, the systemd unit: one item each.
    for c in ops::run_all(root) {
        if !c.ok || !c.detail.is_empty() {
            eprintln!("xtask test: {}: {}", c.name, c.detail.trim_end());
        }
        tally.record(&c.name, c.ok, c.secs);
    }

    if args.no_fuzz {
        eprintln!("xtask test: fuzz runs skipped (--no-fuzz)");
    } else {
        fuzz_runs(root, &mut tally);
    }

    if args.no_lab {
        eprintln!("xtask test: lab scenarios skipped (--no-lab)");
    } else {
        // The Debian package: one item; the package-install scenario installs it.
        let t = Instant::now();
        let r = package::build(root);
        if let Err(e) = &r {
            eprintln!("xtask test: cargo xtask package: {e:#}");
        }
        tally.record("cargo xtask package", r.is_ok(), t.elapsed().as_secs_f64());
        for o in lab::run_builtin_scenarios(root) {
            let name = format!("lab {}", o.name);
            if !o.passed {
                eprintln!("xtask test: {name}: {}", o.detail);
                if let Some(c) = &o.console {
                    consoles.push((name.clone(), c.clone()));
                }
            }
            tally.record(&name, o.passed, o.wall.as_secs_f64());
        }
    }

    // CI keeps only the tail of the output: the failed scenarios' last console lines
    // (the lab prints the daemon's view there on a failure) go last, beside the summary.
    for (name, path) in &consoles {
        print_tail(name, path, CONSOLE_TAIL_LINES);
    }

    eprintln!(
        "xtask test: total time {:.0} s",
        start.elapsed().as_secs_f64()
    );
    if !tally.failures.is_empty() {
        eprintln!("xtask test: failed: {}", tally.failures.join(", "));
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// How much of a failed scenario's console the end of the run repeats.
const CONSOLE_TAIL_LINES: usize = 80;

fn print_tail(name: &str, path: &Path, lines: usize) {
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("xtask test: {name}: no console log at {}", path.display());
        return;
    };
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    eprintln!(
        "xtask test: {name}: the last {} lines of {}:",
        all.len() - from,
        path.display()
    );
    for l in &all[from..] {
        eprintln!("  {l}");
    }
}

/// Builds the fuzz targets once, then runs each for [`FUZZ_SECONDS`]: one item each.
fn fuzz_runs(root: &Path, tally: &mut Tally) {
    let t = Instant::now();
    if let Err(e) = fuzz::build(root, true) {
        eprintln!("xtask test: {e:#}");
        for (name, _) in fuzz::TARGETS {
            tally.record(&format!("fuzz {name} (not built)"), false, 0.0);
        }
        return;
    }
    eprintln!(
        "xtask test: fuzz targets built ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    for (name, _) in fuzz::TARGETS {
        let label = format!("fuzz {name} {FUZZ_SECONDS} s");
        match fuzz::run_target(root, name, FUZZ_SECONDS, true) {
            Ok(o) => {
                if !o.passed {
                    eprintln!("xtask test: {label}:\n{}", o.detail);
                }
                tally.record(&label, o.passed, o.wall.as_secs_f64());
            }
            Err(e) => {
                eprintln!("xtask test: {label}: {e:#}");
                tally.record(&label, false, 0.0);
            }
        }
    }
}

/// Host state the kernel tests need that a fresh machine may lack.
fn host_prepare() {
    let tracing = Path::new("/sys/kernel/tracing");
    if tracing.is_dir() && !tracing.join("events").exists() {
        eprintln!(
            "xtask test: mounting tracefs on /sys/kernel/tracing (the eBPF tests read tracepoint formats)"
        );
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
    }
}

fn cargo(root: &Path, args: &[&str]) -> Result<bool> {
    let status = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    Ok(status.success())
}

/// Runs `cargo test`, streaming its output, and sums its `test result:` lines.
fn cargo_test(root: &Path) -> Result<(u64, u64, bool)> {
    let mut child = Command::new(env!("CARGO"))
        .args(["test", "--no-fail-fast"])
        .current_dir(root)
        // Kernel tests fail instead of skipping when they cannot run.
        .env("MPATHD_TEST_STRICT", "1")
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some((p, f)) = parse_result_line(&line) {
            passed += p;
            failed += f;
        }
    }
    let ok = child.wait().context("waiting for cargo test")?.success();
    Ok((passed, failed, ok))
}

/// `test result: ok. 4 passed; 0 failed; 0 ignored; ...` -> (4, 0)
fn parse_result_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let num = |label: &str| -> Option<u64> {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(label))
            .and_then(|n| n.rsplit(' ').next()?.parse().ok())
    };
    Some((num(" passed")?, num(" failed")?))
}

#[cfg(test)]
mod tests {
    use super::parse_result_line;

    #[test]
    fn parses_cargo_test_result_lines() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s"
            ),
            Some((4, 0))
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured"),
            Some((0, 1))
        );
        assert_eq!(parse_result_line("test foo ... ok"), None);
    }
}
