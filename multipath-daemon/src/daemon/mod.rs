//! `mpathd daemon`: the long-running service.
//!
//! The event loop only decides. Everything that can wait on the kernel runs elsewhere and
//! comes back as an event: sysfs and device-mapper reads on blocking threads
//! ([`gather`]), device-mapper changes in per-map lanes ([`crate::actions`]), checks in
//! the [`CheckerPool`], control requests that read device-mapper on blocking threads. A
//! suspend stuck behind I/O on a dead path therefore delays nothing but its own map's
//! table: signals, the control socket, udev events, checks and `fail_path` messages go on.
//!
//! What feeds the [`Engine`]: a reconcile pass at start, on udev events for paths and
//! SCSI unit attentions (debounced, so a login of 128 LUNs is one pass), on
//! `reconfigure`/SIGHUP and every `rescan_interval`; every `check_interval` a check of
//! every path and a poll of the maps' status, the iSCSI sessions and the paths' ALUA
//! states; the health engine's timers.
//!
//! Exiting never touches the maps: a stopped or crashed daemon leaves every map as it
//! was, serving I/O on the paths it has. On SIGTERM the iSCSI sessions' recovery timeouts
//! are put back; after a crash the next start does it from the ledger.

mod engine;
pub mod gather;
pub mod views;

pub use engine::{Command, Engine, EngineOptions, MapState, Summary, Why, Work};

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};
use tracing::{debug, error, info, warn};

use crate::{
    actions::{
        DmEvent, DmExec, OpId,
        rescue::{self, Ledger},
    },
    checker::{CheckOutcome, CheckResult, CheckerPool},
    config::Config,
    control::{Request, Response},
    dm::{DmBackend, KernelDm},
    ebpf::{
        ConnEventKind, ConnThresholds, PathEventKind, PathReading, PathThresholds, ProbeEvent,
        WatchSpec, Watcher, WatcherOptions,
    },
    health::{BlockSignal, CheckVerdict, ConnSignal, Decision, ErrorClass, Input, Reading},
    model::{Conn, monotonic_ns},
    topology::Sysfs,
};

/// Where the daemon looks for its config unless told otherwise.
pub const DEFAULT_CONFIG: &str = crate::config::DEFAULT_CONFIG_PATH;

#[derive(Clone, Debug)]
pub struct Options {
    /// The config file; when it is the default path and missing, built-in defaults apply.
    pub config: PathBuf,
    /// Overrides the config's `socket`.
    pub socket: Option<PathBuf>,
    /// Rescan even without udev events this often (udev may not run, or miss events).
    pub rescan_interval: Duration,
    /// The path checker's interval (and the poll of the maps' status); `None`: the
    /// config's `polling_interval`.
    pub check_interval: Option<Duration>,
    /// Gathers udev events for this long before a rescan.
    pub debounce: Duration,
    /// Decide and log, but change nothing: no map created or reloaded, no path failed,
    /// no session touched (to run beside multipathd).
    pub observe: bool,
    pub engine: EngineOptions,
    /// Where the sessions' original recovery timeouts are kept.
    pub ledger: PathBuf,
    /// The root under which `sys/` is read and written (`/` on a host).
    pub sysfs_root: PathBuf,
    /// Run the eBPF probes on the managed paths (off: the checker alone decides).
    pub probes: bool,
    pub watcher: WatcherOptions,
    /// Serve Prometheus metrics here (`None`: not at all).
    pub metrics: Option<std::net::SocketAddr>,
}

impl Options {
    pub fn new(config: PathBuf) -> Self {
        Self {
            config,
            socket: None,
            rescan_interval: Duration::from_secs(30),
            check_interval: None,
            debounce: Duration::from_millis(100),
            observe: false,
            engine: EngineOptions::default(),
            ledger: PathBuf::from(rescue::DEFAULT_LEDGER),
            sysfs_root: PathBuf::from("/"),
            probes: true,
            watcher: WatcherOptions::default(),
            metrics: crate::metrics::DEFAULT_ADDRESS.parse().ok(),
        }
    }
}

/// Reads the config for the daemon: a missing file at the default path means defaults;
/// any other problem is an error with every line and column.
pub fn load_config(path: &Path) -> Result<Config> {
    if path == Path::new(DEFAULT_CONFIG) && !path.exists() {
        info!("no {DEFAULT_CONFIG}: using built-in defaults");
        return Ok(Config::default());
    }
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

pub async fn run(opts: Options) -> Result<()> {
    let t0 = Instant::now();
    let cfg = load_config(&opts.config)?;
    let socket_path = opts
        .socket
        .clone()
        .unwrap_or_else(|| cfg.defaults.socket.clone());
    let listener = bind_socket(&socket_path)?;
    let dm = KernelDm::new().context("opening device-mapper")?;
    let ledger = Ledger::load(&opts.ledger)?;
    let engine = Engine::new(cfg, opts.engine.clone(), ledger)?;
    let sysfs = Sysfs::new(&opts.sysfs_root);
    let r = serve(
        opts,
        engine,
        sysfs,
        Arc::new(dm),
        listener,
        t0,
        std::future::pending(),
    )
    .await;
    let _ = std::fs::remove_file(&socket_path);
    r
}

/// What comes back to the loop from work done elsewhere.
enum Event {
    Gathered(Box<gather::Snapshot>),
    /// The pass's reading thread panicked: the next rescan starts another.
    GatherLost(String),
    Polled(Box<gather::Poll>),
    /// The poll's thread panicked: a poll may start again.
    PollLost(String),
    Written(std::path::PathBuf, std::io::Result<()>),
    Checked(CheckResult),
    TmoWritten {
        session: String,
        secs: u32,
        result: std::io::Result<()>,
    },
    Rescued {
        decision: Box<Decision>,
        conn: Conn,
        result: std::io::Result<()>,
        /// From the command to the blocking thread starting it, and the destroy itself.
        waited: Duration,
        took: Duration,
    },
    Config(Box<Result<Config>>, Option<oneshot::Sender<Response>>),
    FailbackDue(String),
    /// The probes' readings, and the `tcp_info` loss counters of their connections.
    Readings(Vec<PathReading>, BTreeMap<Conn, u64>),
    ProbesStarted(Box<Result<(Watcher, mpsc::Receiver<ProbeEvent>), crate::ebpf::EbpfError>>),
}

impl Event {
    /// The variant's name, for the slow-turn log.
    fn kind(&self) -> &'static str {
        match self {
            Self::Gathered(_) => "gathered",
            Self::GatherLost(_) => "gather lost",
            Self::Polled(_) => "polled",
            Self::PollLost(_) => "poll lost",
            Self::Written(..) => "written",
            Self::Checked(_) => "checked",
            Self::TmoWritten { .. } => "recovery_tmo written",
            Self::Rescued { .. } => "rescued",
            Self::Config(..) => "config",
            Self::FailbackDue(_) => "failback due",
            Self::Readings(..) => "readings",
            Self::ProbesStarted(_) => "probes started",
        }
    }
}

