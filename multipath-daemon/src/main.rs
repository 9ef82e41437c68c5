//! mpathd: the multipath daemon and its command line.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use mpathd::ebpf::{BlockProbes, DevT, PathEvent, PathEventKind, PathThresholds, monotonic_ns};

#[derive(Parser)]
#[command(
    name = "mpathd",
    version,
    about = "Multipath daemon that watches every storage path from inside the kernel with eBPF"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Watch block devices with the eBPF probes and print every path event as it happens
    /// (IO errors, slow completions, stalled IO), then each device's counters on exit.
    Probe(ProbeArgs),
}

#[derive(clap::Args)]
struct ProbeArgs {
    /// Block devices to watch: /dev/sdX paths or MAJOR:MINOR.
    #[arg(required = true)]
    devices: Vec<String>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// A completion slower than this (ms) is slow; 0 turns the rule off.
    #[arg(long, default_value_t = 500)]
    latency_limit_ms: u64,
    /// Slow completions within --slow-window-ms that make an event.
    #[arg(long, default_value_t = 3)]
    slow_count: u32,
    #[arg(long, default_value_t = 5000)]
    slow_window_ms: u64,
    /// IO in flight with no completion for this long (ms) is a stall; 0 turns it off.
    #[arg(long, default_value_t = 1000)]
    stall_ms: u64,
    /// How often to look for stalls (ms): the stall rule's resolution.
    #[arg(long, default_value_t = 50)]
    scan_ms: u64,
    /// Least gap (ms) between two events of one kind for one device.
    #[arg(long, default_value_t = 100)]
    event_gap_ms: u64,
    /// Stop after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MPATHD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = try_main() {
        eprintln!("mpathd: error: {e:#}");
        std::process::exit(1);
    }
}

fn try_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Probe(args) => probe(args),
    }
}

/// A device named on the command line.
struct Target {
    name: String,
    dev: DevT,
}

fn resolve(arg: &str) -> Result<Target> {
    if let Some((ma, mi)) = arg.split_once(':')
        && let (Ok(major), Ok(minor)) = (ma.parse(), mi.parse())
    {
        return Ok(Target {
            name: arg.to_owned(),
            dev: DevT::new(major, minor),
        });
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let path = PathBuf::from(arg);
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("{arg}: not a device path or MAJOR:MINOR"))?;
    if !meta.file_type().is_block_device() {
        bail!("{arg} is not a block device");
    }
    let rdev = meta.rdev();
    Ok(Target {
        name: Path::new(arg)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| arg.to_owned()),
        dev: DevT::new(libc::major(rdev), libc::minor(rdev)),
    })
}

fn probe(args: ProbeArgs) -> Result<()> {
    let targets = args
        .devices
        .iter()
        .map(|d| resolve(d))
        .collect::<Result<Vec<_>>>()?;
    let thresholds = PathThresholds {
        latency_limit: Duration::from_millis(args.latency_limit_ms),
        slow_count: args.slow_count,
        slow_window: Duration::from_millis(args.slow_window_ms),
        stall_limit: Duration::from_millis(args.stall_ms),
        event_gap: Duration::from_millis(args.event_gap_ms),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let mut probes = BlockProbes::load().context("loading the block probes")?;
        let mut events = probes.take_events()?;
        for t in &targets {
            probes.watch(t.dev, thresholds)?;
            tracing::info!(device = %t.name, dev = %t.dev, "watching");
        }
        let name_of = |dev: DevT| {
            targets
                .iter()
                .find(|t| t.dev == dev)
                .map_or_else(|| dev.to_string(), |t| t.name.clone())
        };
        let mut scan = tokio::time::interval(Duration::from_millis(args.scan_ms.max(1)));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let stop = async {
            match args.duration {
                Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop);
        let mut batch = Vec::new();
        loop {
            batch.clear();
            tokio::select! {
                r = events.next_batch(&mut batch) => r?,
                _ = scan.tick() => batch.extend(probes.scan_stalls()?),
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = &mut stop => break,
            }
            for ev in &batch {
                print_event(ev, &name_of(ev.dev), args.json);
            }
        }
        for t in &targets {
            if let Some(s) = probes.snapshot(t.dev)? {
                let summary = serde_json::json!({
                    "summary": t.name,
                    "dev": t.dev.to_string(),
                    "issues": s.stats.issues,
                    "completions": s.stats.completions(),
                    "errors": s.stats.errors(),
                    "bytes": s.stats.bytes(),
                    "inflight": s.inflight(),
                    "untimed": s.stats.untimed,
                    "ewma_read_us": s.ewma[0].as_micros() as u64,
                    "ewma_write_us": s.ewma[1].as_micros() as u64,
                });
                println!("{summary}");
            }
        }
        anyhow::Ok(())
    })
}

/// Wall-clock seconds of a CLOCK_MONOTONIC instant, so events line up with other logs.
fn wall_secs(mono_ns: u64) -> f64 {
    let now_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let age = monotonic_ns().saturating_sub(mono_ns) as f64 / 1e9;
    now_wall - age
}

fn print_event(ev: &PathEvent, name: &str, json: bool) {
    let wall = wall_secs(ev.at_ns);
    let (kind, detail) = match &ev.kind {
        PathEventKind::IoError {
            errno,
            dir,
            sector,
            latency,
        } => (
            "io_error",
            serde_json::json!({"errno": errno, "error": std::io::Error::from_raw_os_error(-errno).to_string(),
                "dir": dir, "sector": sector, "latency_us": latency.as_micros() as u64}),
        ),
        PathEventKind::Slow {
            latency,
            count,
            dir,
        } => (
            "slow",
            serde_json::json!({"latency_us": latency.as_micros() as u64, "count": count, "dir": dir}),
        ),
        PathEventKind::Stalled { inflight, for_ } => (
            "stalled",
            serde_json::json!({"inflight": inflight, "for_ms": for_.as_millis() as u64}),
        ),
    };
    if json {
        let mut v = serde_json::json!({
            "wall": wall, "mono_ns": ev.at_ns, "device": name, "dev": ev.dev.to_string(),
            "kind": kind, "suppressed": ev.suppressed,
        });
        if let (Some(o), Some(d)) = (v.as_object_mut(), detail.as_object()) {
            o.extend(d.clone());
        }
        println!("{v}");
    } else {
        println!(
            "{wall:.6} {name} ({}) {kind} {detail}{}",
            ev.dev,
            if ev.suppressed > 0 {
                format!(" (+{} suppressed)", ev.suppressed)
            } else {
                String::new()
            }
        );
    }
}
