//! Actions: the only place that turns the daemon's decisions into device-mapper calls and
//! the in-flight rescue. Every call runs off the event loop, on a blocking thread, and its
//! outcome comes back as a [`DmEvent`].
//!
//! Each map has two lanes, each running its operations one at a time in order:
//! - the table lane: creates, reloads and removes, with the messages that must come
//!   before or after them (fail a path known down before the suspend of a reload, fail it
//!   again after, since a new table starts every path active);
//! - the message lane: `fail_path`, `reinstate_path`, `switch_group` decided on their own.
//!
//! A suspend waits for the I/O in flight, and on a silently dead path that I/O waits for
//! the transport: a reload can take seconds. Messages never queue behind it, nor does
//! anything of another map. An operation past its deadline is reported
//! ([`DmEvent::Slow`]) and again when it ends, with how long it took.

pub mod rescue;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::{
    dm::{DmBackend, DmError, MapInfo, Message, MultipathTable},
    model::DevT,
};

/// A device-mapper operation on one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmOp {
    Create {
        uuid: String,
        size_sectors: u64,
        table: MultipathTable,
    },
    Reload {
        size_sectors: u64,
        table: MultipathTable,
    },
    Remove,
    /// Rename the map to this name.
    Rename(String),
    Message(Message),
}

impl DmOp {
    /// Whether it suspends the map, and so waits for the I/O in flight (on a silently
    /// dead path, for the transport). Messages and creates do not.
    pub fn suspends(&self) -> bool {
        matches!(self, Self::Reload { .. })
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Reload { .. } => "reload",
            Self::Remove => "remove",
            Self::Rename(_) => "rename",
            Self::Message(Message::FailPath(_)) => "fail_path",
            Self::Message(Message::ReinstatePath(_)) => "reinstate_path",
            Self::Message(Message::SwitchGroup(_)) => "switch_group",
            Self::Message(Message::QueueIfNoPath) => "queue_if_no_path",
            Self::Message(Message::FailIfNoPath) => "fail_if_no_path",
        }
    }

    /// How long before a still-running operation is reported as slow. Messages and
    /// creates do not wait for I/O; a reload's suspend may.
    fn deadline(&self) -> Duration {
        match self {
            Self::Message(_) => Duration::from_secs(1),
            Self::Create { .. } | Self::Remove | Self::Rename(_) => Duration::from_secs(5),
            Self::Reload { .. } => Duration::from_secs(2),
        }
    }
}

/// Which lane an operation goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    Table,
    Message,
}

/// An operation's identity, to match its outcome.
pub type OpId = u64;

/// What came of an operation.
#[derive(Debug)]
pub struct DmDone {
    pub id: OpId,
    pub map: String,
    pub lane: Lane,
    pub op: DmOp,
    /// For creates, the new map's info.
    pub result: Result<Option<MapInfo>, DmError>,
    /// From submission to the start (time spent queued in its lane), and from the start
    /// until the lane saw the outcome.
    pub queued: Duration,
    pub took: Duration,
    /// The call alone, timed on its own thread. `took` minus this is how long the outcome
    /// waited for the lane's task to run: a busy runtime or a starved daemon, not the kernel.
    pub ran: Duration,
}

/// Outcomes fed back to the event loop.
#[derive(Debug)]
pub enum DmEvent {
    Done(Box<DmDone>),
    /// Still running past its deadline (reported again at each doubling).
    Slow {
        id: OpId,
        map: String,
        kind: &'static str,
        /// It suspends the map ([`DmOp::suspends`]): it may be waiting for I/O.
        suspends: bool,
        waited: Duration,
    },
}

struct Job {
    id: OpId,
    lane: Lane,
    op: DmOp,
    submitted: Instant,
}

/// Runs device-mapper operations per map, off the caller's thread. Must be created and
/// used inside a tokio runtime.
pub struct DmExec<D: DmBackend + 'static> {
    dm: Arc<D>,
    lanes: HashMap<(String, Lane), mpsc::UnboundedSender<Job>>,
    events: mpsc::UnboundedSender<DmEvent>,
    next: Arc<AtomicU64>,
    /// Calls in the kernel now (see [`DmExec::running`]).
    running: Arc<AtomicUsize>,
}