/// The watch set with each path's learned limits kept as they are in the kernel unless
/// they moved by more than an eighth (a stall limit that rose is always sent): the
/// baselines move a little with every reading, and sending them all to the probes each
/// second cost the watcher's thread 256 map writes a second at 256 paths, for nothing a
/// rule could tell apart.
fn settle_limits(current: &[WatchSpec], mut specs: Vec<WatchSpec>) -> Vec<WatchSpec> {
    fn settle(old: Duration, new: Duration) -> Duration {
        if old.abs_diff(new) * 8 <= old {
            old
        } else {
            new
        }
    }
    let by_dev: HashMap<crate::model::DevT, &WatchSpec> =
        current.iter().map(|s| (s.dev, s)).collect();
    for s in &mut specs {
        let Some(old) = by_dev.get(&s.dev) else {
            continue;
        };
        s.path.latency_limit = settle(old.path.latency_limit, s.path.latency_limit);
        // A stall limit that rose is always sent: below the engine's, the probe would
        // report the stall early, the engine would read it as one stuck request, and the
        // probe reports a request only once. One that fell a little reports a little late.
        if s.path.stall_limit <= old.path.stall_limit {
            s.path.stall_limit = settle(old.path.stall_limit, s.path.stall_limit);
        }
        s.tcp.rtt_limit = settle(old.tcp.rtt_limit, s.tcp.rtt_limit);
    }
    specs
}

/// A loop turn this long is logged at debug (see the loop).
const SLOW_TURN: Duration = Duration::from_millis(20);

/// A reconcile pass whose work is not all done yet.
struct Pass {
    sum: Summary,
    outstanding: BTreeSet<OpId>,
    t0: Instant,
    waiters: Vec<oneshot::Sender<Response>>,
    first: bool,
}

/// What an operation in flight belongs to.
struct Pending {
    why: Why,
    pass: Option<u64>,
    reply: Option<(oneshot::Sender<Response>, String)>,
}

struct Daemon<D: DmBackend + 'static> {
    opts: Options,
    engine: Engine,
    sysfs: Sysfs,
    dm: Arc<D>,
    exec: DmExec<D>,
    events: mpsc::UnboundedSender<Event>,
    pool: CheckerPool,
    pending: HashMap<OpId, Pending>,
    passes: BTreeMap<u64, Pass>,
    next_pass: u64,
    gathering: bool,
    /// A poll is reading; another asked for meanwhile waits for it (`poll_again`). Each
    /// create asks for one, and 128 polls of every map at once starved start-up.
    polling: bool,
    poll_again: bool,
    /// Files being written off the loop, each with the newer contents to write after
    /// (one write per file at a time, the last contents win).
    writes: HashMap<std::path::PathBuf, Option<String>>,
    /// Who waits for the pass being read now.
    pass_waiters: Vec<oneshot::Sender<Response>>,
    /// A pass was asked for while one was gathering: run another after it.
    again: Option<Vec<oneshot::Sender<Response>>>,
    first_pass_done: bool,
    t0: Instant,
    /// Paths whose checker said "unsupported" (logged once).
    unsupported: BTreeSet<crate::model::DevT>,
    watcher: Option<Watcher>,
    probe_rx: Option<mpsc::Receiver<ProbeEvent>>,
    /// What the probes were last asked to watch.
    watching: Vec<WatchSpec>,
    readings_pending: bool,
    /// Each path's connection counters at the previous reading (retransmissions,
    /// snd_una), to log retransmissions as they happen.
    last_conn: HashMap<crate::model::DevT, (u64, u32)>,
    /// A failed `tcp_info` read was logged (once: it fails the same way every second).
    tcp_info_warned: Arc<std::sync::atomic::AtomicBool>,
    stats: crate::metrics::Stats,
}

