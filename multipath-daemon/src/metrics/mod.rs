//! Prometheus metrics: what one scrape shows, rendered from a [`Snapshot`] and served on
//! `GET /metrics`.
//!
//! Nothing here is on the I/O path or the event loop's: on a scrape, the HTTP task asks
//! the loop for a [`Snapshot`] (a copy of its state, no device-mapper or sysfs read), the
//! probes' counters come from the kernel maps through the watcher's task, and the text is
//! rendered on a blocking thread. Every scrape renders from that snapshot alone, with no
//! registry that remembers: the series of a removed path or map disappear with it.
//!
//! Labels are bounded: per path `map`, `wwid`, `path` (sdX), `dev` (MAJ:MIN) and `portal`
//! (the iSCSI portal's address, `""` for a path that is not iSCSI); per map `map` and
//! `wwid`; otherwise closed sets (states, actions, reasons, operations). Never a TCP
//! 4-tuple, a sector or an errno.
//!
//! [`FAMILIES`] lists every family with its type, labels and help; docs/metrics.md is
//! generated from it (a test keeps the two equal).

mod render;
mod serve;
mod stats;
mod synthetic;
mod view;

#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, time::Duration};

pub use prometheus_client::metrics::MetricType;
pub use render::render;
pub use serve::{CONTENT_TYPE, MetricsError, Request, Server, serve, start};
pub use stats::{
    CHECK_BUCKETS, DECISION_BUCKETS, DM_BUCKETS, Histogram, PASS_BUCKETS, Stats, action_label,
    probe_event_label, request_label,
};
pub use synthetic::synthetic;
pub use view::from_engine;

use crate::{
    ebpf::{PathReading, WatcherStats},
    health::PathState,
    model::{Conn, DevT},
};

/// The address metrics are served on unless the config says otherwise: loopback only, as
/// node_exporter's textfile collectors and most local exporters are reached.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9977";

/// Everything one scrape shows, copied from the daemon's loop on request (cheap: no dm or
/// sysfs read; the probes' counters are read from the kernel maps by the watcher, and the
/// connections' loss counters over sock_diag, both outside the loop).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// One per path of a managed map.
    pub paths: Vec<PathMetrics>,
    pub maps: Vec<MapMetrics>,
    /// Counters kept by the loop.
    pub stats: Stats,
    /// `None` when the probes do not run.
    pub watcher: Option<WatcherStats>,
    /// The probes' counters per path (paths not in `paths` are left out of the render).
    pub readings: Vec<PathReading>,
    /// Each watched connection's lost segments (`tcp_info`'s retransmissions less the
    /// D-SACKed ones), read over sock_diag at the scrape; a connection gone meanwhile is
    /// left out.
    pub tcp_lost: BTreeMap<Conn, u64>,
    pub build: BuildInfo,
}

/// One path of a managed map, as the daemon holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct PathMetrics {
    pub map: String,
    pub wwid: String,
    /// The kernel's name (sdX).
    pub path: String,
    pub dev: DevT,
    /// The iSCSI portal (`10.0.0.1:3260`), `None` for a path that is not iSCSI.
    pub portal: Option<String>,
    pub state: PathState,
    /// Whether device-mapper has it failed now.
    pub dm_failed: bool,
    /// Times it failed again soon after it came back, as the flap damping counts them.
    pub flaps: u32,
    /// Errors judged the LUN's (every path said the same), not this path's.
    pub lun_errors: u64,
    /// The completion latency and TCP RTT above which the path counts as slow (learned
    /// from its own baseline, at least the configured floor).
    pub latency_limit: Duration,
    pub rtt_limit: Duration,
}

/// One managed map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapMetrics {
    pub name: String,
    pub wwid: String,
    /// The path group device-mapper sends I/O to (1-based, as `show topology` numbers
    /// them), `None` when unknown (no status read yet, or no group active).
    pub active_group: Option<u32>,
    /// The table has `queue_if_no_path`: with no usable path, I/O waits instead of
    /// failing.
    pub queue_if_no_path: bool,
    /// `no_path_retry N` ran out: queueing was switched off.
    pub no_path_retry_expired: bool,
    /// I/O is waiting in device-mapper with no path to go to (queueing with no usable
    /// path).
    pub io_stalled: bool,
}

/// The running binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: String,
    /// The git commit it was built from, when the build knew it.
    pub commit: Option<String>,
}

impl BuildInfo {
    /// This binary's: the crate version, and the commit from `MPATHD_GIT_COMMIT` at build
    /// time (`cargo xtask package` sets it).
    pub fn current() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: option_env!("MPATHD_GIT_COMMIT")
                .filter(|c| !c.is_empty())
                .map(str::to_owned),
        }
    }
}

impl Default for BuildInfo {
    fn default() -> Self {
        Self::current()
    }
}