/// Counts a call in [`DmExec::running`] while it lives, a panicking one too.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<D: DmBackend + 'static> DmExec<D> {
    /// Outcomes go to `events`.
    pub fn new(dm: Arc<D>, events: mpsc::UnboundedSender<DmEvent>) -> Self {
        Self {
            dm,
            lanes: HashMap::new(),
            events,
            next: Arc::new(AtomicU64::new(1)),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Device-mapper calls running now. A daemon that exits waits for them: a reload
    /// stopped between its suspend and its resume would leave the map suspended.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    pub fn backend(&self) -> &Arc<D> {
        &self.dm
    }

    /// Queues `op` on `map`'s lane; returns its id at once.
    pub fn submit(&mut self, map: &str, lane: Lane, op: DmOp) -> OpId {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            id,
            lane,
            op,
            submitted: Instant::now(),
        };
        let key = (map.to_string(), lane);
        let job = match self.lanes.get(&key) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return id,
                // The lane's task ended (its runtime is shutting down): start a new one.
                Err(e) => e.0,
            },
            None => job,
        };
        let tx = self.spawn_lane(map.to_string());
        tx.send(job).expect("a new lane accepts");
        self.lanes.insert(key, tx);
        id
    }

    /// Forgets the lanes of a map that is gone (their tasks end once drained).
    pub fn forget(&mut self, map: &str) {
        self.lanes.retain(|(m, _), _| m != map);
    }

    fn spawn_lane(&self, map: String) -> mpsc::UnboundedSender<Job> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let dm = self.dm.clone();
        let events = self.events.clone();
        let running = self.running.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let started = Instant::now();
                let queued = started - job.submitted;
                let (dm2, map2, op2) = (dm.clone(), map.clone(), job.op.clone());
                let guard = Running::new(&running);
                let mut call = tokio::task::spawn_blocking(move || {
                    let _guard = guard;
                    let t = Instant::now();
                    let r = run(&*dm2, &map2, &op2);
                    (r, t.elapsed())
                });
                let mut deadline = job.op.deadline();
                let result = loop {
                    tokio::select! {
                        r = &mut call => break r,
                        _ = tokio::time::sleep_until((started + deadline).into()) => {
                            let _ = events.send(DmEvent::Slow {
                                id: job.id,
                                map: map.clone(),
                                kind: job.op.kind(),
                                suspends: job.op.suspends(),
                                waited: started.elapsed(),
                            });
                            deadline *= 2;
                        }
                    }
                };
                let took = started.elapsed();
                let (result, ran) = result.unwrap_or_else(|e| {
                    let e = DmError::Kernel {
                        name: map.clone(),
                        op: "device-mapper call",
                        message: format!("its thread failed: {e}"),
                    };
                    (Err(e), took)
                });
                let _ = events.send(DmEvent::Done(Box::new(DmDone {
                    id: job.id,
                    map: map.clone(),
                    lane: job.lane,
                    op: job.op,
                    result,
                    queued,
                    took,
                    ran,
                })));
            }
        });
        tx
    }
}

pub(crate) fn run<D: DmBackend + ?Sized>(
    dm: &D,
    map: &str,
    op: &DmOp,
) -> Result<Option<MapInfo>, DmError> {
    match op {
        DmOp::Create {
            uuid,
            size_sectors,
            table,
        } => dm.create(map, uuid, *size_sectors, table).map(Some),
        DmOp::Reload {
            size_sectors,
            table,
        } => dm.reload(map, *size_sectors, table).map(|()| None),
        DmOp::Remove => dm.remove(map).map(|()| None),
        DmOp::Rename(to) => dm.rename(map, to).map(|()| None),
        DmOp::Message(m) => dm.message(map, m).map(|()| None),
    }
}

/// Convenience for the messages a decision needs.
pub fn fail_path(dev: DevT) -> DmOp {
    DmOp::Message(Message::FailPath(dev))
}

