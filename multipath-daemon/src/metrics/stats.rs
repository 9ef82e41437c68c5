//! Counters and histograms the daemon's loop keeps for the metrics: plain numbers owned by
//! the loop (no atomics, no locks), copied into each scrape's [`super::Snapshot`].
//!
//! Every label value is a `&'static str` from a closed set (an action, a reason label, a
//! device-mapper operation, a checker and its outcome...), so no series set can grow
//! without bound.

use std::{collections::BTreeMap, time::Duration};

use crate::{
    ebpf::{ConnEventKind, PathEventKind, ProbeEvent},
    health::{Action, Decision, Ns},
};

/// Bucket bounds (seconds) for kernel signal -> decision -> device-mapper done: the
/// decision itself takes microseconds, a `fail_path` a millisecond, a reload behind I/O
/// on a dead path seconds.
pub const DECISION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Bucket bounds (seconds) for device-mapper calls: messages take under a millisecond, a
/// suspend waits for the I/O in flight.
pub const DM_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Bucket bounds (seconds) for path checks: a TUR on a healthy path takes a millisecond,
/// a check times out after `checker_timeout` (30 s by default).
pub const CHECK_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Bucket bounds (seconds) for a reconcile pass (scan, device-mapper reads, creates and
/// reloads).
pub const PASS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A histogram with fixed bounds, as Prometheus keeps them.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); one more than `bounds`, the last for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must rise");
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    pub fn observe_duration(&mut self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// (upper bound, count in that bucket alone), +Inf last: what the text encoder sums.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }
}

/// What the loop counts. The loop calls one method per thing that happened; each is a
/// few additions.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// By (action, reason label).
    pub decisions: BTreeMap<(&'static str, &'static str), u64>,
    /// Kernel signal (or the decision's own time, when nothing in the kernel prompted
    /// it) to the decision.
    pub signal_to_decision: Histogram,
    /// Kernel signal to device-mapper done, by action.
    pub signal_to_done: BTreeMap<&'static str, Histogram>,
    /// By device-mapper operation (`create`, `reload`, `fail_path`...): calls, errors,
    /// durations.
    pub dm_calls: BTreeMap<&'static str, u64>,
    pub dm_errors: BTreeMap<&'static str, u64>,
    pub dm_duration: BTreeMap<&'static str, Histogram>,
    /// By (checker, outcome).
    pub checks: BTreeMap<(&'static str, &'static str), u64>,
    pub check_duration: BTreeMap<&'static str, Histogram>,
    pub rescues_ok: u64,
    pub rescues_failed: u64,
    pub recovery_tmo_ok: u64,
    pub recovery_tmo_failed: u64,
    pub passes: u64,
    pub pass_errors: u64,
    pub pass_duration: Histogram,
    /// By request kind.
    pub requests: BTreeMap<&'static str, u64>,
    /// Events the loop handled, by kind.
    pub events: BTreeMap<&'static str, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            decisions: BTreeMap::new(),
            signal_to_decision: Histogram::new(DECISION_BUCKETS),
            signal_to_done: BTreeMap::new(),
            dm_calls: BTreeMap::new(),
            dm_errors: BTreeMap::new(),
            dm_duration: BTreeMap::new(),
            checks: BTreeMap::new(),
            check_duration: BTreeMap::new(),
            rescues_ok: 0,
            rescues_failed: 0,
            recovery_tmo_ok: 0,
            recovery_tmo_failed: 0,
            passes: 0,
            pass_errors: 0,
            pass_duration: Histogram::new(PASS_BUCKETS),
            requests: BTreeMap::new(),
            events: BTreeMap::new(),
        }
    }
}

/// The metrics label of a decision's action.
pub fn action_label(a: &Action) -> &'static str {
    match a {
        Action::None => "none",
        Action::Fail { .. } => "fail",
        Action::Reinstate => "reinstate",
        Action::Demote => "demote",
        Action::Restore => "restore",
    }
}