/// One metric family: its full name (with `_total` for counters), type, labels and help.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl Family {
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            MetricType::Counter => "counter",
            MetricType::Gauge | MetricType::Info => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Unknown => "untyped",
        }
    }
}

const PATH: &[&str] = &["map", "wwid", "path", "dev", "portal"];
const MAP: &[&str] = &["map", "wwid"];

macro_rules! families {
    ($($id:ident: $name:literal, $kind:ident, [$($l:tt),*], $help:literal;)*) => {
        $(pub const $id: Family = Family {
            name: $name,
            kind: MetricType::$kind,
            labels: {
                const L: &[&str] = &concat_labels!($($l),*);
                L
            },
            help: $help,
        };)*
        /// Every family, in the order a scrape shows them.
        pub const FAMILIES: &[Family] = &[$($id),*];
    };
}

/// Label lists are written as `PATH, "state"`: the path labels, then more.
macro_rules! concat_labels {
    () => { [] };
    (PATH) => { [PATH[0], PATH[1], PATH[2], PATH[3], PATH[4]] };
    (PATH, $x:literal) => { [PATH[0], PATH[1], PATH[2], PATH[3], PATH[4], $x] };
    (MAP) => { [MAP[0], MAP[1]] };
    (MAP, $x:literal) => { [MAP[0], MAP[1], $x] };
    ($($x:literal),+) => { [$($x),+] };
}

