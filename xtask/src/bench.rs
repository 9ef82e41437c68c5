//! `cargo xtask bench NAME`: benchmarks, each writing JSON under target/bench/.
//!
//! Benchmarks are separate from tests: their figures are compared against targets in the
//! JSON they write, never asserted on by a timed test.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

/// (name, what it measures)
const BENCHES: &[(&str, &str)] = &[(
    "probes",
    "block probe cost per IO (kernel BPF stats), fio IOPS with probes attached vs detached, \
     kernel-to-daemon event latency; host kernel, root",
)];

pub fn run(root: &Path, name: &str) -> Result<()> {
    match name {
        "probes" => cargo_bench(root, "probes"),
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

/// Runs a `harness = false` bench target of multipath-daemon with `--out target/bench/NAME.json`.
fn cargo_bench(root: &Path, name: &str) -> Result<()> {
    let out = root.join("target/bench").join(format!("{name}.json"));
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
    Ok(())
}
