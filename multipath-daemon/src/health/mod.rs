//! The health engine: what each path's state is and what to do about it.
//!
//! Pure logic: [`Input`]s (kernel signals from the eBPF probes, checker results, session
//! states, admin commands) and a clock come in; [`Decision`]s come out. It does no I/O and
//! reads no clock of its own, so every rule is tested with a fake clock
//! (`health/tests.rs`). The daemon turns decisions into device-mapper messages, reloads
//! and the in-flight rescue (`actions`), and feeds the results back.
//!
//! # Path states
//!
//! [`PathState`] is the one definition of a path's state, shown by `mpathd show paths`,
//! its JSON and the metrics. See its variants for who sets each state and what leaves it.
//!
//! # Rules, in short
//! - A hard signal (a path-class I/O error, a TCP reset, the connection leaving
//!   ESTABLISHED, a checker that says down) fails the path at once. A connection signal
//!   fails every path carried by that connection, in every map, in one batch.
//! - A stall (I/O in flight and no completion on the path for `stall_limit`) fails the
//!   path once corroborated: its connection retransmitted and still nothing completed
//!   `retrans_grace` later with nothing heard from the target since (no segment arrived,
//!   no snd_una move) nor for twice the grace in all (judged on a reading taken after
//!   that), or a
//!   sibling path completed I/O after the stall began and the stall lasted
//!   `stall_sibling` (`stall_alive` if the target was heard from during the stall, or
//!   the path showed loss just before: slow, not dead). The same stall on every usable
//!   path of a map is the LUN or the array, and fails nothing. A stall is never
//!   corroborated for the last usable path of a map.
//! - Soft signals (slow completions, a request stuck while the path completes others,
//!   retransmission runs, high RTT) demote the path ([`PathState::Degraded`]: its map
//!   prefers other paths) and fail it only if they persist for `soft_persist`; never the
//!   last usable path of a map.
//! - A failed path comes back through probation: `reinstate_checks` clean checks in a row,
//!   no new hard signal, and a hold that doubles each time the path fails again soon
//!   after it came back (flap damping). While its map has no usable path at all, one
//!   clean check and no hold: any path beats none (the daemon then checks such paths
//!   every second, [`Health::pathless`]).

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    time::Duration,
};

use crate::model::{Conn, DevT};

/// CLOCK_MONOTONIC nanoseconds, the clock of the kernel's `bpf_ktime_get_ns()`: kernel
/// signals and decisions are stamped on the same clock.
pub type Ns = u64;

fn ns(d: Duration) -> Ns {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// `b - a` in whole milliseconds, signed (kernel clock values).
fn ms_between(a: Ns, b: Ns) -> i64 {
    (i128::from(b) - i128::from(a)).clamp(i64::MIN.into(), i64::MAX.into()) as i64 / 1_000_000
}

/// A path's state as mpathd holds it. Device-mapper's own view (active or failed in the
/// table) follows it: mpathd fails and reinstates paths to match.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PathState {
    /// In use, nothing against it. Set when a path is first seen usable, after probation
    /// or when soft signals stopped; left on any signal below.
    Active,
    /// Marginal: soft signals (slow completions, loss, high RTT) crossed the path's
    /// limits. Still usable, but its map prefers other paths. Set by the health engine;
    /// left for `Active` after a quiet period with clean checks, or for `Failed` if the
    /// signals persist and another path is usable.
    Degraded,
    /// Failed in device-mapper: by mpathd on a hard or corroborated signal, by the
    /// checker, or by the kernel itself (mpathd then follows). Left for `Probation` on
    /// the first clean check.
    Failed,
    /// Still failed in device-mapper, its checks clean so far: reinstated after
    /// `reinstate_checks` clean checks in a row and its flap hold; any bad signal sends
    /// it back to `Failed`.
    Probation,
    /// Failed by `mpathd fail`; only `mpathd reinstate` brings it back.
    AdminFailed,
}

impl PathState {
    /// Whether I/O may use the path (device-mapper has it active).
    pub fn usable(self) -> bool {
        matches!(self, Self::Active | Self::Degraded)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
            Self::Probation => "probation",
            Self::AdminFailed => "admin-failed",
        }
    }

    pub const ALL: [PathState; 5] = [
        Self::Active,
        Self::Degraded,
        Self::Failed,
        Self::Probation,
        Self::AdminFailed,
    ];
}

