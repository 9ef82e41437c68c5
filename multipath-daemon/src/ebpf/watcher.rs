//! One watcher for the daemon and `mpathd probe`: it owns the probes, the set of watched
//! paths and connections, and the event stream, in a task on a thread of its own. Callers
//! hold a cheap handle ([`Watcher`]) and a receiver of [`ProbeEvent`]s.
//!
//! The watcher never reads sysfs: whoever calls [`Watcher::set`] says which device and
//! which iSCSI connection make each path (the topology module knows).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use super::{
    BlockEventStream, BlockProbes, Conn, ConnEvent, ConnSnapshot, ConnThresholds, DevT, EbpfError,
    ISCSI_PORT, PathEvent, PathSnapshot, PathThresholds, ProbeVariant, TcpEventStream, TcpProbes,
    block::DEFAULT_MAX_PATHS, monotonic_ns,
};

/// One path to watch: its block device and, for an iSCSI disk, the TCP connection of its
/// session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    pub dev: DevT,
    /// For logs (sdX).
    pub name: String,
    pub conn: Option<Conn>,
    pub path: PathThresholds,
    /// Used for the connection; when several paths share one connection, the first
    /// path's (in the order given to `set`) applies.
    pub tcp: ConnThresholds,
}

impl WatchSpec {
    /// The watch set for paths as the daemon's engine and `mpathd probe` both know them,
    /// (device, name, connection), in their order (it decides whose TCP thresholds a
    /// shared connection gets), each with the thresholds `limits` gives for its device.
    pub fn for_paths(
        paths: impl IntoIterator<Item = (DevT, String, Option<Conn>)>,
        mut limits: impl FnMut(DevT) -> (PathThresholds, ConnThresholds),
    ) -> Vec<WatchSpec> {
        paths
            .into_iter()
            .map(|(dev, name, conn)| {
                let (path, tcp) = limits(dev);
                WatchSpec {
                    dev,
                    name,
                    conn,
                    path,
                    tcp,
                }
            })
            .collect()
    }
}

/// What the probes saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeEvent {
    Path(PathEvent),
    Conn(ConnEvent),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatcherOptions {
    /// The iSCSI portals' TCP port: the TCP programs skip everything else at once.
    pub portal_port: u16,
    /// How often to look for stalled requests: the stall rule's resolution. At most 1 s
    /// (the kernel keeps request ages by epoch for 1.07 s). With no request in flight at
    /// the last scan, the next comes after [`IDLE_SCAN`] instead (an idle host wakes
    /// 5 times a second, not 20).
    pub scan_interval: Duration,
    /// Watch the TCP connections of iSCSI paths (the TCP probes are loaded the first
    /// time a path with a connection is watched).
    pub tcp: bool,
    pub variant: ProbeVariant,
    /// Most paths watched at once: sizes the kernel maps (memory grows with it, see
    /// docs/probes.md). 1 to 4096.
    pub max_paths: u32,
}

impl Default for WatcherOptions {
    fn default() -> Self {
        Self {
            portal_port: ISCSI_PORT,
            scan_interval: Duration::from_millis(50),
            tcp: true,
            variant: ProbeVariant::Auto,
            max_paths: DEFAULT_MAX_PATHS,
        }
    }
}

/// A watched path's counters and, for an iSCSI path, its connection's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathReading {
    pub dev: DevT,
    pub block: PathSnapshot,
    pub conn: Option<(Conn, ConnSnapshot)>,
}

/// Ring-buffer lag: from the kernel's timestamp of an event to the watcher reading it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LagStats {
    pub count: u64,
    pub sum: Duration,
    pub max: Duration,
    /// log2 buckets in microseconds, as the latency histograms: bucket `i` counts lags in
    /// `[2^i, 2^(i+1))` us, bucket 0 also those under 1 us, the last is open-ended.
    pub buckets: [u64; LAG_BUCKETS],
}

pub const LAG_BUCKETS: usize = 24;

