//! `cargo xtask`: the project's commands. Each one installs what it needs first.

mod bench;
mod bootstrap;
mod fuzz;
mod lab;
mod ops;
mod package;
mod test;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test and demonstrate mpathd"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot the lab and cut the active portal's link during verified IO twice: with the
    /// kernel alone (a map made by dmsetup), then with mpathd managing the map; print both
    /// timelines and the longest IO stalls side by side.
    Demo,
    /// Run every test: fmt, clippy, unit tests, host-kernel eBPF tests (root), short fuzz
    /// runs, lab scenarios.
    Test(test::TestArgs),
    /// The lab VM: a real LIO iSCSI target, open-iscsi and dm-multipath under QEMU.
    Lab(lab::LabArgs),
    /// Run a benchmark by name and write its JSON under target/bench/.
    Bench(BenchArgs),
    /// Fuzz the parsers with cargo-fuzz: `fuzz list`, `fuzz NAME`, `fuzz all`.
    Fuzz(fuzz::FuzzArgs),
    /// Install what the build and tests need (Debian packages, nightly rust-src, bpf-linker,
    /// cargo-fuzz, cargo-deb, a venv with grafana-foundation-sdk).
    Bootstrap,
    /// Build the Debian package (cargo-deb): the binary, the unit, the default config, the
    /// man page and shell completions, dashboards and rules. Written to target/debian/.
    Package,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The benchmark to run: probes (eBPF block probe cost, IOPS with and without them,
    /// event latency), tcp (TCP probe cost; fault-to-event times in the lab), scrape (one
    /// Prometheus scrape of 1024 paths: render and HTTP times), startup (128 LUNs x 2
    /// paths in the lab: mpathd daemon against multipath -r), failover (every fault
    /// with the kernel alone and with mpathd, in the lab) or compare (every fault with
    /// the kernel alone, multipathd and mpathd, and the overhead on a healthy map).
    name: String,
    /// compare: run only these parts (comma-separated: dead, gray, down, overhead); the
    /// summary still takes every part's last results.
    #[arg(long, value_delimiter = ',')]
    parts: Vec<String>,
    /// compare: boot no VM; summarize the last results again (JSON, table, plots).
    #[arg(long)]
    no_run: bool,
}

fn main() {
    if let Err(e) = try_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn try_main() -> Result<()> {
    let cli = Cli::parse();
    let root = project_root();
    match cli.cmd {
        Cmd::Bootstrap => bootstrap::ensure(&root, bootstrap::Need::All),
        Cmd::Test(args) => test::run(&root, args),
        Cmd::Lab(args) => {
            bootstrap::ensure(&root, bootstrap::Need::All)?;
            lab::run(&root, args)
        }
        Cmd::Demo => {
            bootstrap::ensure(&root, bootstrap::Need::All)?;
            lab::demo(&root)
        }
        Cmd::Bench(args) => {
            bootstrap::ensure(&root, bootstrap::Need::All)?;
            let opts = bench::CompareOptions {
                parts: args.parts,
                no_run: args.no_run,
            };
            bench::run(&root, &args.name, &opts)
        }
        Cmd::Fuzz(args) => fuzz::run(&root, args),
        Cmd::Package => {
            bootstrap::ensure(&root, bootstrap::Need::All)?;
            package::build(&root).map(|deb| println!("{}", deb.display()))
        }
    }
}

/// The workspace root, wherever cargo was started from.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
