//! The command line's definition, shared by the binary and the generated man page and
//! shell completions (`examples/gen_docs.rs`).

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::ebpf::ISCSI_PORT;

/// The whole command line as clap sees it.
pub fn command() -> clap::Command {
    Cli::command()
}

#[derive(Parser)]
#[command(
    name = "mpathd",
    version,
    about = "Multipath daemon that watches every storage path from inside the kernel with eBPF"
)]
pub struct Cli {
    /// The daemon's control socket (default: the config's `socket`,
    /// /run/mpathd/mpathd.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Watch block devices with the eBPF probes and print every path event as it happens
    /// (IO errors, slow completions, stalled IO; for iSCSI disks also their TCP
    /// connection's resets, retransmissions and RTT), then each device's counters on exit.
    Probe(ProbeArgs),
    /// Scan sysfs for SCSI disks and show them grouped by LUN (WWID), with the iSCSI
    /// session and connection behind each path: what mpathd would fold into one map each.
    Scan {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon in the foreground: build and keep the multipath maps, follow paths
    /// as udev reports them, reinstate paths that come back, answer the control socket.
    /// Logs "ready maps=N paths=M" once the first pass is done.
    Daemon(DaemonArgs),
    /// Ask the running daemon: `topology` (like `multipath -ll`), `paths`, `maps`, or
    /// `config` (each map's merged settings and where each came from).
    Show {
        what: ShowWhat,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fail a path (sdX, /dev/sdX or MAJ:MIN) in its map; it stays failed until reinstated.
    Fail { path: String },
    /// Reinstate a path failed by `mpathd fail` (or by the kernel).
    Reinstate { path: String },
    /// Send a map's I/O to path group N (1-based, as `show topology` lists them).
    Switchgroup { map: String, group: u32 },
    /// Remove a map that is not open; the daemon does not make it again until
    /// `reconfigure` or a restart.
    Remove { map: String },
    /// Make the daemon re-read its config and rescan (also on SIGHUP).
    Reconfigure,
    /// Check a config file and print every error with its line and column.
    CheckConfig { file: PathBuf },
    /// Turn a multipath.conf into an mpathd config (printed, or written with -o), with a
    /// note for every setting that is not carried over.
    Import {
        #[arg(default_value = "/etc/multipath.conf")]
        file: PathBuf,
        /// Write the config here instead of printing it; refuses to overwrite.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ShowWhat {
    Topology,
    Paths,
    Maps,
    Config,
}

#[derive(clap::Args)]
pub struct DaemonArgs {
    /// Config file (TOML). Missing at the default path: built-in defaults.
    #[arg(long, default_value = crate::daemon::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Rescan every this many seconds even without udev events.
    #[arg(long, default_value_t = 30.0)]
    pub rescan_secs: f64,
    /// Path checker interval in seconds: every path is checked, failed ones are
    /// reinstated after clean checks, dead idle ones failed. Default: the config's
    /// `polling_interval` (5 s).
    #[arg(long)]
    pub check_secs: Option<f64>,
    /// The path checker for every map: tur (SCSI TEST UNIT READY), directio (an O_DIRECT
    /// read of one block) or none. Default: each map's `path_checker` (tur).
    #[arg(long)]
    pub checker: Option<crate::checker::CheckerKind>,
    /// Seconds a check may take before the path counts as down. Default: each map's
    /// `checker_timeout` (30 s).
    #[arg(long)]
    pub checker_timeout: Option<f64>,
    /// Decide and log, but change nothing (no map made or reloaded, no path failed, no
    /// iSCSI session touched): to run beside multipathd before switching.
    #[arg(long)]
    pub observe: bool,
    /// Leave the iSCSI sessions' recovery timeouts alone (no fast hand-back of the I/O
    /// stuck on a dead connection).
    #[arg(long)]
    pub no_rescue: bool,
    /// Do not run the eBPF probes: paths fail only by the checker and the kernel.
    #[arg(long)]
    pub no_probes: bool,
    /// Serve Prometheus metrics (GET /metrics) on this address, or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = crate::metrics::DEFAULT_ADDRESS)]
    pub metrics: String,
    /// Gather udev events this long (ms) before rescanning.
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
}

#[derive(clap::Args)]
pub struct ProbeArgs {
    /// Block devices to watch: /dev/sdX paths, links to them, or MAJOR:MINOR (an iSCSI
    /// disk's connection is watched too, however it is named).
    #[arg(required = true)]
    pub devices: Vec<String>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// A completion slower than this (ms) is slow; 0 turns the rule off.
    #[arg(long, default_value_t = 500)]
    pub latency_limit_ms: u64,
    /// Slow completions within --slow-window-ms that make an event.
    #[arg(long, default_value_t = 3)]
    pub slow_count: u32,
    #[arg(long, default_value_t = 5000)]
    pub slow_window_ms: u64,
    /// A request outstanding this long (ms) is a stall, even while the device completes
    /// others; 0 turns the rule off.
    #[arg(long, default_value_t = 1000)]
    pub stall_ms: u64,
    /// How often to look for stalls (ms, 1 to 1000): the stall rule's resolution.
    #[arg(long, default_value_t = 50)]
    pub scan_ms: u64,
    /// Least gap (ms) between two events of one kind for one device.
    #[arg(long, default_value_t = 100)]
    pub event_gap_ms: u64,
    /// Retransmissions in a row (no new data acknowledged) on an iSCSI connection that
    /// make an event; 0 turns the rule off.
    #[arg(long, default_value_t = 3)]
    pub retrans_limit: u32,
    /// Smoothed RTT (ms) of an iSCSI connection above which an event is sent; 0: off.
    #[arg(long, default_value_t = 200)]
    pub rtt_limit_ms: u64,
    /// The iSCSI portals' TCP port.
    #[arg(long, default_value_t = ISCSI_PORT)]
    pub portal_port: u16,
    /// Do not watch the TCP connections of iSCSI disks.
    #[arg(long)]
    pub no_tcp: bool,
    /// Stop after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
}
