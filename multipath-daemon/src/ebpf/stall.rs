//! The daemon's half of the in-flight accounting: sums the kernel's per-CPU epoch rings
//! into requests outstanding by age, keeps the ages of those older than the rings, and
//! decides when a path is stalled. Pure logic, tested without a kernel.
//!
//! The kernel counts each request twice, in the ring of the CPU that issued it and in the
//! ring of the CPU that completed (or requeued) it, by the epoch of its start stamp. A
//! ring holds the last [`EPOCHS`] epochs; counts of older epochs are folded into its `old`
//! sum. Issued minus done, per epoch and summed over CPUs, is what is still outstanding.
//! Every count wraps at 2^16, so the sums are taken mod 2^16 and read as signed.

use std::{collections::VecDeque, time::Duration};

use multipath_common::block::{EPOCH_SHIFT, EPOCHS, EpochRing, RequeueSlot};

/// The epoch a CLOCK_MONOTONIC instant falls in (as the kernel computes it).
pub(crate) fn epoch_of(ns: u64) -> u32 {
    (ns >> EPOCH_SHIFT) as u32
}

/// Requests outstanding on one path, summed over CPUs at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Outstanding {
    /// Outstanding requests by age in epochs: `[0]` started in the current epoch.
    pub by_age: [i32; EPOCHS],
    /// Outstanding requests started before the oldest epoch of `by_age`.
    pub old: i32,
    /// Requests without a start stamp, issued minus done (see [`Tracker`] for why this
    /// can be below zero).
    pub unstamped: i32,
}

/// Adds up rings read at (about) `now_epoch`.
pub(crate) struct Summer {
    now_epoch: u32,
    by_age: [u16; EPOCHS],
    old: u16,
    unstamped: u16,
}

impl Summer {
    pub(crate) fn new(now_epoch: u32) -> Self {
        Self {
            now_epoch,
            by_age: [0; EPOCHS],
            old: 0,
            unstamped: 0,
        }
    }

    /// Adds (`issued`) or subtracts (`!issued`) one ring. A bucket's epoch is placed by
    /// its age now, not by the ring's own newest epoch, so rings that moved at different
    /// times agree: an epoch out of the window is "old" in every ring.
    pub(crate) fn ring(&mut self, r: &EpochRing, issued: bool) {
        let signed = |v: u16| if issued { v } else { v.wrapping_neg() };
        for (i, &n) in r.ring.iter().enumerate() {
            self.place(r.bucket_epoch(i), signed(n));
        }
        self.old = self.old.wrapping_add(signed(r.old));
        self.unstamped = self.unstamped.wrapping_add(signed(r.unstamped));
    }

    /// Subtracts a path's requeues (kept per path, not per CPU).
    pub(crate) fn requeues(&mut self, slots: &[RequeueSlot; EPOCHS], old: u64, unstamped: u64) {
        for s in slots {
            self.place(s.epoch, (s.count as u16).wrapping_neg());
        }
        self.old = self.old.wrapping_sub(old as u16);
        self.unstamped = self.unstamped.wrapping_sub(unstamped as u16);
    }

    fn place(&mut self, epoch: u32, v: u16) {
        // A ring can be ahead of the `now` read before it was: count that as current.
        let age = (self.now_epoch.wrapping_sub(epoch) as i32).max(0) as usize;
        match self.by_age.get_mut(age) {
            Some(b) => *b = b.wrapping_add(v),
            None => self.old = self.old.wrapping_add(v),
        }
    }

    pub(crate) fn finish(self) -> Outstanding {
        Outstanding {
            by_age: self.by_age.map(|v| i32::from(v as i16)),
            old: i32::from(self.old as i16),
            unstamped: i32::from(self.unstamped as i16),
        }
    }
}

/// What a path has outstanding, as the daemon reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Assessment {
    pub inflight: u64,
    /// Age of the oldest request outstanding (a lower bound, to one epoch), or for
    /// requests without a start stamp, how long the path has not made progress.
    pub oldest: Option<Duration>,
}