/// The daemon's loop around an engine on any device-mapper backend, until SIGTERM,
/// SIGINT or `stop` (tests) completes.
pub async fn serve<D: DmBackend + 'static>(
    opts: Options,
    engine: Engine,
    sysfs: Sysfs,
    dm: Arc<D>,
    listener: UnixListener,
    t0: Instant,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    debug!(
        ms = t0.elapsed().as_millis(),
        "config, socket and device-mapper open"
    );
    let (dm_tx, mut dm_rx) = mpsc::unbounded_channel::<DmEvent>();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let mut d = Daemon {
        exec: DmExec::new(dm.clone(), dm_tx),
        opts,
        engine,
        sysfs,
        dm,
        events: ev_tx,
        pool: CheckerPool::new(),
        pending: HashMap::new(),
        passes: BTreeMap::new(),
        next_pass: 1,
        gathering: false,
        polling: false,
        poll_again: false,
        writes: HashMap::new(),
        pass_waiters: Vec::new(),
        again: None,
        first_pass_done: false,
        t0,
        unsupported: BTreeSet::new(),
        watcher: None,
        probe_rx: None,
        watching: Vec::new(),
        readings_pending: false,
        last_conn: HashMap::new(),
        tcp_info_warned: Default::default(),
        stats: crate::metrics::Stats::new(),
    };
    if d.opts.observe {
        info!("observe mode: decisions are logged, nothing is changed");
    }
    if !d.opts.observe && d.engine.options().health.rescue {
        tokio::task::spawn_blocking(|| match rescue::warm_up() {
            Ok(()) => debug!("in-flight rescue ready (sock_diag destroy works)"),
            Err(e) => warn!(
                "in-flight rescue unavailable ({e}): I/O stuck on a dead iSCSI connection waits for the transport; \
                 the kernel needs CONFIG_INET_DIAG_DESTROY and mpathd CAP_NET_ADMIN"
            ),
        });
    }
    if d.opts.probes {
        // Loading and verifying the programs takes a while (seconds under emulation):
        // the maps are made meanwhile.
        let (wopts, tx) = (d.opts.watcher, d.events.clone());
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(Event::ProbesStarted(Box::new(Watcher::start(wopts))));
        });
    }
    d.start_pass(None);

    let (req_tx, mut req_rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(64);
    tokio::spawn(accept_loop(listener, req_tx));
    let mut udev = match udev_monitor() {
        Ok(m) => Some(m),
        Err(e) => {
            warn!("no udev monitor ({e}): relying on the periodic rescan");
            None
        }
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut rescan = tokio::time::interval(d.opts.rescan_interval);
    rescan.tick().await;
    let interval = d
        .opts
        .check_interval
        .unwrap_or(d.engine.config().defaults.polling_interval);
    let mut check = tokio::time::interval(interval);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;
    // 20 ticks a second only while the engine has something to judge that fast; an idle
    // daemon wakes for the slow tick (under TCG each wakeup's clock reads are syscalls).
    let mut health_tick = tokio::time::interval(Duration::from_millis(50));
    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slow_tick = tokio::time::interval(Duration::from_secs(1));
    slow_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut readings_tick = tokio::time::interval(Duration::from_secs(1));
    readings_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut debounce_at: Option<tokio::time::Instant> = None;
    // Metrics are for people: a taken address leaves the daemon managing paths without them.
    let mut metrics = match d.opts.metrics.map(crate::metrics::start).transpose() {
        Ok(m) => m.map(|(_, rx)| rx),
        Err(e) => {
            warn!("{e}; running without metrics");
            None
        }
    };
    // systemd's watchdog (WatchdogSec= in the unit): pinged from this loop at half the
    // interval, so a loop stuck that long is killed and restarted.
    let watchdog = watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    );
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut stop = std::pin::pin!(stop);
    loop {
        let debounce = async {
            match debounce_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // A loop turn's handler that takes long is said at debug: at 256 paths under
        // emulation the loop fell seconds behind its probes, and this says where.
        // Each handler starts its own clock: the select's wait is not the handler's time.
        let (kind, turn): (&'static str, Instant) = tokio::select! {
            Some(ev) = dm_rx.recv() => {
                let t = Instant::now();
                d.on_dm(ev);
                ("dm", t)
            }
            Some(ev) = ev_rx.recv() => {
                let (t, k) = (Instant::now(), ev.kind());
                d.on_event(ev);
                (k, t)
            }
            ev = next_probe(&mut d.probe_rx) => {
                let t = Instant::now();
                match ev {
                    Some(ev) => d.on_probe(ev),
                    None => {
                        warn!("the eBPF probes stopped: only the checker will see paths fail");
                        d.probe_rx = None;
                        d.watcher = None;
                    }
                }
                ("probe event", t)
            }
            _ = readings_tick.tick() => {
                let t = Instant::now();
                d.fetch_readings();
                for target in d.engine.pathless_check_targets() {
                    d.check_one(target);
                }
                ("readings tick", t)
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                sd_notify("WATCHDOG=1");
                ("watchdog", Instant::now())
            }
            Some(req) = next_metrics(&mut metrics) => {
                let t = Instant::now();
                req.answer(crate::metrics::from_engine(&d.engine, &d.stats), d.watcher.clone());
                ("metrics", t)
            }
            Some((req, reply)) = req_rx.recv() => {
                let t = Instant::now();
                d.on_request(req, reply);
                ("request", t)
            }
            ev = next_udev(&mut udev) => {
                match ev {
                    Some(name) => {
                        debug!(device = %name, "udev event");
                        debounce_at.get_or_insert_with(|| tokio::time::Instant::now() + d.opts.debounce);
                    }
                    None => {
                        warn!("udev monitor failed: relying on the periodic rescan");
                        udev = None;
                    }
                }
                ("udev", Instant::now())
            }
            _ = debounce => {
                let t = Instant::now();
                debounce_at = None;
                d.start_pass(None);
                ("debounce", t)
            }
            _ = rescan.tick() => {
                let t = Instant::now();
                d.start_pass(None);
                ("rescan", t)
            }
            _ = check.tick() => {
                let t = Instant::now();
                d.check_all();
                ("check tick", t)
            }
            _ = health_tick.tick(), if d.engine.wants_fast_ticks() => {
                let t = Instant::now();
                d.health_tick();
                ("health tick", t)
            }
            _ = slow_tick.tick() => {
                let t = Instant::now();
                d.health_tick();
                ("health tick", t)
            }
            _ = hup.recv() => {
                let t = Instant::now();
                info!("SIGHUP: re-reading the config");
                d.reconfigure(None);
                ("SIGHUP", t)
            }
            _ = term.recv() => { info!("SIGTERM: exiting; maps are left as they are"); break; }
            _ = int.recv() => { info!("SIGINT: exiting; maps are left as they are"); break; }
            _ = &mut stop => { info!("stopped; maps are left as they are"); break; }
        };
        let took = turn.elapsed();
        if took >= SLOW_TURN {
            debug!(kind, took_ms = took.as_millis() as u64, "slow loop turn");
        }
    }
    d.restore_recovery_tmo().await;
    d.finish_dm_calls().await;
    d.finish_writes(&mut ev_rx).await;
    Ok(())
}

impl<D: DmBackend + 'static> Daemon<D> {
    /// Starts a reconcile pass unless one is reading already (then another follows it).
    fn start_pass(&mut self, waiter: Option<oneshot::Sender<Response>>) {
        if self.gathering {
            let w = self.again.get_or_insert_with(Vec::new);
            w.extend(waiter);
            return;
        }
        self.gathering = true;
        self.pass_waiters = waiter.into_iter().collect();
        let iscsi = self.first_pass_done || self.engine.first_pass_needs_iscsi();
        let (sysfs, dm, tx) = (self.sysfs.clone(), self.dm.clone(), self.events.clone());
        let read = tokio::task::spawn_blocking(move || gather::snapshot(&sysfs, &*dm, iscsi));
        tokio::spawn(async move {
            let _ = tx.send(match read.await {
                Ok(snap) => Event::Gathered(Box::new(snap)),
                Err(e) => Event::GatherLost(e.to_string()),
            });
        });
    }

    fn on_gathered(&mut self, snap: gather::Snapshot) {
        self.gathering = false;
        let (works, sum) = self.engine.plan(snap, monotonic_ns());
        let id = self.next_pass;
        self.next_pass += 1;
        let first = !self.first_pass_done && !self.passes.values().any(|p| p.first);
        let mut pass = Pass {
            sum,
            outstanding: BTreeSet::new(),
            t0: Instant::now(),
            waiters: std::mem::take(&mut self.pass_waiters),
            first,
        };
        if self.opts.observe {
            for w in &works {
                info!(map = %w.map, "observe: would {} ({:?})", w.op.kind(), w.why);
            }
        } else {
            for w in works {
                let op = self.exec.submit(&w.map, w.lane, w.op);
                pass.outstanding.insert(op);
                self.pending.insert(
                    op,
                    Pending {
                        why: w.why,
                        pass: Some(id),
                        reply: None,
                    },
                );
            }
        }
        self.passes.insert(id, pass);
        self.maybe_finish_pass(id);
        self.update_watch();
        if let Some(waiters) = self.again.take() {
            self.start_pass(None);
            self.pass_waiters.extend(waiters);
        }
    }

    fn maybe_finish_pass(&mut self, id: u64) {
        if !self
            .passes
            .get(&id)
            .is_some_and(|p| p.outstanding.is_empty())
        {
            return;
        }
        let mut p = self.passes.remove(&id).expect("checked");
        p.sum.apply_ms = p.t0.elapsed().as_millis() as u64;
        let s = &p.sum;
        if p.first {
            self.first_pass_done = true;
            info!(
                "ready maps={} paths={} created={} reloaded={} errors={} elapsed_ms={} (scan {} ms, read dm {} ms, create/reload {} ms)",
                s.maps,
                s.paths,
                s.created.len(),
                s.reloaded.len(),
                s.errors.len(),
                self.t0.elapsed().as_millis(),
                s.scan_ms,
                s.read_dm_ms,
                s.apply_ms
            );
            sd_notify("READY=1");
            // The first pass may have skipped the iSCSI sessions: read them now.
            self.start_pass(None);
        } else {
            debug!(
                scan_ms = s.scan_ms,
                read_dm_ms = s.read_dm_ms,
                apply_ms = s.apply_ms,
                "reconcile pass"
            );
        }
        let message = format!(
            "config re-read: {} maps, {} created, {} reloaded, {} errors{}",
            s.maps,
            s.created.len(),
            s.reloaded.len(),
            s.errors.len(),
            if s.errors.is_empty() {
                String::new()
            } else {
                format!(": {}", s.errors.join("; "))
            }
        );
        for w in p.waiters {
            let _ = w.send(Response::Ok {
                message: message.clone(),
            });
        }
        // Maps deferred because a table operation was still running get their turn now
        // that this pass is done, if nothing is busy any more.
        if !s.deferred.is_empty() && !self.gathering {
            self.start_pass(None);
        }
    }

    fn on_dm(&mut self, ev: DmEvent) {
        match ev {
            DmEvent::Slow {
                map,
                kind,
                suspends,
                waited,
                ..
            } => {
                // Only a suspend waits for I/O; a message waiting is something else.
                let why = if suspends {
                    " (a suspend waits for the I/O in flight)"
                } else {
                    ""
                };
                warn!(
                    map = %map,
                    waited_ms = waited.as_millis() as u64,
                    "device-mapper {kind} still waiting{why}"
                )
            }
            DmEvent::Done(done) => {
                let Some(p) = self.pending.remove(&done.id) else {
                    return;
                };
                let out = self.engine.done(&done, &p.why);
                if done.took > Duration::from_secs(1) {
                    info!(
                        map = %done.map,
                        took_ms = done.took.as_millis() as u64,
                        call_ms = done.ran.as_millis() as u64,
                        "device-mapper {} waited", done.op.kind()
                    );
                }
                if let Why::Decision(dec) = &p.why {
                    log_decision(
                        dec,
                        Some(&done.result.as_ref().map(|_| ()).map_err(|e| e.to_string())),
                        self.opts.observe,
                    );
                }
                if let Some(id) = p.pass
                    && let Some(pass) = self.passes.get_mut(&id)
                {
                    pass.outstanding.remove(&done.id);
                    pass.sum.created.extend(out.created.clone());
                    pass.sum.reloaded.extend(out.reloaded.clone());
                    pass.sum.errors.extend(out.error.clone());
                }
                if let Some((reply, message)) = p.reply {
                    let _ = reply.send(match &out.error {
                        None => Response::Ok { message },
                        Some(e) => Response::Error { message: e.clone() },
                    });
                }
                self.execute(out.commands);
                if let Some(id) = p.pass {
                    self.maybe_finish_pass(id);
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Gathered(s) => self.on_gathered(*s),
            Event::GatherLost(e) => {
                let message = format!(
                    "reading the topology failed: {e}; the maps stay as they are until the next rescan"
                );
                error!("{message}");
                self.gathering = false;
                for w in std::mem::take(&mut self.pass_waiters) {
                    let _ = w.send(Response::Error {
                        message: message.clone(),
                    });
                }
                if let Some(waiters) = self.again.take() {
                    self.start_pass(None);
                    self.pass_waiters.extend(waiters);
                }
            }
            Event::Polled(p) => {
                debug!(took_ms = p.took.as_millis() as u64, "poll");
                self.polling = false;
                let cmds = self.engine.poll(*p, monotonic_ns());
                self.execute(cmds);
                self.update_watch();
                if std::mem::take(&mut self.poll_again) {
                    self.poll_now();
                }
            }
            Event::Written(path, result) => {
                if let Err(e) = result {
                    warn!("saving {}: {e}", path.display());
                }
                if let Some(Some(next)) = self.writes.remove(&path) {
                    self.write_file(path, next);
                }
            }
            Event::PollLost(e) => {
                warn!("poll of the maps' status failed: {e}; the next check interval polls again");
                self.polling = false;
                if std::mem::take(&mut self.poll_again) {
                    self.poll_now();
                }
            }
            Event::Checked(r) => {
                let verdict = match r.outcome {
                    CheckOutcome::Up | CheckOutcome::Ghost => CheckVerdict::Up { took: r.took },
                    CheckOutcome::Down { why, ambiguous } => CheckVerdict::Down { why, ambiguous },
                    CheckOutcome::Timeout => CheckVerdict::Timeout,
                    CheckOutcome::Pending => return,
                    CheckOutcome::Unsupported { why } => {
                        if self.unsupported.insert(r.dev) {
                            warn!(path = %r.dev, checker = %r.kind, "{why}: this path is not checked");
                        }
                        return;
                    }
                };
                let cmds = self.engine.input(
                    monotonic_ns(),
                    Input::Check {
                        dev: r.dev,
                        verdict,
                    },
                );
                self.execute(cmds);
            }
            Event::TmoWritten {
                session,
                secs,
                result,
            } => {
                match &result {
                    Ok(()) => info!(session = %session, "recovery_tmo set to {secs} s"),
                    Err(e) => debug!(session = %session, "recovery_tmo {secs}: {e}"),
                }
                self.engine.recovery_tmo_written(&session, secs, &result);
            }
            Event::Rescued {
                decision,
                conn,
                result,
                waited,
                took,
            } => match result {
                Ok(()) => info!(
                    path = %decision.name,
                    conn = %conn,
                    since_signal_ms = monotonic_ns().saturating_sub(decision.signal_ns) as f64 / 1e6,
                    waited_ms = waited.as_secs_f64() * 1000.0,
                    took_ms = took.as_secs_f64() * 1000.0,
                    "rescue: the dead connection's socket destroyed; its I/O goes back to device-mapper"
                ),
                Err(e) => {
                    warn!(path = %decision.name, conn = %conn, "rescue: destroying the socket: {e}")
                }
            },
            Event::Config(r, reply) => match (*r).and_then(|c| self.engine.set_config(c)) {
                Ok(()) => self.start_pass(reply),
                Err(e) => {
                    warn!("reconfigure: {e:#}; keeping the running config");
                    if let Some(reply) = reply {
                        let _ = reply.send(Response::Error {
                            message: format!("{e:#}; the running config stays"),
                        });
                    }
                }
            },
            Event::FailbackDue(map) => {
                let cmds = self.engine.failback_due(&map);
                self.execute(cmds);
            }
            Event::ProbesStarted(r) => match *r {
                Ok((w, rx)) => {
                    info!("eBPF probes loaded");
                    self.watcher = Some(w);
                    self.probe_rx = Some(rx);
                    self.update_watch();
                }
                Err(e) => {
                    warn!("the eBPF probes do not run ({e}): only the checker will see paths fail")
                }
            },
            Event::Readings(rs, lost) => {
                self.readings_pending = false;
                let now = monotonic_ns();
                let mut batch = Vec::with_capacity(rs.len());
                for r in rs {
                    if let Some((_, c)) = r.conn {
                        let before = self.last_conn.insert(r.dev, (c.retransmits, c.snd_una));
                        if let Some((rtx, una)) = before
                            && c.retransmits > rtx
                        {
                            debug!(dev = %r.dev, new = c.retransmits - rtx, acked_bytes = c.snd_una.wrapping_sub(una), consecutive = c.consecutive_retrans, "retransmissions since the last reading");
                        }
                    }
                    let reading = Reading {
                        last_complete_ns: r.block.stats.last_complete_ns,
                        inflight: r.block.inflight(),
                        oldest: r.block.oldest,
                        completions: r.block.stats.completions(),
                        ok_completions: r
                            .block
                            .stats
                            .completions()
                            .saturating_sub(r.block.stats.errors()),
                        ewma: r.block.ewma[0].max(r.block.ewma[1]),
                        srtt: r.conn.map(|(_, c)| c.srtt).unwrap_or_default(),
                        snd_una: r.conn.map(|(_, c)| c.snd_una),
                        retransmits: r.conn.map(|(_, c)| c.retransmits).unwrap_or_default(),
                        last_ack_ns: r.conn.map(|(_, c)| c.last_ack_ns).unwrap_or_default(),
                        last_rcv_ns: r.conn.map(|(_, c)| c.last_rcv_ns).unwrap_or_default(),
                        lost: r.conn.and_then(|(conn, _)| lost.get(&conn).copied()),
                    };
                    batch.push((r.dev, reading));
                }
                let cmds = self.engine.readings(now, batch);
                self.execute(cmds);
                // Learned limits may have moved: write them into the probes.
                self.update_watch();
            }
        }
    }

    /// A kernel event from the probes, to the health engine.
    fn on_probe(&mut self, ev: ProbeEvent) {
        let input = match ev {
            ProbeEvent::Path(e) => Input::Block {
                dev: e.dev,
                at_ns: e.at_ns,
                signal: match e.kind {
                    PathEventKind::IoError { errno, class, .. } => BlockSignal::Error {
                        class: match class {
                            crate::ebpf::ErrorClass::Path => ErrorClass::Path,
                            crate::ebpf::ErrorClass::Generic => ErrorClass::Generic,
                            crate::ebpf::ErrorClass::Lun => ErrorClass::Lun,
                        },
                        errno,
                    },
                    PathEventKind::Slow { latency, count, .. } => {
                        BlockSignal::Slow { latency, count }
                    }
                    PathEventKind::Stalled {
                        inflight,
                        oldest,
                        since_completion,
                    } => BlockSignal::Stalled {
                        oldest,
                        since_completion,
                        inflight,
                    },
                },
            },
            ProbeEvent::Conn(e) => Input::Conn {
                conn: e.conn,
                at_ns: e.at_ns,
                signal: match e.kind {
                    ConnEventKind::Reset { .. } => ConnSignal::Reset,
                    ConnEventKind::LeftEstablished { new_state } => ConnSignal::Left { new_state },
                    ConnEventKind::Retransmits => ConnSignal::Retransmits {
                        consecutive: e.consecutive_retrans,
                    },
                    ConnEventKind::SlowRtt => ConnSignal::SlowRtt { srtt: e.srtt },
                },
            },
        };
        debug!(?input, "probe event");
        let cmds = self.engine.input(monotonic_ns(), input);
        self.execute(cmds);
    }

    fn fetch_readings(&mut self) {
        let Some(w) = self.watcher.clone() else {
            return;
        };
        if self.readings_pending || self.watching.is_empty() {
            return;
        }
        self.readings_pending = true;
        let tx = self.events.clone();
        let warned = self.tcp_info_warned.clone();
        tokio::spawn(async move {
            let rs = w.readings().await;
            let conns: Vec<Conn> = rs.iter().filter_map(|r| r.conn.map(|(c, _)| c)).collect();
            // One sock_diag request per watched connection, off the loop.
            let lost = tokio::task::spawn_blocking(move || lost_counters(&conns, &warned))
                .await
                .unwrap_or_default();
            let _ = tx.send(Event::Readings(rs, lost));
        });
    }

    fn on_request(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        match req {
            Request::ShowTopology | Request::ShowPaths | Request::ShowMaps => {
                // From the daemon's copy of the maps: no device-mapper call, so a map stuck
                // in a suspend delays no answer. A blocking thread for the few sysfs reads
                // (write protection, sessions of unmapped paths).
                let ctx = self.engine.view_ctx();
                let sysfs = self.sysfs.clone();
                tokio::task::spawn_blocking(move || {
                    let r = match req {
                        Request::ShowTopology => Response::Topology(views::topology(&sysfs, &ctx)),
                        Request::ShowPaths => Response::Paths(views::paths(&sysfs, &ctx)),
                        _ => Response::Maps(views::maps(&ctx)),
                    };
                    let _ = reply.send(r);
                });
            }
            Request::Reconfigure => self.reconfigure(Some(reply)),
            Request::ShowConfig => {
                let _ = reply.send(Response::Config(self.engine.config_view()));
            }
            other => match self.engine.admin(&other, monotonic_ns()) {
                Err(message) => {
                    let _ = reply.send(Response::Error { message });
                }
                Ok((cmds, message)) => {
                    let mut reply = Some((reply, message));
                    for c in cmds {
                        match c {
                            Command::Dm(w) if reply.is_some() && !self.opts.observe => {
                                let id = self.submit(w);
                                if let Some(p) = self.pending.get_mut(&id) {
                                    p.reply = reply.take();
                                }
                            }
                            c => self.execute(vec![c]),
                        }
                    }
                    if let Some((reply, message)) = reply {
                        let _ = reply.send(Response::Ok {
                            message: if self.opts.observe {
                                format!("{message} (observe mode: nothing was changed)")
                            } else {
                                message
                            },
                        });
                    }
                }
            },
        }
    }

    fn reconfigure(&mut self, reply: Option<oneshot::Sender<Response>>) {
        let (path, tx) = (self.opts.config.clone(), self.events.clone());
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(Event::Config(Box::new(load_config(&path)), reply));
        });
    }

    fn submit(&mut self, w: Work) -> OpId {
        let id = self.exec.submit(&w.map, w.lane, w.op);
        self.pending.insert(
            id,
            Pending {
                why: w.why,
                pass: None,
                reply: None,
            },
        );
        id
    }

    /// Runs what the engine asked for; in observe mode, logs what it would have done.
    fn execute(&mut self, cmds: Vec<Command>) {
        for c in cmds {
            match c {
                Command::Dm(w) => {
                    if self.opts.observe {
                        match &w.why {
                            Why::Decision(d) => log_decision(d, None, true),
                            why => info!(map = %w.map, "observe: would {} ({why:?})", w.op.kind()),
                        }
                    } else {
                        self.submit(w);
                    }
                }
                Command::Note(d) => log_decision(&d, None, self.opts.observe),
                Command::Rescue { rescue, decision } => {
                    if self.opts.observe {
                        info!(path = %decision.name, conn = %rescue.conn, "observe: would destroy the dead connection's socket");
                        continue;
                    }
                    let set_tmo = self.engine.fast_tmo_for_rescue(&rescue.session);
                    let (root, tx) = (self.opts.sysfs_root.clone(), self.events.clone());
                    let asked = Instant::now();
                    tokio::task::spawn_blocking(move || {
                        let t = Instant::now();
                        let waited = t - asked;
                        // recovery_tmo must be 0 while the session is still logged in,
                        // before the socket goes, or the I/O waits the old timeout.
                        if let Some(secs) = set_tmo {
                            let r = rescue::set_recovery_tmo(&root, &rescue.session, secs);
                            let _ = tx.send(Event::TmoWritten {
                                session: rescue.session.clone(),
                                secs,
                                result: r,
                            });
                        }
                        let t = Instant::now();
                        let result = rescue::destroy_socket(&rescue.conn);
                        let _ = tx.send(Event::Rescued {
                            decision,
                            conn: rescue.conn,
                            result,
                            waited,
                            took: t.elapsed(),
                        });
                    });
                }
                Command::SetRecoveryTmo { session, secs } => {
                    if self.opts.observe {
                        continue;
                    }
                    let (root, tx) = (self.opts.sysfs_root.clone(), self.events.clone());
                    tokio::task::spawn_blocking(move || {
                        let result = rescue::set_recovery_tmo(&root, &session, secs);
                        let _ = tx.send(Event::TmoWritten {
                            session,
                            secs,
                            result,
                        });
                    });
                }
                Command::CheckNow(devs) => {
                    for dev in devs {
                        if let Some(t) = self.engine.check_target(dev) {
                            self.check_one(t);
                        }
                    }
                }
                Command::Replan => self.start_pass(None),
                Command::Poll => self.poll_now(),
                Command::WriteFile { path, contents } => self.write_file(path, contents),
                Command::FailbackLater { map, after } => {
                    let tx = self.events.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = tx.send(Event::FailbackDue(map));
                    });
                }
            }
        }
    }

    fn check_one(&self, t: engine::CheckTarget) {
        let (pool, tx) = (self.pool.clone(), self.events.clone());
        tokio::spawn(async move {
            let r = pool.check(t.dev, t.node, t.kind, t.timeout).await;
            let _ = tx.send(Event::Checked(r));
        });
    }

    /// The health engine's clock: timed rules, and fresh counters for a pending stall.
    fn health_tick(&mut self) {
        if self.engine.health().wants_readings() {
            self.fetch_readings();
        }
        let cmds = self.engine.tick(monotonic_ns());
        self.execute(cmds);
    }

    /// The checker's interval: check every path, read the maps' status and sessions.
    fn check_all(&mut self) {
        for t in self.engine.check_targets() {
            self.check_one(t);
        }
        self.poll_now();
    }

    /// Writes `path` whole off the loop, after the write of it still running if any.
    fn write_file(&mut self, path: std::path::PathBuf, contents: String) {
        if let Some(next) = self.writes.get_mut(&path) {
            *next = Some(contents);
            return;
        }
        self.writes.insert(path.clone(), None);
        let tx = self.events.clone();
        let write = tokio::task::spawn_blocking({
            let path = path.clone();
            move || crate::config::bindings::write_atomic(&path, &contents)
        });
        tokio::spawn(async move {
            let r = write
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            let _ = tx.send(Event::Written(path, r));
        });
    }

    /// Reads the managed maps' status and their paths' sessions, off the loop; one poll
    /// at a time, and asks made while one reads are served by a single poll after it.
    fn poll_now(&mut self) {
        if self.polling {
            self.poll_again = true;
            return;
        }
        self.polling = true;
        let (maps, paths) = self.engine.poll_targets();
        let (sysfs, dm, tx) = (self.sysfs.clone(), self.dm.clone(), self.events.clone());
        let read = tokio::task::spawn_blocking(move || gather::poll(&sysfs, &*dm, &maps, &paths));
        tokio::spawn(async move {
            let _ = tx.send(match read.await {
                Ok(p) => Event::Polled(Box::new(p)),
                Err(e) => Event::PollLost(e.to_string()),
            });
        });
    }

    /// Keeps the probes on exactly the managed paths, with their connections now (a
    /// session that logged in again has a new one) and the limits learned for each.
    fn update_watch(&mut self) {
        let Some(w) = self.watcher.clone() else {
            return;
        };
        let h = self.engine.health();
        let cfg = h.config();
        let specs = WatchSpec::for_paths(self.engine.watched_paths(), |dev| {
            let l = h.limits(dev).unwrap_or(crate::health::Limits {
                latency: cfg.latency_floor,
                rtt: cfg.rtt_floor,
                stall: cfg.stall_limit,
            });
            let path = PathThresholds {
                latency_limit: l.latency,
                // A burst of a few late completions is a busy host or a hiccup; a slow
                // path makes many.
                slow_count: 8,
                slow_window: Duration::from_secs(1),
                stall_limit: l.stall,
                event_gap: Duration::from_millis(100),
            };
            let tcp = ConnThresholds {
                // A second retransmission in a row is the first after a timeout (the
                // first is usually a tail-loss probe, common on a busy but healthy
                // link): with a stall it means no ACK progress; repeated, it is loss.
                retrans_limit: 2,
                rtt_limit: l.rtt,
                event_gap: Duration::from_millis(100),
            };
            (path, tcp)
        });
        let specs = settle_limits(&self.watching, specs);
        if specs == self.watching {
            return;
        }
        self.watching = specs.clone();
        let (n, t0) = (specs.len(), Instant::now());
        debug!(paths = n, "watch set changed");
        tokio::spawn(async move {
            let failed = w.set(specs).await;
            debug!(
                paths = n,
                failed = failed.len(),
                took_ms = t0.elapsed().as_millis() as u64,
                "watch set applied"
            );
            for (dev, e) in failed {
                warn!(path = %dev, "not watched by the probes: {e}");
            }
        });
    }

    /// On the way out: waits for the device-mapper calls running now (a reload stopped
    /// between its suspend and its resume would leave its map suspended), up to
    /// `DM_EXIT_WAIT`. Nothing else is waited for: a check or a sysfs walk is abandoned.
    async fn finish_dm_calls(&self) {
        let t0 = Instant::now();
        let mut said = false;
        while self.exec.running() > 0 {
            if !said {
                info!(
                    calls = self.exec.running(),
                    "waiting for the device-mapper calls running now before exiting"
                );
                said = true;
            }
            if t0.elapsed() > DM_EXIT_WAIT {
                warn!(
                    calls = self.exec.running(),
                    "device-mapper calls still running after {DM_EXIT_WAIT:?}: exiting anyway (dmsetup info shows a map left suspended)"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if said {
            info!(
                waited_ms = t0.elapsed().as_millis() as u64,
                "device-mapper calls done"
            );
        }
    }

    /// On the way out: lets the file writes in flight finish, and their newer contents
    /// be written (a WWID added at the last create is kept), for up to 5 s.
    async fn finish_writes(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.writes.is_empty() {
            match tokio::time::timeout_at(end, events.recv()).await {
                Ok(Some(ev @ Event::Written(..))) => self.on_event(ev),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    let files: Vec<String> = self
                        .writes
                        .keys()
                        .map(|p| p.display().to_string())
                        .collect();
                    warn!("exiting with these files not saved: {}", files.join(", "));
                    return;
                }
            }
        }
    }

    /// Puts every session's original recovery timeout back (SIGTERM).
    async fn restore_recovery_tmo(&mut self) {
        if self.opts.observe {
            return;
        }
        let originals = self.engine.recovery_tmo_originals();
        if originals.is_empty() {
            return;
        }
        let root = self.opts.sysfs_root.clone();
        let results = tokio::task::spawn_blocking(move || {
            originals
                .into_iter()
                .map(|(s, v)| {
                    let r = rescue::set_recovery_tmo(&root, &s, v);
                    (s, v, r)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (s, v, r) in results {
            match r {
                Ok(()) => {
                    info!(session = %s, "recovery_tmo restored to {v} s");
                    self.engine.ledger_mut().forget(&s);
                }
                Err(e) => warn!(
                    session = %s,
                    "restoring recovery_tmo {v}: {e}; kept in {} for the next start",
                    self.opts.ledger.display()
                ),
            }
        }
        if let Err(e) = self.engine.ledger_mut().save() {
            warn!("saving {}: {e}", self.opts.ledger.display());
        }
    }
}

/// Each connection's lost segments (`tcp_info`), for [`Reading::lost`]. A connection
/// closed meanwhile is left out; any other failure is logged once (`warned`), and the
/// engine then judges loss by the probes' counts alone.
fn lost_counters(conns: &[Conn], warned: &std::sync::atomic::AtomicBool) -> BTreeMap<Conn, u64> {
    let warn_once = |what: String| {
        if !warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            warn!(
                "reading tcp_info over sock_diag: {what}; loss is judged from the probes' retransmission counts alone"
            );
        }
    };
    let mut out = BTreeMap::new();
    match crate::sockdiag::tcp_counters(conns) {
        Ok(rs) => {
            for (conn, r) in conns.iter().zip(rs) {
                match r {
                    Ok(c) => {
                        out.insert(*conn, u64::from(c.lost()));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => warn_once(format!("{conn}: {e}")),
                }
            }
        }
        Err(e) => warn_once(e.to_string()),
    }
    out
}

/// How long an exiting daemon waits for device-mapper calls in flight.
const DM_EXIT_WAIT: Duration = Duration::from_secs(60);

/// One line per decision, with its reason and timing: kernel signal -> decision, and
/// decision -> device-mapper done when it needed device-mapper.
fn log_decision(d: &Decision, done: Option<&Result<(), String>>, observe: bool) {
    let now = monotonic_ns();
    let to_decision_ms = d.decided_ns.saturating_sub(d.signal_ns) as f64 / 1e6;
    let what = match &d.action {
        crate::health::Action::None => "state",
        crate::health::Action::Fail { .. } => "fail_path",
        crate::health::Action::Reinstate => "reinstate_path",
        crate::health::Action::Demote => "demote",
        crate::health::Action::Restore => "restore",
    };
    let prefix = if observe { "observe: would " } else { "" };
    match done {
        Some(Ok(())) => info!(
            path = %d.name, dev = %d.dev, map = %d.map, action = what, reason = d.reason.label(),
            signal_to_decision_ms = to_decision_ms,
            decision_to_done_ms = now.saturating_sub(d.decided_ns) as f64 / 1e6,
            "{}: {} -> {} ({}): {}", what, d.from, d.to, d.reason.label(), d.reason
        ),
        Some(Err(e)) => warn!(
            path = %d.name, dev = %d.dev, map = %d.map, action = what, reason = d.reason.label(),
            "{}: {} -> {} ({}) failed in device-mapper: {e}", what, d.from, d.to, d.reason
        ),
        None => info!(
            path = %d.name, dev = %d.dev, map = %d.map, action = what, reason = d.reason.label(),
            observe, signal_to_decision_ms = to_decision_ms,
            "{prefix}{}: {} -> {} ({}): {}", what, d.from, d.to, d.reason.label(), d.reason
        ),
    }
}

/// Binds the control socket, root-only. A socket left by a dead daemon is replaced; one
/// a live daemon answers on is an error (two daemons must not drive the same maps).
pub fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another mpathd is running (it answers on {}): stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(l)
}

async fn accept_loop(
    listener: UnixListener,
    tx: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff = Duration::from_millis(10);
                s
            }
            Err(e) => {
                // Out of file descriptors or memory: wait rather than spin on the error.
                warn!(
                    "control socket: accept: {e}; retrying in {} ms",
                    backoff.as_millis()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_client(stream, tx).await {
                debug!("control connection: {e}");
            }
        });
    }
}

async fn serve_client(
    stream: UnixStream,
    tx: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
) -> Result<()> {
    // Root only (or the daemon's own user, for tests): the socket can fail paths.
    let cred = stream.peer_cred()?;
    let me = unsafe { libc::geteuid() };
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    // A request is one short line; cap it so a client cannot make us buffer without end.
    let n = BufReader::new(tokio::io::AsyncReadExt::take(rd, 64 * 1024))
        .read_line(&mut line)
        .await?;
    let resp = if cred.uid() != 0 && cred.uid() != me {
        Response::Error {
            message: "permission denied: the control socket is for root".into(),
        }
    } else if n == 0 {
        return Ok(());
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let (rtx, rrx) = oneshot::channel();
                tx.send((req, rtx)).await?;
                rrx.await?
            }
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        }
    };
    let mut out = serde_json::to_string(&resp)?;
    out.push('\n');
    wr.write_all(out.as_bytes()).await?;
    Ok(())
}