/// For metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WatcherStats {
    /// Events handed to the receiver.
    pub events: u64,
    /// Events held back by the kernel's rate limiting (the sum of `suppressed` of the
    /// events read; for TCP this includes events the ring buffer had no room for).
    pub suppressed: u64,
    /// Block events the kernel could not deliver: the ring buffer was full.
    pub ring_full: u64,
    /// Events dropped because the receiver was full (or gone).
    pub dropped: u64,
    /// Program runs the kernel skipped because the same program was running on that CPU
    /// (see docs/probes.md: each may leave one request counted on one side only).
    pub recursion_misses: u64,
    pub lag: LagStats,
}

enum Command {
    Set(Vec<WatchSpec>, oneshot::Sender<Vec<(DevT, EbpfError)>>),
    Readings(oneshot::Sender<Vec<PathReading>>),
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    suppressed: AtomicU64,
    ring_full: AtomicU64,
    dropped: AtomicU64,
    recursion_misses: AtomicU64,
    lag: Mutex<LagStats>,
}

/// A handle on the probes' task; clones share it. The task stops (and the probes are
/// detached) when the last handle is dropped.
#[derive(Clone)]
pub struct Watcher {
    cmds: mpsc::Sender<Command>,
    counters: Arc<Counters>,
}

/// Events waiting for the receiver before newer ones are dropped (and counted).
const EVENT_QUEUE: usize = 4096;