/// Per path, across scans.
#[derive(Clone, Debug)]
pub(crate) struct Tracker {
    /// Requests that left the rings while outstanding, oldest first: (epoch, count).
    /// When the kernel's old sum drops, the oldest are taken to have completed first:
    /// that can make the oldest look younger than it is (a later report), never older.
    old: VecDeque<(u32, i32)>,
    /// The last scan's counts by epoch (oldest first), to see which epochs left since.
    window: Vec<(u32, i32)>,
    /// Completions of unstamped requests issued before the path was watched make the
    /// unstamped count go below zero (the kernel cannot tell them apart); the lowest
    /// value seen in two scans in a row is taken as that offset.
    unstamped_floor: i32,
    last_unstamped: i32,
    /// Last scan with no unstamped request outstanding (the counter rule's start).
    unstamped_idle_ns: u64,
    reported: bool,
}

impl Tracker {
    pub(crate) fn new(now_ns: u64) -> Self {
        Self {
            old: VecDeque::new(),
            window: Vec::new(),
            unstamped_floor: 0,
            last_unstamped: 0,
            unstamped_idle_ns: now_ns,
            reported: false,
        }
    }

    /// Folds in a reading taken at `now_ns`; call in time order, at least once per
    /// window (1 s) so no epoch leaves unseen. `last_complete_ns`: the path's latest
    /// completion, 0 if none.
    pub(crate) fn update(
        &mut self,
        o: &Outstanding,
        now_ns: u64,
        last_complete_ns: u64,
    ) -> Assessment {
        let now_e = epoch_of(now_ns);
        let window: Vec<(u32, i32)> = (0..EPOCHS)
            .rev()
            .map(|a| (now_e.wrapping_sub(a as u32), o.by_age[a]))
            .collect();
        for &(e, n) in &self.window {
            let left = now_e.wrapping_sub(e) as i32 >= EPOCHS as i32;
            if left && n > 0 {
                self.old.push_back((e, n));
            }
        }
        self.window = window;
        let old_now = o.old.max(0);
        let mut held: i32 = self.old.iter().map(|&(_, n)| n).sum();
        while held > old_now {
            let Some(front) = self.old.front_mut() else {
                break;
            };
            let take = front.1.min(held - old_now);
            front.1 -= take;
            held -= take;
            if front.1 == 0 {
                self.old.pop_front();
            }
        }
        if old_now > held {
            // Left the rings without being seen in them (requests stamped long before
            // they were issued, or a missed scan): the youngest they can be.
            self.old
                .push_back((now_e.wrapping_sub(EPOCHS as u32), old_now - held));
        }

        let low = o.unstamped.max(self.last_unstamped);
        self.last_unstamped = o.unstamped;
        self.unstamped_floor = self.unstamped_floor.min(low);
        let unstamped = (o.unstamped - self.unstamped_floor).max(0);
        if unstamped == 0 {
            self.unstamped_idle_ns = now_ns;
        }

        let stamped: i32 = o.by_age.iter().map(|&n| n.max(0)).sum::<i32>() + old_now;
        let end_of = |e: u32| {
            // End of epoch `e`, from its age relative to now (epochs are 32-bit).
            let age = u64::from(now_e.wrapping_sub(e));
            ((now_ns >> EPOCH_SHIFT) - age + 1) << EPOCH_SHIFT
        };
        let oldest_epoch = self.old.front().map(|&(e, _)| e).or_else(|| {
            (0..EPOCHS)
                .rev()
                .find(|&a| o.by_age[a] > 0)
                .map(|a| now_e.wrapping_sub(a as u32))
        });
        let stamped_age =
            oldest_epoch.map(|e| Duration::from_nanos(now_ns.saturating_sub(end_of(e))));
        let unstamped_age = (unstamped > 0).then(|| {
            let progress = last_complete_ns.max(self.unstamped_idle_ns);
            Duration::from_nanos(now_ns.saturating_sub(progress))
        });
        Assessment {
            inflight: (stamped + unstamped) as u64,
            oldest: stamped_age.max(unstamped_age),
        }
    }

    /// The assessment `update` would give, without recording the reading.
    pub(crate) fn peek(&self, o: &Outstanding, now_ns: u64, last_complete_ns: u64) -> Assessment {
        self.clone().update(o, now_ns, last_complete_ns)
    }