async fn next_metrics(
    rx: &mut Option<mpsc::Receiver<crate::metrics::Request>>,
) -> Option<crate::metrics::Request> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_probe(rx: &mut Option<mpsc::Receiver<ProbeEvent>>) -> Option<ProbeEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

type Udev = tokio::io::unix::AsyncFd<tokio_udev::MonitorSocket>;

/// Block-disk events from udevd (after its rules ran, so WWIDs and nodes are in place),
/// and SCSI devices' unit attentions (an ALUA port group moved, a capacity changed).
fn udev_monitor() -> std::io::Result<Udev> {
    let sock = tokio_udev::MonitorBuilder::new()?
        .match_subsystem_devtype("block", "disk")?
        .match_subsystem_devtype("scsi", "scsi_device")?
        .listen()?;
    // SAFETY: the monitor socket owns its fd and lives inside the AsyncFd.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// The next event for a SCSI disk (sd*) or a unit attention the kernel reported for a
/// SCSI device (`SDEV_UA=ASYMMETRIC_ACCESS_STATE_CHANGED`...); `None` if the monitor
/// failed.
async fn next_udev(udev: &mut Option<Udev>) -> Option<String> {
    let Some(fd) = udev else {
        return std::future::pending().await;
    };
    loop {
        let mut guard = fd.readable_mut().await.ok()?;
        while let Some(ev) = guard.get_inner_mut().iter().next() {
            let name = ev.sysname().to_string_lossy().into_owned();
            // Our own dm-N changes come here too: only paths matter.
            if name.starts_with("sd") {
                return Some(format!("{:?} {name}", ev.event_type()));
            }
            if let Some(ua) = ev.property_value("SDEV_UA") {
                return Some(format!("{name} {}", ua.to_string_lossy()));
            }
        }
        guard.clear_ready();
    }
}

/// Half of systemd's watchdog interval (`WATCHDOG_USEC`), when the watchdog is on and
/// meant for this process (`WATCHDOG_PID`, if set, is ours: it may be inherited).
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok()? != me
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Tells systemd (Type=notify) we are up, when started by it.
fn sd_notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let p = PathBuf::from(&path);
    let r = if let Some(abs) = path.to_str().and_then(|s| s.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes())
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &p)
    };
    if let Err(e) = r {
        warn!("sd_notify {msg}: {e}");
    }
}