families! {
    PATH_STATE: "mpathd_path_state", Gauge, [PATH, "state"],
        "The path's state in mpathd (1 for the state it is in, 0 for the others): active, degraded (marginal: its map prefers other paths), failed, probation (failed, checks clean so far), admin-failed.";
    PATH_DM_FAILED: "mpathd_path_dm_failed", Gauge, [PATH],
        "1 when device-mapper has the path failed.";
    PATH_FLAPS: "mpathd_path_flaps", Gauge, [PATH],
        "Times the path failed again soon after it came back (the flap damping's count; each doubles its hold before the next reinstate).";
    PATH_LUN_ERRORS: "mpathd_path_lun_errors_total", Counter, [PATH],
        "I/O errors on the path judged the LUN's own (the same on every path): they fail no path.";
    PATH_LATENCY_LIMIT: "mpathd_path_latency_limit_seconds", Gauge, [PATH],
        "Completion latency above which the path counts as slow (learned from its baseline, at least the configured floor).";
    PATH_RTT_LIMIT: "mpathd_path_rtt_limit_seconds", Gauge, [PATH],
        "Smoothed TCP RTT above which the path's iSCSI connection counts as slow.";
    PATH_COMPLETIONS: "mpathd_path_completions_total", Counter, [PATH, "op"],
        "Requests completed on the path since the probes watch it, by op (read, write, other: flushes and commands without data).";
    PATH_ERRORS: "mpathd_path_errors_total", Counter, [PATH, "class"],
        "Requests completed with an error, by class: path (transport, timeout: the path's fault), generic (plain EIO), lun (medium, no space, target: the LUN's own).";
    PATH_BYTES: "mpathd_path_bytes_total", Counter, [PATH, "op"],
        "Bytes completed without error, by op (read, write).";
    PATH_LATENCY: "mpathd_path_latency_seconds", Histogram, [PATH],
        "Completion latency of the path's requests (all ops), from the kernel's log2 microsecond buckets.";
    PATH_INFLIGHT: "mpathd_path_inflight", Gauge, [PATH],
        "Requests issued on the path and not yet completed.";
    PATH_OLDEST: "mpathd_path_oldest_inflight_seconds", Gauge, [PATH],
        "Age of the oldest request outstanding on the path (0 when none; to within 67 ms): how long I/O on it has been stuck.";
    PATH_REQUEUES: "mpathd_path_requeues_total", Counter, [PATH],
        "Requests the block layer put back in the queue for the path.";
    PATH_RETRANSMITS: "mpathd_path_tcp_retransmits_total", Counter, [PATH],
        "TCP retransmissions on the path's iSCSI connection (shared by every path of its session).";
    PATH_LOST: "mpathd_path_tcp_lost_segments_total", Counter, [PATH],
        "Segments the path's iSCSI connection sent again because the target never got them (TCP retransmissions less those the target reported as duplicates with D-SACK; since the connection was made). A healthy path's stays put even under TCP's spurious tail-loss probes; a lossy one climbs.";
    PATH_RESETS: "mpathd_path_tcp_resets_total", Counter, [PATH],
        "TCP resets received on the path's iSCSI connection.";
    PATH_SRTT: "mpathd_path_tcp_srtt_seconds", Gauge, [PATH],
        "Smoothed round-trip time of the path's iSCSI connection, as TCP keeps it.";
    MAP_PATHS: "mpathd_map_paths", Gauge, [MAP, "state"],
        "Paths of the map in each mpathd state.";
    MAP_USABLE: "mpathd_map_usable_paths", Gauge, [MAP],
        "Paths of the map that I/O may use (active or degraded).";
    MAP_ACTIVE_GROUP: "mpathd_map_active_group", Gauge, [MAP],
        "The path group device-mapper sends the map's I/O to (1-based; absent when unknown).";
    MAP_QUEUEING: "mpathd_map_queue_if_no_path", Gauge, [MAP],
        "1 when the map queues I/O while it has no usable path (queue_if_no_path).";
    MAP_EXPIRED: "mpathd_map_no_path_retry_expired", Gauge, [MAP],
        "1 when no_path_retry ran out and the map stopped queueing: I/O fails while no path is usable.";
    MAP_STALLED: "mpathd_map_io_stalled", Gauge, [MAP],
        "1 when I/O is queued in device-mapper with no path to go to: applications wait.";
    DECISIONS: "mpathd_decisions_total", Counter, ["action", "reason"],
        "Decisions about paths, by action (fail, reinstate, demote, restore, none: a state change alone) and reason.";
    SIGNAL_TO_DECISION: "mpathd_signal_to_decision_seconds", Histogram, [],
        "From the kernel's signal (its timestamp) to the decision.";
    SIGNAL_TO_DONE: "mpathd_decision_done_seconds", Histogram, ["action"],
        "From the kernel's signal to device-mapper having carried out the decision, by action.";
    RESCUES: "mpathd_rescues_total", Counter, ["result"],
        "Dead iSCSI connections whose stuck I/O was handed back to device-mapper (socket destroyed), by result (ok, failed).";
    RECOVERY_TMO: "mpathd_recovery_tmo_writes_total", Counter, ["result"],
        "Writes of iSCSI sessions' recovery_tmo, by result (ok, failed).";
    BUILD_INFO: "mpathd_build_info", Gauge, ["version", "commit"],
        "Always 1: the running mpathd's version and git commit.";
    PROBES_LOADED: "mpathd_probes_loaded", Gauge, [],
        "1 when the eBPF probes run; 0 when only the checker and the kernel see paths fail.";
    PROBE_EVENTS: "mpathd_probe_events_total", Counter, [],
        "Events read from the probes' ring buffers.";
    PROBE_LOST: "mpathd_probe_events_lost_total", Counter, ["reason"],
        "Probe events lost: ring_full (the kernel had no room in the ring buffer), queue_full (the daemon did not keep up).";
    PROBE_SUPPRESSED: "mpathd_probe_events_suppressed_total", Counter, [],
        "Probe events held back by the kernel's per-path rate limit (by design: one event stands for them).";
    PROBE_MISSES: "mpathd_probe_recursion_misses_total", Counter, [],
        "Probe runs the kernel skipped because the same program ran on that CPU (each may leave one request counted on one side).";
    PROBE_LAG: "mpathd_probe_ring_lag_seconds", Histogram, [],
        "From an event's kernel timestamp to the daemon reading it.";
    EVENTS: "mpathd_events_total", Counter, ["kind"],
        "Events the daemon's loop handled, by kind (probe events by their kind, udev, check, poll...).";
    CHECKS: "mpathd_checks_total", Counter, ["checker", "outcome"],
        "Path checks, by checker and outcome (up, ghost, down, timeout, pending, unsupported).";
    CHECK_DURATION: "mpathd_check_duration_seconds", Histogram, ["checker"],
        "How long path checks took, by checker.";
    DM_CALLS: "mpathd_dm_calls_total", Counter, ["op"],
        "device-mapper operations, by op (create, reload, remove, fail_path, reinstate_path, switch_group, queue_if_no_path, fail_if_no_path).";
    DM_ERRORS: "mpathd_dm_call_errors_total", Counter, ["op"],
        "device-mapper operations that failed, by op.";
    DM_DURATION: "mpathd_dm_call_duration_seconds", Histogram, ["op"],
        "How long device-mapper operations took (the call, not the wait in its map's lane), by op.";
    PASSES: "mpathd_reconcile_passes_total", Counter, [],
        "Reconcile passes (scan, read device-mapper, create and reload maps).";
    PASS_ERRORS: "mpathd_reconcile_errors_total", Counter, [],
        "Errors in reconcile passes (a map that could not be made or reloaded).";
    PASS_DURATION: "mpathd_reconcile_duration_seconds", Histogram, [],
        "How long reconcile passes took, from the scan to the last device-mapper result.";
    REQUESTS: "mpathd_control_requests_total", Counter, ["request"],
        "Requests on the control socket, by request.";
}

/// docs/metrics.md's reference table, generated from [`FAMILIES`].
pub fn reference_markdown() -> String {
    let mut s = String::from("| family | type | labels | meaning |\n|---|---|---|---|\n");
    for f in FAMILIES {
        let labels = if f.labels.is_empty() {
            "-".to_owned()
        } else {
            f.labels.join(", ")
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            f.name,
            f.type_name(),
            labels,
            f.help
        ));
    }
    s
}