    /// True when `a` starts a stall under `limit` (zero: off): reported once, re-armed
    /// once no request is older than the limit.
    pub(crate) fn newly_stalled(&mut self, a: &Assessment, limit: Duration) -> bool {
        let stalled = !limit.is_zero() && a.oldest.is_some_and(|age| age >= limit);
        let new = stalled && !self.reported;
        self.reported = stalled;
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multipath_common::block::PathCpu;

    const E: u64 = 1 << EPOCH_SHIFT;
    const MS: u64 = 1_000_000;

    /// The kernel's side, on `cpus` CPUs, for one path watched at `since`.
    struct Kernel {
        cpus: Vec<PathCpu>,
        since: u64,
        requeued: [RequeueSlot; EPOCHS],
    }

    impl Kernel {
        fn new(cpus: usize, since: u64) -> Self {
            let mut c = PathCpu::default();
            c.issued.epoch = epoch_of(since);
            c.done.epoch = epoch_of(since);
            Self {
                cpus: vec![c; cpus],
                since,
                requeued: [RequeueSlot::default(); EPOCHS],
            }
        }
        fn issue(&mut self, cpu: usize, start: u64) {
            self.cpus[cpu].issued.count(self.since, start);
        }
        fn done(&mut self, cpu: usize, start: u64) {
            self.cpus[cpu].done.count(self.since, start);
        }
        fn read(&self, now: u64) -> Outstanding {
            let mut s = Summer::new(epoch_of(now));
            for c in &self.cpus {
                s.ring(&c.issued, true);
                s.ring(&c.done, false);
            }
            s.requeues(&self.requeued, 0, 0);
            s.finish()
        }
    }

    /// Base far from zero, as CLOCK_MONOTONIC is on a running machine.
    const T0: u64 = 1000 * E;

    #[test]
    fn one_hung_request_among_many_completing_is_seen_at_its_age() {
        let mut k = Kernel::new(2, T0);
        let mut t = Tracker::new(T0);
        let hung = T0 + 5 * MS;
        k.issue(0, hung);
        let limit = Duration::from_millis(1000);
        let mut now = T0 + 10 * MS;
        let mut seen = None;
        // Every 10 ms: 50 requests issued on CPU 0, completed on CPU 1 a little later.
        while now < T0 + 3000 * MS {
            for i in 0..50 {
                let s = now - i * 100_000;
                k.issue(0, s);
                k.done(1, s);
            }
            let a = t.update(&k.read(now), now, now);
            assert_eq!(a.inflight, 1, "at {} ms", (now - T0) / MS);
            if t.newly_stalled(&a, limit) {
                seen = Some((now, a));
                break;
            }
            now += 10 * MS;
        }
        let (at, a) = seen.expect("the hung request was reported");
        let age = Duration::from_nanos(at - hung);
        // Reported within one epoch (and one scan) of crossing the limit, and the age
        // given is a lower bound within one epoch.
        assert!(
            age >= limit && age <= limit + Duration::from_nanos(E + 10 * MS),
            "{age:?}"
        );
        let oldest = a.oldest.unwrap();
        assert!(
            oldest <= age && age - oldest <= Duration::from_nanos(E),
            "{oldest:?} vs {age:?}"
        );
        // Not again while it stays hung, and again after it completes and another hangs.
        let a = t.update(&k.read(at + 20 * MS), at + 20 * MS, at);
        assert!(!t.newly_stalled(&a, limit));
        k.done(1, hung);
        let a = t.update(&k.read(at + 40 * MS), at + 40 * MS, at + 40 * MS);
        assert_eq!(
            a,
            Assessment {
                inflight: 0,
                oldest: None
            }
        );
        assert!(!t.newly_stalled(&a, limit));
    }

    #[test]
    fn io_in_flight_when_watching_starts_neither_counts_nor_masks() {
        let since = T0 + 500 * MS;
        let mut k = Kernel::new(2, since);
        let mut t = Tracker::new(since);
        // Eight requests stamped before watching: their completions must not cancel a
        // later request's issue.
        for i in 0..8 {
            k.done(1, since - 100 * MS + i);
        }
        let hung = since + 20 * MS;
        k.issue(0, hung);
        let now = hung + 1500 * MS;
        let mut scan = since;
        while scan < now {
            scan += 50 * MS;
            t.update(&k.read(scan), scan, 0);
        }
        let a = t.update(&k.read(now), now, 0);
        assert_eq!(a.inflight, 1);
        assert!(a.oldest.unwrap() >= Duration::from_millis(1400), "{a:?}");
    }

    #[test]
    fn old_requests_keep_their_age_across_the_window() {
        let mut k = Kernel::new(1, T0);
        let mut t = Tracker::new(T0);
        let a0 = T0 + 100 * MS;
        let b0 = T0 + 700 * MS;
        k.issue(0, a0);
        k.issue(0, b0);
        let mut now = T0;
        let mut last = Assessment::default();
        while now < T0 + 5000 * MS {
            now += 50 * MS;
            if now == T0 + 3000 * MS {
                // The younger completes first: the older must stay the oldest.
                k.done(0, b0);
            }
            last = t.update(&k.read(now), now, 0);
        }
        assert_eq!(last.inflight, 1);
        let age = last.oldest.unwrap();
        let truth = Duration::from_nanos(now - a0);
        // FIFO attribution would have dropped the older one when the younger completed;
        // it does, so the age reported may be younger than the truth, never older.
        assert!(age <= truth, "{age:?} > {truth:?}");
        assert!(age >= Duration::from_nanos(now - b0 - E), "{age:?}");
    }

    #[test]
    fn counts_wrap_and_still_subtract() {
        let mut k = Kernel::new(2, T0);
        let mut t = Tracker::new(T0);
        let s = T0 + MS;
        for _ in 0..70_000 {
            k.issue(0, s);
            k.done(1, s);
        }
        k.issue(0, s);
        let a = t.update(&k.read(T0 + 2 * MS), T0 + 2 * MS, 0);
        assert_eq!(a.inflight, 1);
    }

    #[test]
    fn requeued_requests_are_not_outstanding_until_issued_again() {
        let mut k = Kernel::new(1, T0);
        let mut t = Tracker::new(T0);
        let s = T0 + MS;
        k.issue(0, s);
        k.requeued[epoch_of(s) as usize % EPOCHS] = RequeueSlot {
            epoch: epoch_of(s),
            count: 1,
        };
        let a = t.update(&k.read(T0 + 2 * MS), T0 + 2 * MS, 0);
        assert_eq!(a.inflight, 0, "{a:?}");
        k.issue(0, s);
        let a = t.update(&k.read(T0 + 3 * MS), T0 + 3 * MS, 0);
        assert_eq!(a.inflight, 1, "{a:?}");
    }

    #[test]
    fn unstamped_requests_follow_the_counter_rule_past_an_initial_offset() {
        let mut k = Kernel::new(1, T0);
        let mut t = Tracker::new(T0);
        // Three completions of requests issued before watching.
        for _ in 0..3 {
            k.done(0, 0);
        }
        let mut now = T0;
        for _ in 0..3 {
            now += 50 * MS;
            let a = t.update(&k.read(now), now, now);
            assert_eq!(a.inflight, 0);
        }
        k.issue(0, 0);
        let last_complete = now;
        now += 50 * MS;
        let a = t.update(&k.read(now), now, last_complete);
        assert_eq!(a.inflight, 1);
        now += 1000 * MS;
        let a = t.update(&k.read(now), now, last_complete);
        assert_eq!(a.oldest, Some(Duration::from_nanos(now - last_complete)));
        assert!(t.newly_stalled(&a, Duration::from_millis(1000)));
    }

    #[test]
    fn a_transient_negative_reading_does_not_move_the_floor() {
        let mut t = Tracker::new(T0);
        let mut o = Outstanding {
            unstamped: -1,
            ..Default::default()
        };
        t.update(&o, T0 + 50 * MS, 0);
        o.unstamped = 1;
        let a = t.update(&o, T0 + 100 * MS, 0);
        assert_eq!(a.inflight, 1);
    }
}
