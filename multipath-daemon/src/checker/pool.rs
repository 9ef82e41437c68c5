//! Runs checks off the caller's thread and answers within each check's timeout.
//!
//! Each check runs on a short-lived thread of its own. A check blocked in the kernel (an
//! O_DIRECT read or an SG_IO on a dead path can stay there until the transport gives
//! up, minutes with iSCSI defaults) keeps its thread, but only one per path: while a
//! path's earlier check has not returned, the next check of that path answers
//! [`CheckOutcome::Pending`] at once instead of starting another. So at most one thread
//! per path is ever blocked, and the caller never waits longer than its timeout.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{CheckOutcome, Checker, CheckerKind};
use crate::model::DevT;

/// What one check of one path found, and how long the caller waited for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub dev: DevT,
    pub outcome: CheckOutcome,
    /// From the call to the answer: about the timeout for [`CheckOutcome::Timeout`],
    /// about zero for [`CheckOutcome::Pending`].
    pub took: Duration,
    pub kind: CheckerKind,
}

/// Runs checks off the caller's thread, each bounded by its timeout from the caller's
/// view. Cheap to clone; clones share the set of outstanding checks.
#[derive(Clone, Default)]
pub struct CheckerPool {
    /// Paths with a check running, and when it started.
    outstanding: Outstanding,
}

/// The checkers use little stack (no recursion, a block-sized heap buffer).
const STACK: usize = 128 * 1024;

impl CheckerPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks `dev` through its block node `node` with the checker `kind`. Returns within
    /// `timeout` plus a few milliseconds whatever the device does. If an earlier check of
    /// `dev` is still running (it outlived its timeout and is blocked in the kernel),
    /// returns Pending at once without starting another.
    ///
    /// Needs a tokio runtime with the time driver. Dropping the future early is safe:
    /// the check finishes on its own thread and is then forgotten.
    pub async fn check(
        &self,
        dev: DevT,
        node: PathBuf,
        kind: CheckerKind,
        timeout: Duration,
    ) -> CheckResult {
        self.run(dev, node, kind.checker(), timeout).await
    }

    /// [`CheckerPool::check`] with any checker (tests give it fakes).
    async fn run(
        &self,
        dev: DevT,
        node: PathBuf,
        checker: &'static dyn Checker,
        timeout: Duration,
    ) -> CheckResult {
        let t0 = Instant::now();
        let kind = checker.kind();
        let result = |outcome| CheckResult {
            dev,
            outcome,
            took: t0.elapsed(),
            kind,
        };
        // No IO, nothing to wait for.
        if kind == CheckerKind::None {
            return result(checker.check(&node, timeout));
        }
        {
            let mut out = lock(&self.outstanding);
            if let Some(since) = out.get(&dev) {
                tracing::debug!(
                    %dev,
                    running_ms = since.elapsed().as_millis() as u64,
                    "check still outstanding; not starting another"
                );
                return result(CheckOutcome::Pending);
            }
            out.insert(dev, t0);
        }
        let guard = Running {
            outstanding: self.outstanding.clone(),
            dev,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("check {dev}"))
            .stack_size(STACK)
            .spawn(move || {
                let outcome = checker.check(&node, timeout);
                // Let the next check start before this answer is read: a late answer
                // must not leave the path Pending.
                drop(guard);
                let _ = tx.send(outcome);
            });
        if let Err(e) = spawned {
            // The closure (and with it the guard) is gone: the path is not outstanding.
            tracing::warn!(
                %dev,
                error = %e,
                "cannot start a checker thread; the path keeps its state (is the thread limit reached?)"
            );
            return result(CheckOutcome::Pending);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(outcome)) => result(outcome),
            Ok(Err(_)) => result(CheckOutcome::Unsupported {
                why: format!(
                    "the {kind} checker panicked (a bug in mpathd: please report it with the log)"
                ),
            }),
            Err(_) => result(CheckOutcome::Timeout),
        }
    }

    /// Checks running now, including those whose caller already got Timeout (for
    /// metrics: a number that stays up means paths blocked in the kernel).
    pub fn outstanding(&self) -> usize {
        lock(&self.outstanding).len()
    }
}

/// Marks `dev` as no longer checked when the check's thread ends, even by a panic.
struct Running {
    outstanding: Outstanding,
    dev: DevT,
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&self.outstanding).remove(&self.dev);
    }
}

type Outstanding = Arc<Mutex<HashMap<DevT, Instant>>>;