impl fmt::Display for PathState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A completion error's class, as the probes report it (the kernel's `blk_path_error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transport or path: dm-multipath would retry it on another path.
    Path,
    /// Plain EIO and anything unknown: a path error by the kernel's rule, but a LUN may
    /// return it on every path; mpathd asks for corroboration.
    Generic,
    /// The LUN itself (medium, no space, critical target, protection...): every path
    /// would say the same; never fails a path.
    Lun,
}

/// What the block probes said about one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockSignal {
    Error {
        class: ErrorClass,
        errno: i32,
    },
    /// `count` completions slower than the path's limit within its window.
    Slow {
        latency: Duration,
        count: u32,
    },
    /// A request older than the stall limit. `since_completion`: how long the path has
    /// completed nothing (`None`: nothing since it was watched).
    Stalled {
        oldest: Duration,
        since_completion: Option<Duration>,
        inflight: u64,
    },
}

/// What the TCP probes said about one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnSignal {
    Reset,
    /// Left ESTABLISHED for `new_state` (the kernel's TCP state number).
    Left {
        new_state: u32,
    },
    /// Retransmissions in a row with nothing heard from the target in between.
    Retransmits {
        consecutive: u32,
    },
    SlowRtt {
        srtt: Duration,
    },
}

/// A path checker's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckVerdict {
    /// Served a read or a TEST UNIT READY, in `took`.
    Up {
        took: Duration,
    },
    /// `ambiguous`: the LUN answered with an error it may give on every path (an EIO, a
    /// sense key); the path fails only once a sibling shows the LUN serves I/O.
    Down {
        why: String,
        ambiguous: bool,
    },
    Timeout,
}

/// One path's counters from the probes, read periodically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// Latest completion (kernel clock), 0 if none since watched.
    pub last_complete_ns: Ns,
    pub inflight: u64,
    /// Age of the oldest request in flight (a lower bound), None if unknown or none.
    pub oldest: Option<Duration>,
    pub completions: u64,
    /// Completions without an error: only these show the LUN serves I/O.
    pub ok_completions: u64,
    /// Smoothed completion latency (the larger of reads and writes), 0 if unknown.
    pub ewma: Duration,
    /// Smoothed RTT of the path's connection, 0 if none or unknown.
    pub srtt: Duration,
    /// The connection's last cumulative ACK (snd_una), None without a watched connection.
    pub snd_una: Option<u32>,
    /// The connection's retransmissions since it was watched.
    pub retransmits: u64,
    /// When the connection's ACKs last made progress (kernel clock), 0 if unknown. It
    /// lags: the kernel shows an ACK only when the next segment arrives.
    pub last_ack_ns: Ns,
    /// When a segment last arrived from the target on the connection (kernel clock), 0 if
    /// unknown: the target heard from, stamped without that lag.
    pub last_rcv_ns: Ns,
    /// The connection's retransmissions of data the target did not already have (the
    /// kernel's `tcp_info`: retransmitted segments less those the target reported as
    /// duplicates with D-SACK), None if unknown. On a healthy path every retransmission
    /// is a spurious tail-loss probe the target D-SACKs, so this stays put; on a lossy
    /// one it climbs; a cut link sends nothing, so it does not move either.
    pub lost: Option<u64>,
}

/// Something the engine is told.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Block {
        dev: DevT,
        at_ns: Ns,
        signal: BlockSignal,
    },
    Conn {
        conn: Conn,
        at_ns: Ns,
        signal: ConnSignal,
    },
    Check {
        dev: DevT,
        verdict: CheckVerdict,
    },
    Reading {
        dev: DevT,
        reading: Reading,
    },
    /// The iSCSI session behind the path, as the last scan saw it.
    Session {
        dev: DevT,
        logged_in: bool,
    },
    /// device-mapper has the path failed (or active) while mpathd held it otherwise:
    /// the kernel failed it on an I/O error, or a reload reset it. `read_ns`: when the
    /// status was read; a state mpathd changed since then is newer and wins.
    DmState {
        dev: DevT,
        failed: bool,
        read_ns: Ns,
    },
    AdminFail {
        dev: DevT,
    },
    AdminReinstate {
        dev: DevT,
    },
}

/// Why a path changed state; kept with every transition and logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// First seen by the daemon in this state.
    Discovered,
    PathError {
        errno: i32,
    },
    /// A generic error (EIO) on this path while a sibling served I/O.
    GenericError {
        errno: i32,
    },
    ConnReset,
    ConnLeft {
        new_state: u32,
    },
    /// The connection retransmitted this many times in a row with nothing heard from the
    /// target in between.
    ConnSilent {
        retransmits: u32,
    },
    /// Stalled, corroborated by `by`.
    Stall {
        stalled: Duration,
        by: &'static str,
    },
    SessionDown,
    CheckerDown {
        why: String,
    },
    CheckerTimeout,
    /// device-mapper failed it (the kernel saw an I/O error first).
    KernelFailed,
    Slow {
        latency: Duration,
    },
    StuckRequest {
        oldest: Duration,
    },
    Loss {
        events: u32,
    },
    SlowRtt {
        srtt: Duration,
    },
    SlowCheck {
        took: Duration,
    },
    /// Soft signals went on for this long.
    SoftPersisted {
        for_: Duration,
    },
    Quiet {
        for_: Duration,
    },
    CheckerUp,
    Recovered {
        checks: u32,
    },
    Admin,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        match self {
            Self::Discovered => f.write_str("discovered"),
            Self::PathError { errno } => write!(f, "path I/O error (errno {})", -errno),
            Self::GenericError { errno } => write!(
                f,
                "I/O error (errno {}) while a sibling path served I/O",
                -errno
            ),
            Self::ConnReset => f.write_str("TCP reset"),
            Self::ConnSilent { retransmits } => write!(
                f,
                "TCP connection silent: {retransmits} retransmissions in a row, nothing heard"
            ),
            Self::ConnLeft { new_state } => write!(
                f,
                "TCP connection left ESTABLISHED (state {})",
                tcp_state_name(*new_state)
            ),
            Self::Stall { stalled, by } => {
                write!(f, "I/O stalled {:.0} ms, corroborated by {by}", ms(stalled))
            }
            Self::SessionDown => f.write_str("iSCSI session not logged in"),
            Self::CheckerDown { why } => write!(f, "checker: {why}"),
            Self::CheckerTimeout => f.write_str("checker timed out"),
            Self::KernelFailed => f.write_str("failed by the kernel on an I/O error"),
            Self::Slow { latency } => write!(f, "slow completions ({:.0} ms)", ms(latency)),
            Self::StuckRequest { oldest } => write!(
                f,
                "a request stuck {:.0} ms while others complete",
                ms(oldest)
            ),
            Self::Loss { events } => write!(f, "{events} retransmissions or runs of them"),
            Self::SlowRtt { srtt } => write!(f, "TCP RTT {:.0} ms", ms(srtt)),
            Self::SlowCheck { took } => write!(f, "checker took {:.0} ms", ms(took)),
            Self::SoftPersisted { for_ } => {
                write!(f, "degraded for {:.0} s", for_.as_secs_f64())
            }
            Self::Quiet { for_ } => write!(f, "no soft signal for {:.0} s", for_.as_secs_f64()),
            Self::CheckerUp => f.write_str("checker up"),
            Self::Recovered { checks } => write!(f, "{checks} clean checks"),
            Self::Admin => f.write_str("admin"),
        }
    }
}

impl Reason {
    /// A short label for counting decisions by reason (metrics, summaries).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Discovered => "discovered",
            Self::PathError { .. } => "path_error",
            Self::GenericError { .. } => "generic_error",
            Self::ConnReset => "tcp_reset",
            Self::ConnSilent { .. } => "tcp_silent",
            Self::ConnLeft { .. } => "tcp_closed",
            Self::Stall { .. } => "stall",
            Self::SessionDown => "session_down",
            Self::CheckerDown { .. } => "checker_down",
            Self::CheckerTimeout => "checker_timeout",
            Self::KernelFailed => "kernel",
            Self::Slow { .. } => "slow",
            Self::StuckRequest { .. } => "stuck_request",
            Self::Loss { .. } => "loss",
            Self::SlowRtt { .. } => "slow_rtt",
            Self::SlowCheck { .. } => "slow_check",
            Self::SoftPersisted { .. } => "soft_persisted",
            Self::Quiet { .. } => "quiet",
            Self::CheckerUp => "checker_up",
            Self::Recovered { .. } => "recovered",
            Self::Admin => "admin",
        }
    }
}

/// The kernel's TCP state names, by number.
pub fn tcp_state_name(s: u32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "?",
    }
}

/// What the daemon must do for a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Only the state changed (e.g. failed -> probation); nothing to send.
    None,
    /// `fail_path`; with `rescue`, also give the I/O stuck on the path's iSCSI connection
    /// back to device-mapper (see `actions::rescue`).
    Fail { rescue: Option<Rescue> },
    /// `reinstate_path`.
    Reinstate,
    /// Rebuild the map's table so that it prefers its other paths.
    Demote,
    /// Undo a demotion.
    Restore,
}

/// The iSCSI connection whose in-flight I/O should be handed back to device-mapper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rescue {
    pub session: String,
    pub conn: Conn,
}

/// One decision about one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub dev: DevT,
    pub name: String,
    pub map: String,
    pub from: PathState,
    pub to: PathState,
    pub action: Action,
    pub reason: Reason,
    /// Kernel timestamp of the signal behind it (the decision time when there was none).
    pub signal_ns: Ns,
    pub decided_ns: Ns,
}

/// A path as the topology and the maps know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub dev: DevT,
    pub name: String,
    pub map: String,
    /// The iSCSI session and its TCP connection, when the path is iSCSI and connected.
    pub session: Option<String>,
    pub conn: Option<Conn>,
    /// Whether device-mapper has it failed now (its state when first seen).
    pub dm_failed: bool,
}

/// A TCP segment's payload on Ethernet, to turn retransmissions into bytes.
const MSS: u64 = 1448;
/// The least traffic a loss share is taken of, per second of `loss_window`: on a nearly
/// idle connection a few spurious tail-loss probes (a busy host answering late; 1 to 3 a
/// second on a healthy path in the lab under TCG) would otherwise be a high share of
/// almost nothing.
const LOSS_MIN_BYTES_PER_S: u64 = 256 * 1024;
/// Lost segments ([`Reading::lost`]) within `2 * loss_window` that make a path lossy.
const LOST_MIN: u64 = 2;

/// The engine's knobs. Defaults suit iSCSI paths whose healthy latency is milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    /// I/O in flight with no completion this long is a stall (also the probes' stall
    /// limit).
    pub stall_limit: Duration,
    /// After a retransmission on the path's connection, this long with still no
    /// completion means no ACK progress.
    pub retrans_grace: Duration,
    /// A stall corroborated only by a sibling's progress must last this long...
    pub stall_sibling: Duration,
    /// ...or this long when the path's connection still shows ACK progress (a slow
    /// but live transport; a target that stopped answering commands on one portal).
    pub stall_alive: Duration,
    /// Least latency limit; the learned limit is `latency_factor` x the path's baseline.
    pub latency_floor: Duration,
    pub latency_factor: u32,
    /// Least RTT limit; the learned limit is `rtt_factor` x the connection's baseline.
    pub rtt_floor: Duration,
    pub rtt_factor: u32,
    /// A connection that retransmitted this many times in a row without any ACK (about
    /// 3 s of silence with the kernel's timeout backoff at this count) is dead: its paths
    /// fail even with no I/O stalled on them (an idle map, or I/O in flight since before
    /// the daemon watched).
    pub dead_retrans: u32,
    /// This many retransmission runs within `loss_window` are a soft signal...
    pub loss_events: u32,
    /// ...and so are this many retransmissions (single or not) while ACKs move, seen in
    /// two readings or more, if they are at least `loss_percent` of the traffic.
    pub loss_retrans: u32,
    pub loss_percent: u32,
    pub loss_window: Duration,
    /// Degraded with soft signals still coming for this long: failed (unless last).
    pub soft_persist: Duration,
    /// Degraded with no soft signal for this long (and clean checks): active again.
    pub quiet: Duration,
    /// Clean checks in a row before a failed path is reinstated.
    pub reinstate_checks: u32,
    /// A path failing again within this long after it came back is flapping...
    pub flap_window: Duration,
    /// ...and waits this long more in probation, doubled per flap, up to `flap_hold_max`.
    pub flap_hold: Duration,
    pub flap_hold_max: Duration,
    /// Hand I/O stuck on a dead iSCSI connection back to device-mapper.
    pub rescue: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            stall_limit: Duration::from_millis(250),
            retrans_grace: Duration::from_millis(200),
            stall_sibling: Duration::from_millis(500),
            stall_alive: Duration::from_secs(2),
            latency_floor: Duration::from_millis(100),
            latency_factor: 8,
            rtt_floor: Duration::from_millis(100),
            rtt_factor: 8,
            dead_retrans: 5,
            loss_events: 3,
            loss_retrans: 6,
            loss_percent: 2,
            loss_window: Duration::from_secs(2),
            soft_persist: Duration::from_secs(60),
            quiet: Duration::from_secs(10),
            reinstate_checks: 2,
            flap_window: Duration::from_secs(300),
            flap_hold: Duration::from_secs(2),
            flap_hold_max: Duration::from_secs(120),
            rescue: true,
        }
    }
}

/// How long a stuck request must stay over the stall limit, as two readings show it,
/// before it demotes its path. Two readings of the daemon's 50 ms tick: silent loss
/// begins with such a request, and every few milliseconds here leave new I/O on the path.
const STUCK_CONFIRM: Duration = Duration::from_millis(50);

fn stall_limit(cfg: &HealthConfig, p: &Path) -> Duration {
    cfg.stall_limit.max(p.srtt * 3)
}

/// A path's limits, learned from its own baseline with the configured floors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub latency: Duration,
    pub rtt: Duration,
    pub stall: Duration,
}

/// One state change, kept per path (the last [`HISTORY`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: PathState,
    pub to: PathState,
    pub reason: Reason,
    pub signal_ns: Ns,
    pub at_ns: Ns,
}

/// Transitions kept per path.
pub const HISTORY: usize = 16;

/// A stall the engine is waiting to corroborate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stall {
    /// When the path last completed anything before the stall (kernel clock); the stall
    /// began then.
    began_ns: Ns,
    /// The probe's report time.
    seen_ns: Ns,
    /// Whether the stall was last noted as waiting on a live transport (see
    /// [`Output::notes`]), so each wait is said once.
    noted: Option<bool>,
}

#[derive(Clone, Debug)]
struct Path {
    info: PathInfo,
    state: PathState,
    reason: Reason,
    since_ns: Ns,
    history: Vec<Transition>,
    clean_checks: u32,
    /// Failures soon after coming back, for the flap hold.
    flaps: u32,
    reinstated_ns: Option<Ns>,
    hold_until: Ns,
    degraded_since: Ns,
    last_soft_ns: Ns,
    /// The last slow-completion signal (a map whose every path is slow at once is the
    /// LUN, or the host, not a path).
    last_slow_ns: Option<Ns>,
    /// The connection's smoothed RTT as last seen: a slow network stretches every time.
    srtt: Duration,
    retrans_runs: Vec<Ns>,
    last_retrans_ns: Option<Ns>,
    /// The length of the connection's current retransmission run, as last reported.
    retrans_run: u32,
    /// When the connection's ACKs last made progress (the probe's clock).
    acked_ns: Option<Ns>,
    /// When a segment last arrived from the target (the probe's clock).
    heard_ns: Option<Ns>,
    /// When a reading last showed loss (the loss rule's measure, or data lost while ACKs
    /// moved: [`Reading::lost`]), stall or not.
    lossy_ns: Option<Ns>,
    /// Between readings while ACKs moved: (reading time, retransmissions, bytes acked).
    loss_marks: Vec<(Ns, u64, u64)>,
    /// [`Reading::lost`] as read over the last `2 * loss_window`: (reading time, count).
    lost_marks: Vec<(Ns, u64)>,
    stall: Option<Stall>,
    /// When a stuck request was reported while the path completed others: if the path
    /// then completes nothing for the stall limit, that is a stall (the probe reports a
    /// request once, so no second event comes when a silent loss follows).
    stuck_ns: Option<Ns>,
    /// The first reading after the stuck request's report that still showed a request
    /// over the limit.
    stuck_still_ns: Option<Ns>,
    /// A generic error (errno; 0 for a checker's) waiting for a sibling to show the LUN
    /// is fine.
    generic_error: Option<(Ns, i32)>,
    /// The checker's words for it, when it came from the checker.
    generic_why: Option<String>,
    reading: Reading,
    /// When the previous reading was taken.
    reading_ns: Ns,
    /// A time by which the path had completed I/O without error (a lower bound: the
    /// reading before the one that showed it, or a clean check).
    last_ok_ns: Ns,
    /// The path's own latency when healthy (smoothed over readings), 0 until learned.
    baseline: Duration,
    rtt_baseline: Duration,
    lun_errors: u64,
}

impl Path {
    /// Whether the target was heard from after `t`: a segment arrived, or ACKs moved.
    /// An ACK alone would not do: the kernel shows it only when the next segment comes,
    /// which on a slow path (a 150 ms delay in the lab) is after the grace.
    fn heard_since(&self, t: Ns) -> bool {
        self.last_heard_ns() > t
    }

    /// When the target was last heard from (the probe's clock), 0 if never.
    fn last_heard_ns(&self) -> Ns {
        self.acked_ns.unwrap_or(0).max(self.heard_ns.unwrap_or(0))
    }

    /// Whether the retransmission at `r` went unanswered: nothing heard from the target
    /// since, `grace` after it and twice `grace` after the target was last heard, as a
    /// reading taken from then on shows (the loop may lag behind the kernel). A dead link
    /// is silent from the fault on, and its first retransmission after a timeout comes
    /// 200 ms or more after it, so the silence costs it nothing; a link that only got
    /// slower keeps answering, one round trip apart, while a tail-loss probe's answer
    /// can come a whole new round trip after it.
    fn unanswered(&self, r: Ns, grace: Ns, now: Ns) -> bool {
        let last = self.last_heard_ns();
        let due = (r + grace).max(last + 2 * grace);
        last <= r && now >= due && self.reading_ns >= due
    }
}

/// The engine: every path's state and the rules.
#[derive(Clone, Debug)]
pub struct Health {
    cfg: HealthConfig,
    paths: BTreeMap<DevT, Path>,
    /// Each map's paths and each connection's, kept with `paths` (set_paths, rename_map):
    /// the rules ask for a path's siblings on every input, and a walk over every path for
    /// each one cost seconds at 256 paths under emulation (one connection's 128 paths
    /// failed at once took the daemon's loop 9.6 s in a debug build).
    by_map: HashMap<String, Vec<DevT>>,
    by_conn: HashMap<Conn, Vec<DevT>>,
}

/// What one call produced: decisions, and paths to check at once (siblings of a stalled
/// path, whose answer may corroborate it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub decisions: Vec<Decision>,
    pub check_now: Vec<DevT>,
    /// Why a rule is waiting, for the debug log: what a slow decision is read from.
    pub notes: Vec<String>,
}

/// A path's state for views and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathHealthView {
    pub state: PathState,
    pub reason: Reason,
    pub since_ns: Ns,
    pub flaps: u32,
    pub lun_errors: u64,
    pub history: Vec<Transition>,
    pub latency_limit: Duration,
    pub rtt_limit: Duration,
}

impl Health {
    pub fn new(cfg: HealthConfig) -> Self {
        Self {
            cfg,
            paths: BTreeMap::new(),
            by_map: HashMap::new(),
            by_conn: HashMap::new(),
        }
    }

    /// Rebuilds `by_map` and `by_conn` from `paths`.
    fn reindex(&mut self) {
        self.by_map.clear();
        self.by_conn.clear();
        for p in self.paths.values() {
            self.by_map
                .entry(p.info.map.clone())
                .or_default()
                .push(p.info.dev);
            if let Some(c) = p.info.conn {
                self.by_conn.entry(c).or_default().push(p.info.dev);
            }
        }
    }

    /// The paths of `map` (in device order).
    fn mates(&self, map: &str) -> impl Iterator<Item = &Path> {
        self.by_map
            .get(map)
            .into_iter()
            .flatten()
            .filter_map(|d| self.paths.get(d))
    }

    pub fn config(&self) -> &HealthConfig {
        &self.cfg
    }

    pub fn set_config(&mut self, cfg: HealthConfig) {
        self.cfg = cfg;
    }

    /// Makes the known paths exactly `paths`. A new path starts active, or failed when
    /// device-mapper has it failed; a known one keeps its state (a re-login that brings a
    /// new connection keeps it too). Gone paths are forgotten.
    pub fn set_paths(&mut self, paths: Vec<PathInfo>, now: Ns) {
        let keep: BTreeSet<DevT> = paths.iter().map(|p| p.dev).collect();
        self.paths.retain(|d, _| keep.contains(d));
        for info in paths {
            match self.paths.get_mut(&info.dev) {
                Some(p) => p.info = info,
                None => {
                    let (state, reason) = if info.dm_failed {
                        (PathState::Failed, Reason::KernelFailed)
                    } else {
                        (PathState::Active, Reason::Discovered)
                    };
                    self.paths.insert(
                        info.dev,
                        Path {
                            info,
                            state,
                            reason,
                            since_ns: now,
                            history: Vec::new(),
                            clean_checks: 0,
                            flaps: 0,
                            reinstated_ns: None,
                            hold_until: 0,
                            degraded_since: 0,
                            last_soft_ns: 0,
                            last_slow_ns: None,
                            srtt: Duration::ZERO,
                            retrans_runs: Vec::new(),
                            last_retrans_ns: None,
                            acked_ns: None,
                            heard_ns: None,
                            lossy_ns: None,
                            lost_marks: Vec::new(),
                            retrans_run: 0,
                            stuck_ns: None,
                            stuck_still_ns: None,
                            loss_marks: Vec::new(),
                            stall: None,
                            generic_error: None,
                            generic_why: None,
                            reading: Reading::default(),
                            reading_ns: 0,
                            last_ok_ns: 0,
                            baseline: Duration::ZERO,
                            rtt_baseline: Duration::ZERO,
                            lun_errors: 0,
                        },
                    );
                }
            }
        }
        self.reindex();
    }

    /// A map was renamed: its paths follow.
    pub fn rename_map(&mut self, from: &str, to: &str) {
        for p in self.paths.values_mut().filter(|p| p.info.map == from) {
            p.info.map = to.to_string();
        }
        self.reindex();
    }

    pub fn state(&self, dev: DevT) -> Option<PathState> {
        self.paths.get(&dev).map(|p| p.state)
    }

    pub fn view(&self, dev: DevT) -> Option<PathHealthView> {
        let p = self.paths.get(&dev)?;
        Some(PathHealthView {
            state: p.state,
            reason: p.reason.clone(),
            since_ns: p.since_ns,
            flaps: p.flaps,
            lun_errors: p.lun_errors,
            history: p.history.clone(),
            latency_limit: self.latency_limit(p),
            rtt_limit: self.rtt_limit(p),
        })
    }

    /// Paths of `map` that must stay failed in device-mapper (after a reload, which makes
    /// every path active again, these are failed again).
    pub fn held_down(&self, map: &str) -> Vec<DevT> {
        self.mates(map)
            .filter(|p| !p.state.usable())
            .map(|p| p.info.dev)
            .collect()
    }

    /// Usable paths of `map` with I/O stuck or stalled on them right now: a reload would
    /// suspend the map until that I/O comes back, however long it takes.
    pub fn io_stuck(&self, map: &str) -> Vec<DevT> {
        self.mates(map)
            .filter(|p| p.state.usable() && (p.stall.is_some() || p.stuck_ns.is_some()))
            .map(|p| p.info.dev)
            .collect()
    }

    /// Paths the map should prefer less (degraded).
    pub fn demoted(&self) -> BTreeSet<DevT> {
        self.paths
            .values()
            .filter(|p| p.state == PathState::Degraded)
            .map(|p| p.info.dev)
            .collect()
    }

    /// The limits learned for a path, to write into the probes.
    pub fn limits(&self, dev: DevT) -> Option<Limits> {
        let p = self.paths.get(&dev)?;
        Some(Limits {
            latency: self.latency_limit(p),
            rtt: self.rtt_limit(p),
            stall: self.stall_limit(p),
        })
    }

    /// No completion for this long with I/O in flight is a stall: the configured limit,
    /// or three round trips of the path's connection when it is slow.
    fn stall_limit(&self, p: &Path) -> Duration {
        stall_limit(&self.cfg, p)
    }

    /// After a retransmission, this long with still no completion means no ACK progress:
    /// the configured grace, or two round trips.
    fn retrans_grace(&self, p: &Path) -> Duration {
        self.cfg.retrans_grace.max(p.srtt * 2)
    }

    fn latency_limit(&self, p: &Path) -> Duration {
        self.cfg
            .latency_floor
            .max(p.baseline * self.cfg.latency_factor)
    }

    fn rtt_limit(&self, p: &Path) -> Duration {
        self.cfg.rtt_floor.max(p.rtt_baseline * self.cfg.rtt_factor)
    }

    /// Whether any stall waits for corroboration: the daemon then reads the probes'
    /// counters often (every scan) rather than every second.
    pub fn wants_readings(&self) -> bool {
        self.paths
            .values()
            .any(|p| p.stall.is_some() || p.generic_error.is_some() || p.stuck_ns.is_some())
    }

    /// Whether [`Health::tick`] may decide something within the next second: a stall, a
    /// generic error or a stuck request waiting for corroboration, or a connection
    /// retransmitting on a path with no completion seen yet (the silent-connection rule).
    pub fn wants_ticks(&self) -> bool {
        self.wants_readings()
            || self
                .paths
                .values()
                .any(|p| p.state.usable() && p.retrans_run >= 2 && p.reading.last_complete_ns == 0)
    }

    /// Feeds one input; returns what to do.
    pub fn handle(&mut self, now: Ns, input: Input) -> Output {
        self.handle_batch(now, [input])
    }

    /// Inputs observed together (one status poll's paths), judged as [`handle`](Self::handle)
    /// judges each, with the pending stalls judged once after the last rather than after
    /// each: a poll of 128 maps fed 512 inputs, each walking every path, and held the
    /// daemon's loop up to 2.9 s in a release build under TCG.
    pub fn handle_batch(&mut self, now: Ns, inputs: impl IntoIterator<Item = Input>) -> Output {
        let mut out = Output::default();
        for input in inputs {
            self.input(now, input, &mut out);
        }
        self.corroborate(now, &mut out);
        out
    }

    fn input(&mut self, now: Ns, input: Input, out: &mut Output) {
        match input {
            Input::Block { dev, at_ns, signal } => self.block(now, dev, at_ns, signal, out),
            Input::Conn {
                conn,
                at_ns,
                signal,
            } => self.conn(now, conn, at_ns, signal, out),
            Input::Check { dev, verdict } => self.check(now, dev, verdict, out),
            Input::Reading { dev, reading } => self.reading(now, dev, reading, out),
            Input::Session { dev, logged_in } => {
                if !logged_in {
                    self.fail(now, dev, Reason::SessionDown, now, false, out);
                }
            }
            Input::DmState {
                dev,
                failed,
                read_ns,
            } => self.dm_state(now, dev, failed, read_ns, out),
            Input::AdminFail { dev } => {
                self.transition(
                    now,
                    dev,
                    PathState::AdminFailed,
                    Reason::Admin,
                    now,
                    Action::Fail { rescue: None },
                    out,
                );
            }
            Input::AdminReinstate { dev } => {
                if let Some(p) = self.paths.get_mut(&dev) {
                    p.flaps = 0;
                    p.clean_checks = 0;
                }
                self.transition(
                    now,
                    dev,
                    PathState::Active,
                    Reason::Admin,
                    now,
                    Action::Reinstate,
                    out,
                );
            }
        }
    }

    /// Every watched path's reading at once, judged together: what [`handle`](Self::handle)
    /// does for each [`Input::Reading`], with the pending stalls judged once after the last
    /// rather than after each (at 256 paths with 128 stalls pending, that was most of the
    /// daemon's time in the lab).
    pub fn handle_readings(
        &mut self,
        now: Ns,
        readings: impl IntoIterator<Item = (DevT, Reading)>,
    ) -> Output {
        let mut out = Output::default();
        for (dev, r) in readings {
            self.reading(now, dev, r, &mut out);
        }
        self.corroborate(now, &mut out);
        out
    }

    /// Timers: stalls that corroborated or expired, degraded paths that went quiet or
    /// persisted. Call it every scan interval or so.
    pub fn tick(&mut self, now: Ns) -> Output {
        let mut out = Output::default();
        self.corroborate(now, &mut out);
        let devs: Vec<DevT> = self.paths.keys().copied().collect();
        for dev in devs {
            let p = &self.paths[&dev];
            if p.state != PathState::Degraded {
                continue;
            }
            let quiet_for = now.saturating_sub(p.last_soft_ns);
            let degraded_for = now.saturating_sub(p.degraded_since);
            // A flapping path must stay quiet longer before it is trusted again.
            let quiet_needed = ns(self.cfg.quiet) << p.flaps.min(6);
            if quiet_for >= quiet_needed && p.clean_checks >= 1 {
                self.transition(
                    now,
                    dev,
                    PathState::Active,
                    Reason::Quiet {
                        for_: Duration::from_nanos(quiet_for),
                    },
                    now,
                    Action::Restore,
                    &mut out,
                );
            } else if degraded_for >= ns(self.cfg.soft_persist)
                && quiet_for < ns(self.cfg.quiet)
                && self.others_usable(dev) > 0
            {
                self.fail(
                    now,
                    dev,
                    Reason::SoftPersisted {
                        for_: Duration::from_nanos(degraded_for),
                    },
                    now,
                    false,
                    &mut out,
                );
            }
        }
        out
    }

    fn block(&mut self, now: Ns, dev: DevT, at_ns: Ns, signal: BlockSignal, out: &mut Output) {
        let Some(p) = self.paths.get_mut(&dev) else {
            return;
        };
        match signal {
            BlockSignal::Error {
                class: ErrorClass::Lun,
                ..
            } => p.lun_errors += 1,
            BlockSignal::Error {
                class: ErrorClass::Path,
                errno,
            } => self.fail(now, dev, Reason::PathError { errno }, at_ns, true, out),
            BlockSignal::Error {
                class: ErrorClass::Generic,
                errno,
            } => {
                // The LUN may be returning it on every path: fail only once a sibling
                // shows it can serve I/O. Ask the siblings now.
                if p.state.usable() && p.generic_error.is_none() {
                    p.generic_error = Some((at_ns, errno));
                    out.check_now.extend(self.siblings(dev));
                }
            }
            BlockSignal::Slow { latency, .. } => {
                p.last_slow_ns = Some(now);
                // Every other usable path of the map slow too: the LUN, the array or the
                // host, not this path; moving I/O would help nothing.
                let window = ns(self.cfg.loss_window);
                let map = p.info.map.clone();
                let others: Vec<&Path> = self
                    .mates(&map)
                    .filter(|q| q.info.dev != dev && q.state.usable())
                    .collect();
                let all_slow = !others.is_empty()
                    && others.iter().all(|q| {
                        q.last_slow_ns
                            .is_some_and(|t| now.saturating_sub(t) < window)
                    });
                if !all_slow {
                    self.soft(now, dev, Reason::Slow { latency }, at_ns, out)
                }
            }
            BlockSignal::Stalled {
                oldest,
                since_completion,
                ..
            } => {
                let quiet = since_completion.map_or(oldest, |s| s.min(oldest));
                let limit = stall_limit(&self.cfg, p);
                if quiet < limit {
                    // One request stuck while the path completes others: the path works,
                    // that request does not; prefer other paths once the readings show
                    // it persists (see `reading`). The report alone may be the host
                    // pausing: under emulation a healthy path's request was seen at
                    // 322 ms while the whole guest stalled for half a second.
                    p.stuck_ns = Some(at_ns);
                    p.stuck_still_ns = None;
                } else if p.state.usable() && p.stall.is_none() {
                    p.stall = Some(Stall {
                        began_ns: at_ns.saturating_sub(ns(quiet)),
                        seen_ns: at_ns,
                        noted: None,
                    });
                    out.check_now.extend(self.siblings(dev));
                }
            }
        }
    }

    fn conn(&mut self, now: Ns, conn: Conn, at_ns: Ns, signal: ConnSignal, out: &mut Output) {
        let devs: Vec<DevT> = self.by_conn.get(&conn).cloned().unwrap_or_default();
        // The connection is gone already: its socket needs no rescue (the session's
        // recovery timeout decides how fast its I/O comes back).
        match signal {
            ConnSignal::Reset => {
                for dev in devs {
                    self.fail(now, dev, Reason::ConnReset, at_ns, false, out);
                }
            }
            ConnSignal::Left { new_state } => {
                for dev in devs {
                    self.fail(now, dev, Reason::ConnLeft { new_state }, at_ns, false, out);
                }
            }
            ConnSignal::Retransmits { consecutive }
                if self.cfg.dead_retrans > 0 && consecutive >= self.cfg.dead_retrans =>
            {
                for dev in devs {
                    if let Some(p) = self.paths.get_mut(&dev) {
                        p.last_retrans_ns = Some(at_ns);
                    }
                    self.fail(
                        now,
                        dev,
                        Reason::ConnSilent {
                            retransmits: consecutive,
                        },
                        at_ns,
                        true,
                        out,
                    );
                }
            }
            ConnSignal::Retransmits { consecutive } => {
                for dev in devs {
                    let window = ns(self.cfg.loss_window);
                    let limit = self.cfg.loss_events as usize;
                    let p = self.paths.get_mut(&dev).expect("listed above");
                    p.last_retrans_ns = Some(at_ns);
                    p.retrans_run = consecutive;
                    p.retrans_runs.retain(|&t| at_ns.saturating_sub(t) < window);
                    p.retrans_runs.push(at_ns);
                    let runs = p.retrans_runs.len();
                    // A stall waiting on this connection is judged on the next tick;
                    // loss without a stall is a soft signal once it repeats.
                    if p.stall.is_none() && limit > 0 && runs >= limit {
                        self.soft(
                            now,
                            dev,
                            Reason::Loss {
                                events: runs as u32,
                            },
                            at_ns,
                            out,
                        );
                    }
                }
            }
            ConnSignal::SlowRtt { srtt } => {
                for dev in devs {
                    if let Some(p) = self.paths.get_mut(&dev) {
                        p.srtt = srtt;
                    }
                    self.soft(now, dev, Reason::SlowRtt { srtt }, at_ns, out);
                }
            }
        }
    }

    fn check(&mut self, now: Ns, dev: DevT, verdict: CheckVerdict, out: &mut Output) {
        let slow_limit = match self.paths.get(&dev) {
            Some(p) => self.latency_limit(p),
            None => return,
        };
        match verdict {
            CheckVerdict::Down {
                why,
                ambiguous: true,
            } => {
                let p = self.paths.get_mut(&dev).expect("checked above");
                p.clean_checks = 0;
                if p.state.usable() {
                    if p.generic_error.is_none() {
                        p.generic_error = Some((now, 0));
                        p.generic_why = Some(why);
                        out.check_now.extend(self.siblings(dev));
                    }
                } else if p.state == PathState::Probation {
                    self.fail(now, dev, Reason::CheckerDown { why }, now, false, out);
                }
            }
            CheckVerdict::Down {
                why,
                ambiguous: false,
            } => self.fail(now, dev, Reason::CheckerDown { why }, now, false, out),
            CheckVerdict::Timeout => self.fail(now, dev, Reason::CheckerTimeout, now, false, out),
            CheckVerdict::Up { took } => {
                let p = self.paths.get_mut(&dev).expect("checked above");
                // A sibling answering shows the LUN serves I/O; the path itself answered.
                p.last_ok_ns = p.last_ok_ns.max(now);
                p.reading.last_complete_ns = p.reading.last_complete_ns.max(now);
                match p.state {
                    PathState::Failed => {
                        p.clean_checks = 1;
                        let hold = if p.flaps == 0 {
                            0
                        } else {
                            ns(self.cfg.flap_hold)
                                .saturating_mul(1 << (p.flaps - 1).min(16))
                                .min(ns(self.cfg.flap_hold_max))
                        };
                        p.hold_until = now + hold;
                        self.transition(
                            now,
                            dev,
                            PathState::Probation,
                            Reason::CheckerUp,
                            now,
                            Action::None,
                            out,
                        );
                        self.maybe_reinstate(now, dev, out);
                    }
                    PathState::Probation => {
                        p.clean_checks += 1;
                        self.maybe_reinstate(now, dev, out);
                    }
                    PathState::Degraded => {
                        if took > slow_limit {
                            p.clean_checks = 0;
                            self.soft(now, dev, Reason::SlowCheck { took }, now, out);
                        } else {
                            p.clean_checks += 1;
                        }
                    }
                    PathState::Active | PathState::AdminFailed => {}
                }
            }
        }
    }

    fn maybe_reinstate(&mut self, now: Ns, dev: DevT, out: &mut Output) {
        // The map's I/O is queued or failing meanwhile: waiting for more checks or a flap
        // hold only lengthens the outage.
        let alone = self.others_usable(dev) == 0;
        let p = &self.paths[&dev];
        let (needed, hold_until) = if alone {
            (1, 0)
        } else {
            (self.cfg.reinstate_checks.max(1), p.hold_until)
        };
        if p.state == PathState::Probation && p.clean_checks >= needed && now >= hold_until {
            let checks = p.clean_checks;
            self.transition(
                now,
                dev,
                PathState::Active,
                Reason::Recovered { checks },
                now,
                Action::Reinstate,
                out,
            );
        }
    }

    fn reading(&mut self, now: Ns, dev: DevT, r: Reading, out: &mut Output) {
        let Some(p) = self.paths.get(&dev) else {
            return;
        };
        let (latency_limit, rtt_limit) = (self.latency_limit(p), self.rtt_limit(p));
        let p = self.paths.get_mut(&dev).expect("present");
        let progressed = r.last_complete_ns > p.reading.last_complete_ns;
        let prev_ns = p.reading_ns;
        if r.ok_completions > p.reading.ok_completions && p.reading_ns != 0 {
            // Done after the previous reading, at the latest now.
            p.last_ok_ns = p.last_ok_ns.max(p.reading_ns);
        }
        p.reading_ns = now;
        // Learn the baseline only from a healthy path doing I/O: a slow path must not
        // teach the engine that slow is normal.
        // Nor from a sample over the limit: a path just made 150 ms slower taught the
        // engine its new RTT within two readings (the limit rose past the RTT) before the
        // probe's event could fire, and the path was never demoted (seen in the lab).
        if p.state == PathState::Active
            && r.ewma > Duration::ZERO
            && r.ewma <= latency_limit
            && r.completions > p.reading.completions
        {
            p.baseline = if p.baseline.is_zero() {
                r.ewma
            } else {
                (p.baseline * 7 + r.ewma) / 8
            };
        }
        if r.srtt > Duration::ZERO {
            p.srtt = r.srtt;
        }
        if r.last_ack_ns != 0 {
            p.acked_ns = Some(p.acked_ns.unwrap_or(0).max(r.last_ack_ns));
        }
        if r.last_rcv_ns != 0 {
            p.heard_ns = Some(p.heard_ns.unwrap_or(0).max(r.last_rcv_ns));
        }
        let mut lossy = false;
        if let (Some(before), Some(una)) = (p.reading.snd_una, r.snd_una)
            && una != before
            && prev_ns != 0
        {
            // Retransmitting while ACKs move: a lossy path, not a dead one (that is the
            // stall rules' job). Single retransmissions count here, which the probe's
            // run events miss at a few percent of loss.
            let n = r.retransmits.saturating_sub(p.reading.retransmits);
            if n > 0 {
                p.loss_marks
                    .push((now, n, u64::from(una.wrapping_sub(before))));
            }
            lossy = true;
        }
        let window = ns(self.cfg.loss_window);
        p.loss_marks
            .retain(|&(t, _, _)| now.saturating_sub(t) < window);
        let lost: u64 = p.loss_marks.iter().map(|&(_, n, _)| n).sum();
        let acked: u64 = p
            .loss_marks
            .iter()
            .map(|&(_, _, b)| b)
            .sum::<u64>()
            .max(LOSS_MIN_BYTES_PER_S * self.cfg.loss_window.as_secs().max(1));
        // One timeout retransmits a whole flight at once (a spurious one too, after a
        // hiccup of the host): loss is retransmissions seen in two readings or more, and
        // a share of the traffic (a segment of ~1448 bytes per retransmission).
        let spread =
            p.loss_marks.len() >= 2 && lost * MSS * 100 >= acked * u64::from(self.cfg.loss_percent);
        if lossy && spread && self.cfg.loss_retrans > 0 && lost >= u64::from(self.cfg.loss_retrans)
        {
            p.lossy_ns = Some(now);
        }
        // Data lost (not merely retransmitted) while ACKs move: a lossy path, whose next
        // retransmission timeout may silence it for over 0.5 s (the lab's 5% loss had a
        // path failed that way by the sibling rule). Its retransmissions alone are no
        // measure: 2 to 5 a second at 5% loss, as many as a healthy path's spurious
        // probes under emulation. Two readings' worth, so one probe whose D-SACK came a
        // reading late is not loss.
        p.lost_marks
            .retain(|&(t, _)| now.saturating_sub(t) < 2 * window);
        if let Some(l) = r.lost {
            let since = p
                .lost_marks
                .first()
                .map_or(0, |&(_, first)| l.saturating_sub(first));
            if lossy && since >= LOST_MIN {
                p.lossy_ns = Some(now);
            }
            p.lost_marks.push((now, l));
        }
        let slow_rtt = r.srtt > rtt_limit;
        if p.state == PathState::Active && r.srtt > Duration::ZERO && !slow_rtt {
            p.rtt_baseline = if p.rtt_baseline.is_zero() {
                r.srtt
            } else {
                (p.rtt_baseline * 7 + r.srtt) / 8
            };
        }
        if r.inflight == 0 {
            // Nothing in flight: no request is stuck any more.
            p.stuck_ns = None;
        }
        p.reading = Reading {
            last_complete_ns: r.last_complete_ns.max(p.reading.last_complete_ns),
            ..r
        };
        // Progress ends a stall.
        if let Some(s) = p.stall
            && progressed
            && r.last_complete_ns > s.seen_ns
        {
            p.stall = None;
        }
        // A stuck request still over the limit in two readings [`STUCK_CONFIRM`] apart
        // after its report persists: not a pause of the host, whose request completes
        // as soon as the host runs again.
        let mut stuck_on = None;
        if let Some(seen) = p.stuck_ns
            && p.stall.is_none()
            && now > seen
        {
            let limit = stall_limit(&self.cfg, p);
            match (r.oldest.filter(|&o| o >= limit), p.stuck_still_ns) {
                (None, _) => p.stuck_still_ns = None,
                (Some(_), None) => p.stuck_still_ns = Some(now),
                (Some(oldest), Some(first)) if now.saturating_sub(first) >= ns(STUCK_CONFIRM) => {
                    stuck_on = Some((seen, oldest));
                }
                (Some(_), Some(_)) => {}
            }
        }
        if slow_rtt && p.state == PathState::Active {
            // What the probe's event says, from the reading: the event fires only on a
            // segment that sees the RTT over the limit the eBPF map held at that moment.
            let srtt = r.srtt;
            self.soft(now, dev, Reason::SlowRtt { srtt }, now, out);
        } else if lossy
            && spread
            && p.stall.is_none()
            && self.cfg.loss_retrans > 0
            && lost >= u64::from(self.cfg.loss_retrans)
        {
            self.soft(
                now,
                dev,
                Reason::Loss {
                    events: lost.min(u64::from(u32::MAX)) as u32,
                },
                now,
                out,
            );
        }
        if let Some((seen, oldest)) = stuck_on {
            self.soft(now, dev, Reason::StuckRequest { oldest }, seen, out);
        }
    }

    fn dm_state(&mut self, now: Ns, dev: DevT, failed: bool, read_ns: Ns, out: &mut Output) {
        let Some(p) = self.paths.get(&dev) else {
            return;
        };
        if failed && p.state.usable() && p.since_ns <= read_ns {
            // The kernel failed it first (an I/O error came back): follow, nothing to send.
            self.transition(
                now,
                dev,
                PathState::Failed,
                Reason::KernelFailed,
                now,
                Action::None,
                out,
            );
            self.count_flap(now, dev);
        }
    }

    /// A soft signal: demote an active path; keep a degraded one degraded.
    fn soft(&mut self, now: Ns, dev: DevT, reason: Reason, at_ns: Ns, out: &mut Output) {
        let others = self.others_active(dev);
        let Some(p) = self.paths.get_mut(&dev) else {
            return;
        };
        p.last_soft_ns = now;
        p.clean_checks = 0;
        match p.state {
            // Demoting the last active path would move I/O nowhere, or onto paths
            // already found worse (the lab saw a healthy path demoted by one slow
            // request beside a 150 ms one, and I/O split over both).
            PathState::Active if others > 0 => {
                p.degraded_since = now;
                self.transition(
                    now,
                    dev,
                    PathState::Degraded,
                    reason,
                    at_ns,
                    Action::Demote,
                    out,
                );
            }
            PathState::Probation => {
                // Back to failed: it is not clean yet.
                self.transition(
                    now,
                    dev,
                    PathState::Failed,
                    reason,
                    at_ns,
                    Action::None,
                    out,
                );
                self.count_flap(now, dev);
            }
            _ => {}
        }
    }

    /// Fails `dev` unless it is failed already. `hard`: the path's connection is dead but
    /// still open, so the I/O stuck on it may be rescued.
    fn fail(
        &mut self,
        now: Ns,
        dev: DevT,
        reason: Reason,
        at_ns: Ns,
        hard: bool,
        out: &mut Output,
    ) {
        let Some(p) = self.paths.get(&dev) else {
            return;
        };
        match p.state {
            PathState::Active | PathState::Degraded => {
                let rescue = if hard {
                    self.rescue_for(now, dev)
                } else {
                    None
                };
                self.transition(
                    now,
                    dev,
                    PathState::Failed,
                    reason,
                    at_ns,
                    Action::Fail { rescue },
                    out,
                );
                self.count_flap(now, dev);
            }
            PathState::Probation => {
                // Still failed in device-mapper: only the state goes back.
                self.transition(
                    now,
                    dev,
                    PathState::Failed,
                    reason,
                    at_ns,
                    Action::None,
                    out,
                );
                self.count_flap(now, dev);
            }
            PathState::Failed => {
                let p = self.paths.get_mut(&dev).expect("present");
                p.clean_checks = 0;
            }
            PathState::AdminFailed => {}
        }
    }

    fn count_flap(&mut self, now: Ns, dev: DevT) {
        let window = ns(self.cfg.flap_window);
        if let Some(p) = self.paths.get_mut(&dev) {
            p.clean_checks = 0;
            p.stall = None;
            p.generic_error = None;
            match p.reinstated_ns {
                Some(t) if now.saturating_sub(t) < window => p.flaps += 1,
                _ => p.flaps = 0,
            }
        }
    }

    /// The rescue for failing `dev`, when it is safe: its iSCSI connection carries paths
    /// of some maps, each of those maps keeps a usable path on another connection, and
    /// the target has been silent on it for twice the grace. The rescue lets device-mapper
    /// retry the connection's commands on another path; a target still talking may still
    /// receive and run them after the retry, and an old write would land over a newer one
    /// (the likely cause of a block found holding another block's data in the lab, after
    /// a path only 150 ms slower was taken for dead and rescued).
    fn rescue_for(&self, now: Ns, dev: DevT) -> Option<Rescue> {
        if !self.cfg.rescue {
            return None;
        }
        let p = self.paths.get(&dev)?;
        let last = p.last_heard_ns();
        if last != 0 && now.saturating_sub(last) < 2 * ns(self.retrans_grace(p)) {
            return None;
        }
        let (conn, session) = (p.info.conn?, p.info.session.clone()?);
        let carried: BTreeSet<&str> = self
            .by_conn
            .get(&conn)
            .into_iter()
            .flatten()
            .filter_map(|d| self.paths.get(d))
            .map(|q| q.info.map.as_str())
            .collect();
        let safe = carried.iter().all(|m| {
            self.mates(m)
                .any(|q| q.info.conn != Some(conn) && q.state.usable())
        });
        safe.then_some(Rescue { session, conn })
    }

    /// Other paths of `dev`'s map that are active (usable and not demoted).
    fn others_active(&self, dev: DevT) -> usize {
        let Some(p) = self.paths.get(&dev) else {
            return 0;
        };
        self.mates(&p.info.map)
            .filter(|q| q.info.dev != dev && q.state == PathState::Active)
            .count()
    }

    /// Usable paths of `dev`'s map other than `dev`.
    fn others_usable(&self, dev: DevT) -> usize {
        let Some(p) = self.paths.get(&dev) else {
            return 0;
        };
        self.mates(&p.info.map)
            .filter(|q| q.info.dev != dev && q.state.usable())
            .count()
    }

    /// Failed paths (or paths in probation) of maps with no usable path: the daemon
    /// checks these every second, not every `polling_interval`.
    pub fn pathless(&self) -> BTreeSet<DevT> {
        self.paths
            .values()
            .filter(|p| matches!(p.state, PathState::Failed | PathState::Probation))
            .filter(|p| self.others_usable(p.info.dev) == 0)
            .map(|p| p.info.dev)
            .collect()
    }

    /// Other paths of `dev`'s map that are not admin-failed.
    fn siblings(&self, dev: DevT) -> Vec<DevT> {
        let Some(p) = self.paths.get(&dev) else {
            return Vec::new();
        };
        self.mates(&p.info.map)
            .filter(|q| q.info.dev != dev && q.state != PathState::AdminFailed)
            .map(|q| q.info.dev)
            .collect()
    }

    /// A path with a stuck request that has since completed nothing for the stall limit
    /// (as the readings show) has stalled.
    fn stuck_to_stall(&mut self, now: Ns, out: &mut Output) {
        let quiet = ns(self.cfg.quiet);
        let devs: Vec<DevT> = self
            .paths
            .values()
            .filter(|p| p.stuck_ns.is_some())
            .map(|p| p.info.dev)
            .collect();
        for dev in devs {
            let limit = ns(stall_limit(&self.cfg, &self.paths[&dev]));
            let p = self.paths.get_mut(&dev).expect("listed");
            let Some(seen) = p.stuck_ns else { continue };
            let last = p.reading.last_complete_ns;
            if p.stall.is_some() || !p.state.usable() || now.saturating_sub(seen) > quiet {
                p.stuck_ns = None;
            } else if p.reading_ns > seen
                && p.reading.inflight > 0
                && last != 0
                && now.saturating_sub(last) >= limit
            {
                p.stuck_ns = None;
                p.stall = Some(Stall {
                    began_ns: last,
                    seen_ns: now,
                    noted: None,
                });
                out.check_now.extend(self.siblings(dev));
            }
        }
    }

    /// A path that has completed nothing since it was watched cannot show a stall (its
    /// I/O in flight predates the probes: a daemon restarted during a fault): its
    /// connection retransmitting twice in a row with no ACK within the grace, while a
    /// sibling serves I/O, is dead, without waiting for `dead_retrans`.
    fn silent_since_watched(&mut self, now: Ns, out: &mut Output) {
        let devs: Vec<DevT> = self
            .paths
            .values()
            .filter(|p| {
                p.state.usable()
                    && p.stall.is_none()
                    && p.reading.last_complete_ns == 0
                    && p.retrans_run >= 2
                    && p.last_retrans_ns
                        .is_some_and(|r| p.unanswered(r, ns(self.retrans_grace(p)), now))
                    && self
                        .mates(&p.info.map)
                        .any(|q| q.info.dev != p.info.dev && q.state.usable() && q.last_ok_ns > 0)
            })
            .map(|p| p.info.dev)
            .collect();
        for dev in devs {
            let p = &self.paths[&dev];
            let (run, at) = (p.retrans_run, p.last_retrans_ns.unwrap_or(now));
            self.fail(
                now,
                dev,
                Reason::ConnSilent { retransmits: run },
                at,
                true,
                out,
            );
        }
    }

    /// Judges every pending stall and generic error.
    fn corroborate(&mut self, now: Ns, out: &mut Output) {
        self.stuck_to_stall(now, out);
        self.silent_since_watched(now, out);
        let sibling_need = ns(self.cfg.stall_sibling);
        let devs: Vec<DevT> = self
            .paths
            .values()
            .filter(|p| p.stall.is_some() || p.generic_error.is_some())
            .map(|p| p.info.dev)
            .collect();
        if devs.is_empty() {
            return;
        }
        for dev in devs {
            let p = &self.paths[&dev];
            if !p.state.usable() {
                continue;
            }
            let mates: &[DevT] = self.by_map.get(&p.info.map).map_or(&[], |v| v.as_slice());
            let others = || {
                mates
                    .iter()
                    .filter(move |d| **d != dev)
                    .filter_map(|d| self.paths.get(d))
            };
            if let Some((at, errno)) = p.generic_error {
                let sibling_ok = others().any(|q| q.last_ok_ns > at);
                let sibling_err = others().any(|q| q.generic_error.is_some());
                if sibling_err {
                    // The same error on another path: the LUN, not this path.
                    for d in mates {
                        let Some(q) = self.paths.get_mut(d) else {
                            continue;
                        };
                        if q.generic_error.take().is_some() {
                            q.lun_errors += 1;
                        }
                        q.generic_why = None;
                    }
                    continue;
                } else if sibling_ok {
                    let reason = match self.paths[&dev].generic_why.clone() {
                        Some(why) => Reason::CheckerDown { why },
                        None => Reason::GenericError { errno },
                    };
                    let hard = errno != 0;
                    self.fail(now, dev, reason, at, hard, out);
                    continue;
                } else if now.saturating_sub(at) > ns(self.cfg.quiet) {
                    self.paths.get_mut(&dev).expect("listed").generic_error = None;
                }
            }
            let p = &self.paths[&dev];
            let Some(stall) = p.stall else { continue };
            if p.reading.last_complete_ns > stall.seen_ns {
                self.paths.get_mut(&dev).expect("listed").stall = None;
                continue;
            }
            let stalled = now.saturating_sub(stall.began_ns);
            // Every usable path of the map stalled: the LUN or the array, not a path.
            let usable: Vec<&Path> = mates
                .iter()
                .filter_map(|d| self.paths.get(d))
                .filter(|q| q.state.usable())
                .collect();
            if usable.len() < 2 || usable.iter().all(|q| q.stall.is_some()) {
                if stalled > ns(self.cfg.soft_persist) {
                    // Never corroborated: forget it; a new stall is reported anew.
                    self.paths.get_mut(&dev).expect("listed").stall = None;
                }
                continue;
            }
            let grace = ns(self.retrans_grace(p));
            // The target was heard from after the stall began: the transport is alive,
            // only slow (a gray failure: a 150 ms delay in the lab collapsed the window and
            // spaced ACKs 600 ms apart); a sibling's progress then needs the longer
            // `stall_alive` before it proves this path is broken. A dead path is the
            // retransmission rule's, which this does not slow.
            // So was a path losing packets just now (the loss rule's measure): on a lossy
            // link a retransmission timeout stalls I/O for 0.5 s and more with the target
            // silent meanwhile, and the lab's 5% loss had a path failed that way at 532 ms.
            // Loss within `loss_window` before the stall began counts, however long the
            // stall has lasted since: a stalled path shows no loss (nothing moves).
            let alive = p.heard_since(stall.began_ns)
                || p.lossy_ns
                    .is_some_and(|t| t + ns(self.cfg.loss_window) >= stall.began_ns);
            // Judged only on a reading taken after the deadline, so what the ACKs did until
            // then is known (the loop may lag behind the kernel under load).
            let seen_after = |t: Ns| p.reading_ns >= t;
            let need = if alive {
                ns(self.cfg.stall_alive)
            } else {
                sibling_need
            };
            let by = if let Some(r) = p.last_retrans_ns
                && r >= stall.began_ns
                && p.unanswered(r, grace, now)
            {
                Some("retransmissions without ACK progress")
            } else if stalled >= need
                && seen_after(stall.began_ns + need)
                && usable
                    .iter()
                    .any(|q| q.info.dev != dev && q.last_ok_ns > stall.began_ns)
            {
                Some("a sibling path completing I/O")
            } else {
                None
            };
            if by.is_none() && stalled >= sibling_need && stall.noted != Some(alive) {
                let rel = |t: Option<Ns>| match t {
                    Some(t) if t != 0 => format!("{:+} ms", ms_between(stall.began_ns, t)),
                    _ => "never".to_string(),
                };
                out.notes.push(format!(
                    "stall of {} waits: path={} stalled_ms={} need_ms={} heard={} lossy={} \
                     retransmitted={} retrans_run={} sibling_ok={} reading_age_ms={} srtt_ms={}",
                    p.info.name,
                    p.info.name,
                    stalled / 1_000_000,
                    need / 1_000_000,
                    rel(Some(p.last_heard_ns())),
                    rel(p.lossy_ns),
                    rel(p.last_retrans_ns),
                    p.retrans_run,
                    usable
                        .iter()
                        .any(|q| q.info.dev != dev && q.last_ok_ns > stall.began_ns),
                    now.saturating_sub(p.reading_ns) / 1_000_000,
                    p.srtt.as_millis(),
                ));
                if let Some(s) = self.paths.get_mut(&dev).and_then(|p| p.stall.as_mut()) {
                    s.noted = Some(alive);
                }
            }
            if let Some(by) = by {
                self.fail(
                    now,
                    dev,
                    Reason::Stall {
                        stalled: Duration::from_nanos(stalled),
                        by,
                    },
                    stall.seen_ns,
                    true,
                    out,
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn transition(
        &mut self,
        now: Ns,
        dev: DevT,
        to: PathState,
        reason: Reason,
        signal_ns: Ns,
        action: Action,
        out: &mut Output,
    ) {
        let Some(p) = self.paths.get_mut(&dev) else {
            return;
        };
        let from = p.state;
        if from == to && action == Action::None {
            return;
        }
        if to == PathState::Active && from != PathState::Active {
            p.reinstated_ns = Some(now);
        }
        if to == PathState::Active {
            p.stall = None;
            p.generic_error = None;
            p.retrans_runs.clear();
        }
        p.state = to;
        p.reason = reason.clone();
        p.since_ns = now;
        if p.history.len() == HISTORY {
            p.history.remove(0);
        }
        p.history.push(Transition {
            from,
            to,
            reason: reason.clone(),
            signal_ns,
            at_ns: now,
        });
        out.decisions.push(Decision {
            dev,
            name: p.info.name.clone(),
            map: p.info.map.clone(),
            from,
            to,
            action,
            reason,
            signal_ns,
            decided_ns: now,
        });
    }
}