impl Stats {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decision was made (`done_ns`: `None`) or its device-mapper work finished
    /// (`Some(CLOCK_MONOTONIC ns)`, what `model::monotonic_ns()` returns). Call once per
    /// decision: at once for one that needs no device-mapper work (or in observe mode), or
    /// when its work is done.
    pub fn decision(&mut self, d: &Decision, done_ns: Option<Ns>) {
        let action = action_label(&d.action);
        *self
            .decisions
            .entry((action, d.reason.label()))
            .or_default() += 1;
        let secs = |from: Ns, to: Ns| to.saturating_sub(from) as f64 / 1e9;
        self.signal_to_decision
            .observe(secs(d.signal_ns, d.decided_ns));
        if let Some(done) = done_ns {
            self.signal_to_done
                .entry(action)
                .or_insert_with(|| Histogram::new(DECISION_BUCKETS))
                .observe(secs(d.signal_ns, done));
        }
    }

    /// A device-mapper operation finished (`kind`: `DmOp::kind()`), `ok` or not, after
    /// `took` (the call itself, not its wait in the lane).
    pub fn dm_call(&mut self, kind: &'static str, ok: bool, took: Duration) {
        *self.dm_calls.entry(kind).or_default() += 1;
        if !ok {
            *self.dm_errors.entry(kind).or_default() += 1;
        }
        self.dm_duration
            .entry(kind)
            .or_insert_with(|| Histogram::new(DM_BUCKETS))
            .observe_duration(took);
    }

    /// A check returned: `checker` is `CheckerKind::name()`, `outcome`
    /// `CheckOutcome::name()` (a timeout is the outcome `timeout`).
    pub fn check(&mut self, checker: &'static str, outcome: &'static str, took: Duration) {
        *self.checks.entry((checker, outcome)).or_default() += 1;
        self.check_duration
            .entry(checker)
            .or_insert_with(|| Histogram::new(CHECK_BUCKETS))
            .observe_duration(took);
    }

    /// The socket of a dead iSCSI connection was destroyed (or the attempt failed).
    pub fn rescue(&mut self, ok: bool) {
        if ok {
            self.rescues_ok += 1;
        } else {
            self.rescues_failed += 1;
        }
    }

    /// An iSCSI session's `recovery_tmo` was written (or the write failed).
    pub fn recovery_tmo_write(&mut self, ok: bool) {
        if ok {
            self.recovery_tmo_ok += 1;
        } else {
            self.recovery_tmo_failed += 1;
        }
    }

    /// A reconcile pass finished with `errors` errors, `took` from its scan to its last
    /// device-mapper result.
    pub fn pass(&mut self, errors: usize, took: Duration) {
        self.passes += 1;
        self.pass_errors += errors as u64;
        self.pass_duration.observe_duration(took);
    }

    /// A control-socket request (`show_paths`, `fail`...; see [`request_label`]).
    pub fn request(&mut self, kind: &'static str) {
        *self.requests.entry(kind).or_default() += 1;
    }

    /// An event the loop handled: `udev`, `check`, `poll`, `config`... or a probe event
    /// (see [`Stats::probe_event`]).
    pub fn event(&mut self, kind: &'static str) {
        *self.events.entry(kind).or_default() += 1;
    }

    /// A kernel event from the probes, counted by its kind.
    pub fn probe_event(&mut self, ev: &ProbeEvent) {
        self.event(probe_event_label(ev));
    }
}

/// The `kind` label of a probe event.
pub fn probe_event_label(ev: &ProbeEvent) -> &'static str {
    match ev {
        ProbeEvent::Path(e) => match e.kind {
            PathEventKind::IoError { .. } => "io_error",
            PathEventKind::Slow { .. } => "slow_io",
            PathEventKind::Stalled { .. } => "stalled_io",
        },
        ProbeEvent::Conn(e) => match e.kind {
            ConnEventKind::Reset { .. } => "tcp_reset",
            ConnEventKind::LeftEstablished { .. } => "tcp_closed",
            ConnEventKind::Retransmits => "tcp_retransmits",
            ConnEventKind::SlowRtt => "tcp_slow_rtt",
        },
    }
}

/// The `request` label of a control request.
pub fn request_label(r: &crate::control::Request) -> &'static str {
    use crate::control::Request;
    match r {
        Request::ShowTopology => "show_topology",
        Request::ShowPaths => "show_paths",
        Request::ShowMaps => "show_maps",
        Request::ShowConfig => "show_config",
        Request::Fail { .. } => "fail",
        Request::Reinstate { .. } => "reinstate",
        Request::SwitchGroup { .. } => "switchgroup",
        Request::Remove { .. } => "remove",
        Request::Reconfigure => "reconfigure",
    }
}