/// A poisoned lock still holds a usable map: only whole inserts and removes touch it.
fn lock(m: &Outstanding) -> std::sync::MutexGuard<'_, HashMap<DevT, Instant>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Condvar};

    use super::*;

    /// A checker that blocks until the test opens its gate, as a read on a hung path
    /// blocks until the transport answers.
    struct Gated {
        open: Mutex<bool>,
        cv: Condvar,
    }

    impl Gated {
        const fn new() -> Self {
            Self {
                open: Mutex::new(false),
                cv: Condvar::new(),
            }
        }
        fn release(&self) {
            *self.open.lock().unwrap() = true;
            self.cv.notify_all();
        }
    }

    impl Checker for Gated {
        fn kind(&self) -> CheckerKind {
            CheckerKind::Directio
        }
        fn check(&self, _node: &Path, _timeout: Duration) -> CheckOutcome {
            let g = self.open.lock().unwrap();
            drop(self.cv.wait_while(g, |open| !*open).unwrap());
            CheckOutcome::Up
        }
    }

    struct Panics;

    impl Checker for Panics {
        fn kind(&self) -> CheckerKind {
            CheckerKind::Tur
        }
        fn check(&self, _node: &Path, _timeout: Duration) -> CheckOutcome {
            panic!("a checker bug, on purpose");
        }
    }

    const DEV: DevT = DevT {
        major: 8,
        minor: 16,
    };

    #[tokio::test]
    async fn a_blocked_check_times_out_then_is_pending_until_it_returns() {
        static GATE: Gated = Gated::new();
        let pool = CheckerPool::new();
        let node = PathBuf::from("/dev/fake");
        let timeout = Duration::from_millis(100);

        let r = pool.run(DEV, node.clone(), &GATE, timeout).await;
        assert_eq!(r.outcome, CheckOutcome::Timeout);
        assert_eq!((r.dev, r.kind), (DEV, CheckerKind::Directio));
        assert!(
            r.took >= timeout && r.took < timeout + Duration::from_millis(100),
            "took {:?}",
            r.took
        );
        assert_eq!(pool.outstanding(), 1);

        // Still blocked: no second thread, an answer at once.
        let r = pool.run(DEV, node.clone(), &GATE, timeout).await;
        assert_eq!(r.outcome, CheckOutcome::Pending);
        assert!(r.took < Duration::from_millis(20), "took {:?}", r.took);
        assert_eq!(pool.outstanding(), 1);
        // Per path, not per checker: another checker of the same path waits its turn too.
        let r = pool
            .run(DEV, node.clone(), CheckerKind::Tur.checker(), timeout)
            .await;
        assert_eq!(r.outcome, CheckOutcome::Pending);
        // Another path is not held up by this one.
        let other = DevT::new(8, 32);
        let r = pool
            .run(other, node.clone(), CheckerKind::None.checker(), timeout)
            .await;
        assert_eq!(r.outcome, CheckOutcome::Up);

        GATE.release();
        let t0 = Instant::now();
        while pool.outstanding() > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "the check never ended"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let r = pool.run(DEV, node, &GATE, timeout).await;
        assert_eq!(r.outcome, CheckOutcome::Up);
        assert_eq!(pool.outstanding(), 0);
    }

    #[tokio::test]
    async fn a_panicking_checker_is_reported_and_does_not_leave_the_path_pending() {
        static PANICS: Panics = Panics;
        let pool = CheckerPool::new();
        let r = pool
            .run(
                DEV,
                PathBuf::from("/dev/fake"),
                &PANICS,
                Duration::from_secs(5),
            )
            .await;
        let CheckOutcome::Unsupported { why } = &r.outcome else {
            panic!("expected Unsupported, got {:?}", r.outcome)
        };
        assert!(why.starts_with("the tur checker panicked"), "{why}");
        assert_eq!(pool.outstanding(), 0);
    }

    #[tokio::test]
    async fn clones_share_what_is_outstanding() {
        static GATE: Gated = Gated::new();
        let pool = CheckerPool::new();
        let clone = pool.clone();
        let t = Duration::from_millis(20);
        assert_eq!(
            pool.run(DEV, "/dev/fake".into(), &GATE, t).await.outcome,
            CheckOutcome::Timeout
        );
        assert_eq!(
            clone.run(DEV, "/dev/fake".into(), &GATE, t).await.outcome,
            CheckOutcome::Pending
        );
        GATE.release();
    }
}