impl Watcher {
    /// Loads and attaches the probes and starts their task on a thread of its own.
    pub fn start(opts: WatcherOptions) -> Result<(Watcher, mpsc::Receiver<ProbeEvent>), EbpfError> {
        if opts.scan_interval.is_zero() || opts.scan_interval > Duration::from_secs(1) {
            return Err(EbpfError::Size(format!(
                "the stall scan interval must be above 0 and at most 1 s, not {:?}",
                opts.scan_interval
            )));
        }
        let mut block = BlockProbes::load_sized(opts.variant, opts.max_paths)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let counters = Arc::new(Counters::default());
        let task_counters = counters.clone();
        // Its own thread and runtime: applying a watch set loads the TCP probes the first
        // time (seconds under emulation), and the caller's loop must not wait for that.
        // At 128 LUNs in the lab, on the daemon's runtime, a watch set waited 2 minutes
        // to be applied while maps were being made.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("mpathd-probes".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(EbpfError::Thread(e)));
                        return;
                    }
                };
                // The ring's readiness is registered with the runtime that polls it.
                let block_events = match rt.block_on(async { block.take_events() }) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let task = Task {
                    opts,
                    block,
                    block_events,
                    tcp: None,
                    tcp_events: None,
                    paths: BTreeMap::new(),
                    conns: HashMap::new(),
                    events: ev_tx,
                    counters: task_counters,
                };
                rt.block_on(task.run(cmd_rx));
            })
            .map_err(EbpfError::Thread)?;
        ready_rx.recv().map_err(|_| {
            EbpfError::Stopped("the probes' thread ended before it started".into())
        })??;
        Ok((
            Watcher {
                cmds: cmd_tx,
                counters,
            },
            ev_rx,
        ))
    }

    /// Makes the watch set exactly `specs`: adds, removes, updates thresholds, follows a
    /// path's new connection (re-login). Several paths may share one connection (one
    /// iSCSI session carries every LUN behind a portal): each connection is watched once.
    /// Returns the paths that could not be watched, with why (a path whose connection
    /// could not be watched is still watched as a block device, and listed).
    pub async fn set(&self, specs: Vec<WatchSpec>) -> Vec<(DevT, EbpfError)> {
        let devs: Vec<DevT> = specs.iter().map(|s| s.dev).collect();
        let (tx, rx) = oneshot::channel();
        let stopped = |why: &str| {
            devs.iter()
                .map(|d| (*d, EbpfError::Stopped(why.to_owned())))
                .collect()
        };
        if self.cmds.send(Command::Set(specs, tx)).await.is_err() {
            return stopped("it is no longer running");
        }
        rx.await
            .unwrap_or_else(|_| stopped("it ended while applying the watch set"))
    }

    /// Counters of every watched path (and its connection), ordered by device.
    pub async fn readings(&self) -> Vec<PathReading> {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Command::Readings(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Events read, events the kernel could not deliver, and the ring-buffer lag.
    pub fn stats(&self) -> WatcherStats {
        let c = &self.counters;
        WatcherStats {
            events: c.events.load(Ordering::Relaxed),
            suppressed: c.suppressed.load(Ordering::Relaxed),
            ring_full: c.ring_full.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            recursion_misses: c.recursion_misses.load(Ordering::Relaxed),
            lag: *c.lag.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

struct Task {
    opts: WatcherOptions,
    block: BlockProbes,
    block_events: BlockEventStream,
    /// Loaded the first time a path with a connection is watched.
    tcp: Option<TcpProbes>,
    tcp_events: Option<TcpEventStream>,
    /// Watched paths (ordered, so readings come out in device order).
    paths: BTreeMap<DevT, WatchSpec>,
    /// Watched connections and the thresholds they are watched with.
    conns: HashMap<Conn, ConnThresholds>,
    events: mpsc::Sender<ProbeEvent>,
    counters: Arc<Counters>,
}

/// The stall scan's interval while no request is in flight: a request issued just after
/// a scan is seen at the next one, long before it could count as stalled, and from then
/// on scans come every `scan_interval`.
pub const IDLE_SCAN: Duration = Duration::from_millis(200);

impl Task {
    async fn run(mut self, mut cmds: mpsc::Receiver<Command>) {
        let scan = tokio::time::sleep(self.opts.scan_interval);
        tokio::pin!(scan);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        let mut rounds = 0u64;
        let mut batch = Vec::new();
        let mut tcp_batch = Vec::new();
        loop {
            batch.clear();
            tcp_batch.clear();
            let tcp_next = async {
                match self.tcp_events.as_mut() {
                    Some(s) => s.next_batch(&mut tcp_batch).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None => break,
                    Some(Command::Set(specs, reply)) => {
                        let _ = reply.send(self.set(specs));
                    }
                    Some(Command::Readings(reply)) => {
                        let _ = reply.send(self.readings());
                    }
                },
                r = self.block_events.next_batch(&mut batch) => {
                    if let Err(e) = r {
                        tracing::error!("block probes: {e}; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                r = tcp_next => {
                    if let Err(e) = r {
                        tracing::error!("TCP probes: {e}; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                _ = &mut scan => {
                    match self.block.scan_stalls() {
                        Ok(stalls) => {
                            for ev in stalls {
                                self.deliver(ProbeEvent::Path(ev), None);
                            }
                        }
                        Err(e) => tracing::error!("stall scan: {e}"),
                    }
                    let next = if self.block.busy() {
                        self.opts.scan_interval
                    } else {
                        IDLE_SCAN.max(self.opts.scan_interval)
                    };
                    scan.as_mut().reset(tokio::time::Instant::now() + next);
                }
                _ = housekeeping.tick() => {
                    // The programs' statistics take a file read each: every 10 s is soon
                    // enough for a warning about skipped runs.
                    self.housekeeping(rounds.is_multiple_of(10));
                    rounds += 1;
                }
            }
            if !batch.is_empty() || !tcp_batch.is_empty() {
                let now = monotonic_ns();
                for ev in batch.drain(..) {
                    // An event of a path removed while it was in the ring: not ours now.
                    if self.paths.contains_key(&ev.dev) {
                        let lag = now.saturating_sub(ev.at_ns);
                        self.deliver(ProbeEvent::Path(ev), Some(lag));
                    }
                }
                for ev in tcp_batch.drain(..) {
                    if self.conns.contains_key(&ev.conn) {
                        let lag = now.saturating_sub(ev.at_ns);
                        self.deliver(ProbeEvent::Conn(ev), Some(lag));
                    }
                }
            }
        }
    }

    fn deliver(&self, ev: ProbeEvent, lag_ns: Option<u64>) {
        let c = &self.counters;
        let suppressed = match &ev {
            ProbeEvent::Path(e) => e.suppressed,
            ProbeEvent::Conn(e) => e.suppressed,
        };
        c.suppressed
            .fetch_add(u64::from(suppressed), Ordering::Relaxed);
        if let Some(ns) = lag_ns {
            let mut lag = c.lag.lock().unwrap_or_else(|p| p.into_inner());
            let d = Duration::from_nanos(ns);
            lag.count += 1;
            lag.sum += d;
            lag.max = lag.max.max(d);
            let us = ns / 1000;
            let b = if us == 0 {
                0
            } else {
                (63 - us.leading_zeros() as usize).min(LAG_BUCKETS - 1)
            };
            lag.buckets[b] += 1;
        }
        match self.events.try_send(ev) {
            Ok(()) => c.events.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    fn housekeeping(&self, with_program_stats: bool) {
        let c = &self.counters;
        c.ring_full.store(self.block.ring_full(), Ordering::Relaxed);
        if !with_program_stats {
            return;
        }
        let mut misses = 0;
        if let Ok(stats) = self.block.program_stats() {
            misses += stats.iter().map(|p| p.recursion_misses).sum::<u64>();
        }
        if let Some(Ok(stats)) = self.tcp.as_ref().map(|t| t.program_stats()) {
            misses += stats.iter().map(|p| p.recursion_misses).sum::<u64>();
        }
        let before = c.recursion_misses.swap(misses, Ordering::Relaxed);
        if misses > before {
            tracing::warn!(
                skipped = misses - before,
                "the kernel skipped probe runs (an interrupt's request completed inside \
                 another's on the same CPU); in-flight counts may be off by that many"
            );
        }
    }

    fn set(&mut self, specs: Vec<WatchSpec>) -> Vec<(DevT, EbpfError)> {
        let mut failed = Vec::new();
        let mut wanted: BTreeMap<DevT, WatchSpec> = BTreeMap::new();
        let mut order = Vec::new();
        for s in specs {
            if wanted.contains_key(&s.dev) {
                failed.push((
                    s.dev,
                    EbpfError::Duplicate {
                        dev: s.dev,
                        name: s.name,
                    },
                ));
                continue;
            }
            order.push(s.dev);
            wanted.insert(s.dev, s);
        }
        // Removals first, so their slots can be reused by the additions.
        let gone: Vec<DevT> = self
            .paths
            .keys()
            .filter(|d| !wanted.contains_key(d))
            .copied()
            .collect();
        for dev in gone {
            if let Err(e) = self.block.unwatch(dev) {
                failed.push((dev, e));
                continue;
            }
            if let Some(s) = self.paths.remove(&dev) {
                tracing::info!(device = %s.name, dev = %dev, "no longer watching");
            }
        }
        for dev in &order {
            let spec = &wanted[dev];
            let new = !self.paths.contains_key(dev);
            match self.block.watch(*dev, spec.path) {
                Ok(()) => {
                    if new {
                        tracing::info!(device = %spec.name, dev = %dev, "watching");
                    }
                    self.paths.insert(*dev, spec.clone());
                }
                Err(e) => failed.push((*dev, e)),
            }
        }
        if self.opts.tcp {
            failed.extend(self.set_conns(&order));
        }
        failed
    }

    /// Watches each connection of the watched paths once, and no other.
    fn set_conns(&mut self, order: &[DevT]) -> Vec<(DevT, EbpfError)> {
        let mut wanted: HashMap<Conn, (ConnThresholds, Vec<DevT>)> = HashMap::new();
        for dev in order {
            let Some(spec) = self.paths.get(dev) else {
                continue;
            };
            if let Some(c) = spec.conn {
                wanted
                    .entry(c)
                    .or_insert((spec.tcp, Vec::new()))
                    .1
                    .push(*dev);
            }
        }
        let mut failed = Vec::new();
        if !wanted.is_empty() && self.tcp.is_none() {
            match TcpProbes::load(self.opts.portal_port).and_then(|mut p| {
                let stream = p.take_events()?;
                Ok((p, stream))
            }) {
                Ok((p, stream)) => {
                    self.tcp = Some(p);
                    self.tcp_events = Some(stream);
                }
                Err(e) => {
                    let why = format!("loading the TCP probes: {e}");
                    for (c, (_, devs)) in &wanted {
                        for d in devs {
                            failed.push((
                                *d,
                                EbpfError::Conn {
                                    conn: c.to_string(),
                                    why: why.clone(),
                                },
                            ));
                        }
                    }
                    return failed;
                }
            }
        }
        let Some(tcp) = self.tcp.as_mut() else {
            return failed;
        };
        let gone: Vec<Conn> = self
            .conns
            .keys()
            .filter(|c| !wanted.contains_key(c))
            .copied()
            .collect();
        for c in gone {
            match tcp.unwatch(c) {
                Ok(()) => {
                    self.conns.remove(&c);
                    tracing::info!(conn = %c, "no longer watching iSCSI connection");
                }
                Err(e) => tracing::warn!(conn = %c, "unwatching: {e}"),
            }
        }
        for (c, (t, devs)) in wanted {
            if self.conns.get(&c) == Some(&t) {
                continue;
            }
            match tcp.watch(c, t) {
                Ok(()) => {
                    if self.conns.insert(c, t).is_none() {
                        tracing::info!(conn = %c, paths = devs.len(), "watching iSCSI connection");
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    for d in devs {
                        failed.push((
                            d,
                            EbpfError::Conn {
                                conn: c.to_string(),
                                why: why.clone(),
                            },
                        ));
                    }
                }
            }
        }
        failed
    }

    fn readings(&self) -> Vec<PathReading> {
        let mut out = Vec::with_capacity(self.paths.len());
        for (dev, spec) in &self.paths {
            let block = match self.block.snapshot(*dev) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(dev = %dev, "reading counters: {e}");
                    continue;
                }
            };
            let conn = spec
                .conn
                .filter(|c| self.conns.contains_key(c))
                .and_then(|c| {
                    let snap = self.tcp.as_ref()?.snapshot(c).ok()??;
                    Some((c, snap))
                });
            out.push(PathReading {
                dev: *dev,
                block,
                conn,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_set_keeps_the_paths_order_and_each_devices_limits() {
        let conn = Conn {
            local: "10.99.1.1:58324".parse().unwrap(),
            remote: "10.99.1.2:3260".parse().unwrap(),
        };
        // Two LUNs of one session, given second LUN first, and a plain disk.
        let paths = [
            (DevT::new(8, 16), "sdb".to_string(), Some(conn)),
            (DevT::new(8, 0), "sda".to_string(), Some(conn)),
            (DevT::new(7, 0), "loop0".to_string(), None),
        ];
        let limits = |dev: DevT| {
            let ms = Duration::from_millis(u64::from(dev.minor) + 1);
            (
                PathThresholds {
                    latency_limit: ms,
                    ..PathThresholds::default()
                },
                ConnThresholds {
                    rtt_limit: ms,
                    ..ConnThresholds::default()
                },
            )
        };
        let specs = WatchSpec::for_paths(paths.clone(), limits);
        let got: Vec<_> = specs
            .iter()
            .map(|s| (s.dev, s.name.clone(), s.conn))
            .collect();
        assert_eq!(got, paths, "same paths, same order");
        for s in &specs {
            assert_eq!((s.path, s.tcp), limits(s.dev), "{}", s.name);
        }
        // sdb comes first: `set` gives the connection both share sdb's TCP limits.
        assert_eq!(specs[0].tcp.rtt_limit, Duration::from_millis(17));
    }
}