pub fn reinstate_path(dev: DevT) -> DmOp {
    DmOp::Message(Message::ReinstatePath(dev))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::{MultipathStatus, SimDm};
    use std::sync::{Condvar, Mutex};

    /// SimDm whose reloads block until released, as a suspend does while I/O is stuck on
    /// a dead path.
    #[derive(Default)]
    struct StuckReloads {
        sim: SimDm,
        gate: Mutex<bool>,
        opened: Condvar,
    }

    impl StuckReloads {
        fn release(&self) {
            *self.gate.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    impl DmBackend for StuckReloads {
        fn list(&self) -> Result<Vec<MapInfo>, DmError> {
            self.sim.list()
        }
        fn info(&self, name: &str) -> Result<Option<MapInfo>, DmError> {
            self.sim.info(name)
        }
        fn table(&self, name: &str) -> Result<MultipathTable, DmError> {
            self.sim.table(name)
        }
        fn status(&self, name: &str) -> Result<MultipathStatus, DmError> {
            self.sim.status(name)
        }
        fn create(
            &self,
            name: &str,
            uuid: &str,
            size_sectors: u64,
            table: &MultipathTable,
        ) -> Result<MapInfo, DmError> {
            self.sim.create(name, uuid, size_sectors, table)
        }
        fn reload(&self, name: &str, size: u64, table: &MultipathTable) -> Result<(), DmError> {
            let mut open = self.gate.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
            self.sim.reload(name, size, table)
        }
        fn remove(&self, name: &str) -> Result<(), DmError> {
            self.sim.remove(name)
        }
        fn rename(&self, name: &str, new_name: &str) -> Result<(), DmError> {
            self.sim.rename(name, new_name)
        }
        fn message(&self, name: &str, msg: &Message) -> Result<(), DmError> {
            self.sim.message(name, msg)
        }
    }

    fn create(t: &MultipathTable) -> DmOp {
        DmOp::Create {
            uuid: "mpath-w".into(),
            size_sectors: 8,
            table: t.clone(),
        }
    }

    async fn next_done(rx: &mut mpsc::UnboundedReceiver<DmEvent>) -> DmDone {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(DmEvent::Done(d))) => return *d,
                Ok(Some(DmEvent::Slow { .. })) => continue,
                other => panic!("no outcome: {other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_message_never_waits_behind_a_stuck_reload_and_the_reload_is_reported_slow() {
        let dm = Arc::new(StuckReloads::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut ex = DmExec::new(dm.clone(), tx);
        let t = MultipathTable::failover(["8:0", "8:16"]);
        let id = ex.submit("m", Lane::Table, create(&t));
        let d = next_done(&mut rx).await;
        assert_eq!(d.id, id);
        assert!(d.result.unwrap().is_some());
        // A reload that hangs in its suspend...
        let reload = ex.submit(
            "m",
            Lane::Table,
            DmOp::Reload {
                size_sectors: 8,
                table: MultipathTable::multibus(["8:0", "8:16"]),
            },
        );
        // ...does not hold back a fail_path of the same map, nor a create of another.
        let t0 = Instant::now();
        let msg = ex.submit("m", Lane::Message, fail_path(DevT::new(8, 0)));
        let other = ex.submit("n", Lane::Table, create(&t));
        let mut got = vec![next_done(&mut rx).await, next_done(&mut rx).await];
        got.sort_by_key(|d| d.id);
        assert_eq!((got[0].id, got[1].id), (msg, other));
        assert!(got.iter().all(|d| d.result.is_ok()), "{got:?}");
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
        let st = dm.sim.status("m").unwrap();
        assert_eq!(st.path("8:0").unwrap().state, crate::dm::PathState::Failed);
        // The stuck reload is reported as slow once past its deadline, then done.
        let slow = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        match slow {
            DmEvent::Slow {
                id,
                kind,
                suspends,
                waited,
                ..
            } => {
                assert_eq!((id, kind, suspends), (reload, "reload", true));
                assert!(waited >= Duration::from_secs(2), "{waited:?}");
            }
            other => panic!("{other:?}"),
        }
        // An exiting daemon waits for it: it is the one call in the kernel now.
        assert_eq!(ex.running(), 1);
        dm.release();
        let d = next_done(&mut rx).await;
        assert_eq!(d.id, reload);
        assert!(d.result.is_ok());
        assert!(d.took >= Duration::from_secs(2));
        // The call itself was stuck as long (timed on its thread), and never longer than
        // the lane saw.
        assert!(
            d.ran >= Duration::from_secs(2) && d.ran <= d.took,
            "ran {:?}, took {:?}",
            d.ran,
            d.took
        );
        assert_eq!(ex.running(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn operations_of_one_lane_run_in_order_and_errors_come_back() {
        let dm = Arc::new(SimDm::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut ex = DmExec::new(dm.clone(), tx);
        let t = MultipathTable::failover(["8:0", "8:16"]);
        let ids = [
            ex.submit("m", Lane::Table, create(&t)),
            ex.submit("m", Lane::Table, fail_path(DevT::new(8, 16))),
            ex.submit("m", Lane::Table, DmOp::Remove),
            ex.submit("m", Lane::Table, fail_path(DevT::new(8, 0))),
        ];
        let mut done = Vec::new();
        for _ in 0..4 {
            done.push(next_done(&mut rx).await);
        }
        assert_eq!(done.iter().map(|d| d.id).collect::<Vec<_>>(), ids);
        assert!(done[..3].iter().all(|d| d.result.is_ok()), "{done:?}");
        // The map is gone by then: the error names it.
        let e = done[3].result.as_ref().unwrap_err().to_string();
        assert!(e.contains("\"m\""), "{e}");
        assert_eq!(done[1].op.kind(), "fail_path");
        let log = dm.log();
        let pos = |s: &str| log.iter().position(|l| l.contains(s)).unwrap();
        assert!(
            pos("create") < pos("fail_path 8:16") && pos("fail_path 8:16") < pos("remove"),
            "{log:?}"
        );
    }

    /// A daemon kept from running (its thread busy, or no CPU for it) sees a quick call
    /// late: `took` grows, `ran` does not, so the log can tell the two apart.
    #[tokio::test(flavor = "current_thread")]
    async fn a_call_seen_late_by_a_busy_runtime_is_told_from_a_slow_call() {
        let dm = Arc::new(SimDm::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut ex = DmExec::new(dm.clone(), tx);
        let id = ex.submit("m", Lane::Table, create(&MultipathTable::failover(["8:0"])));
        // Let the lane start the call on its thread, then hold the runtime's only thread.
        while ex.running() == 0 && dm.log().is_empty() {
            tokio::task::yield_now().await;
        }
        std::thread::sleep(Duration::from_millis(300));
        let d = next_done(&mut rx).await;
        assert_eq!(d.id, id);
        assert!(d.result.is_ok(), "{d:?}");
        assert!(d.took >= Duration::from_millis(300), "{d:?}");
        assert!(d.ran < Duration::from_millis(150), "{d:?}");
    }
}