#[cfg(test)]
mod watchdog_tests {
    use super::*;

    #[test]
    fn the_watchdog_is_pinged_at_half_its_interval_and_only_for_us() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
    }
}

#[cfg(test)]
mod watch_tests {
    use super::*;
    use crate::ebpf::{ConnThresholds, PathThresholds};

    fn spec(minor: u32, latency_ms: u64, stall_ms: u64, rtt_ms: u64) -> WatchSpec {
        WatchSpec {
            dev: crate::model::DevT { major: 8, minor },
            name: format!("sd{minor}"),
            conn: None,
            path: PathThresholds {
                latency_limit: Duration::from_millis(latency_ms),
                stall_limit: Duration::from_millis(stall_ms),
                ..PathThresholds::default()
            },
            tcp: ConnThresholds {
                rtt_limit: Duration::from_millis(rtt_ms),
                ..ConnThresholds::default()
            },
        }
    }

    #[test]
    fn learned_limits_that_moved_by_an_eighth_or_less_are_not_sent_again() {
        let current = vec![spec(0, 160, 250, 100), spec(16, 160, 250, 100)];
        // A baseline that drifted by 20 ms of 160 (an eighth), a stall limit that fell by
        // 30 ms of 250: the same watch set.
        let settled = settle_limits(
            &current,
            vec![spec(0, 180, 250, 100), spec(16, 140, 220, 100)],
        );
        assert_eq!(settled, current);
        // A stall limit that rose, however little, is sent.
        let settled = settle_limits(&current, vec![spec(0, 160, 260, 100)]);
        assert_eq!(settled, vec![spec(0, 160, 260, 100)]);
        // A limit that moved by more (a slow path's stall limit from its RTT) is sent;
        // the other path's small drift stays out.
        let settled = settle_limits(
            &current,
            vec![spec(0, 161, 450, 100), spec(16, 160, 250, 240)],
        );
        assert_eq!(
            settled,
            vec![spec(0, 160, 450, 100), spec(16, 160, 250, 240)]
        );
        // A new path takes its limits as they are.
        let settled = settle_limits(&current, vec![spec(32, 170, 250, 100)]);
        assert_eq!(settled, vec![spec(32, 170, 250, 100)]);
    }
}
