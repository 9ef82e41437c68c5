//! Block-layer probes: which devices are watched, what is kept per path (per CPU and
//! shared), the limits the daemon sets per path, and the events the kernel sends.
//!
//! Memory is sized at load time from the most paths the daemon will watch: every per-path
//! map has `max_paths` entries, and the per-CPU part ([`PathCpu`]) is one array of
//! `possible CPUs x max_paths` entries, kept small (96 bytes). Latency histograms and
//! the rarely written counters live once per path ([`PathShared`]).

/// Most paths one set of probes can be sized for.
pub const MAX_PATHS_LIMIT: u32 = 4096;

/// Entries probed in the watch table from a device's home index before giving up.
pub const WATCH_PROBES: u32 = 4;
/// A removed watch-table entry: lookups probe past it (an empty entry, dev 0, ends the
/// probe), inserts reuse it. No block device has this dev_t (major 4095, minor 0xfffff).
pub const WATCH_TOMBSTONE: u32 = u32::MAX;

/// The watch table has this many entries per path the probes are sized for (rounded up
/// to a power of two), which keeps probe chains short.
pub const WATCH_SLOTS_PER_PATH: u32 = 4;

/// `BPF_F_MMAPABLE`: the daemon reads (and zeroes) these arrays through a shared mapping
/// instead of one syscall per path and scan.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Slots of the classic programs' table of issue times (see [`InflightEntry`]). Unused
/// (sized to one entry) with the BTF programs, which read the kernel's own stamp.
pub const INFLIGHT_TABLE_SIZE: u32 = 1 << 13;

/// Requests are grouped by the epoch of their start stamp: `start_ns >> EPOCH_SHIFT`
/// (2^26 ns = 67.1 ms). The age of the oldest request outstanding is known to one epoch.
pub const EPOCH_SHIFT: u32 = 26;
/// Epochs each ring holds: 16 x 67.1 ms = 1.07 s. Requests older than that are summed in
/// one "old" count per ring (the daemon keeps their ages, see docs/probes.md).
pub const EPOCHS: usize = 16;

/// Log2 latency buckets, in microseconds: bucket `i` holds latencies in `[2^i, 2^(i+1))`
/// us (bucket 0 also holds everything below 1 us); the last bucket is open-ended (>= 2^31
/// us, about 36 min).
pub const LATENCY_BUCKETS: usize = 32;

/// Error kinds counted per path, named by the errno a completion carries.
pub const ERROR_KINDS: usize = 8;
pub const ERR_IO: usize = 0; // EIO: BLK_STS_IOERR
pub const ERR_TRANSPORT: usize = 1; // ENOLINK: BLK_STS_TRANSPORT
pub const ERR_TIMEOUT: usize = 2; // ETIMEDOUT: BLK_STS_TIMEOUT
pub const ERR_TARGET: usize = 3; // EREMOTEIO: BLK_STS_TARGET
pub const ERR_MEDIUM: usize = 4; // ENODATA: BLK_STS_MEDIUM
pub const ERR_NOSPC: usize = 5; // ENOSPC: BLK_STS_NOSPC
pub const ERR_NOTSUPP: usize = 6; // EOPNOTSUPP: BLK_STS_NOTSUPP
pub const ERR_OTHER: usize = 7;

/// Maps a completion's (negative) errno to its kind.
pub const fn error_kind(errno: i32) -> usize {
    match -errno {
        5 => ERR_IO,
        67 => ERR_TRANSPORT,
        110 => ERR_TIMEOUT,
        121 => ERR_TARGET,
        61 => ERR_MEDIUM,
        28 => ERR_NOSPC,
        95 => ERR_NOTSUPP,
        _ => ERR_OTHER,
    }
}

/// Error classes, by the kernel's own rule (`blk_path_error()` in
/// include/linux/blk_types.h, the same in 6.1 and 6.18): what dm-multipath would fail a
/// path for, what the LUN itself returns on every path, and plain EIO, which the kernel
/// counts as a path error but which in practice is as often the LUN's: the health engine
/// should ask for corroboration before failing a path for it.
pub const ERROR_CLASSES: usize = 3;
/// `blk_path_error()` is true: timeout, transport, kernel or device resource, offline,
/// anything the kernel added that it does not list as LUN-wide.
pub const CLASS_PATH: u32 = 0;
/// BLK_STS_IOERR (EIO), and status values newer than any kernel mpathd knows.
pub const CLASS_GENERIC: u32 = 1;
/// `blk_path_error()` is false: not supported, no space, target (critical target
/// failure), reservation conflict (BLK_STS_NEXUS before 6.5), medium, protection.
pub const CLASS_LUN: u32 = 2;

/// blk_status_t values mpathd relies on. 0..=12 have had these numbers from 5.x through
/// 6.18; the values above 12 moved between kernels (BLK_STS_ZONE_RESOURCE went away in
/// 6.10), so only their class, which is the same for all of them, is taken from them.
pub const STS_NOTSUPP: u8 = 1;
pub const STS_TIMEOUT: u8 = 2;
pub const STS_NOSPC: u8 = 3;
pub const STS_TRANSPORT: u8 = 4;
pub const STS_TARGET: u8 = 5;
/// BLK_STS_RESV_CONFLICT (named BLK_STS_NEXUS before 6.5).
pub const STS_RESV_CONFLICT: u8 = 6;
pub const STS_MEDIUM: u8 = 7;
pub const STS_PROTECTION: u8 = 8;
pub const STS_RESOURCE: u8 = 9;
pub const STS_IOERR: u8 = 10;
pub const STS_DM_REQUEUE: u8 = 11;
pub const STS_AGAIN: u8 = 12;
/// The highest value any kernel up to 6.18 defines (BLK_STS_INVAL); above it is unknown.
pub const STS_LAST_KNOWN: u8 = 19;
/// In an event: the raw status is not known (classic programs carry only the errno).
pub const STS_UNKNOWN: u32 = 0xff;

/// The class of a completion's `blk_status_t` (see [`CLASS_PATH`]).
pub const fn status_class(status: u8) -> u32 {
    match status {
        STS_NOTSUPP | STS_NOSPC | STS_TARGET | STS_RESV_CONFLICT | STS_MEDIUM | STS_PROTECTION => {
            CLASS_LUN
        }
        STS_IOERR => CLASS_GENERIC,
        s if s > STS_LAST_KNOWN => CLASS_GENERIC,
        _ => CLASS_PATH,
    }
}

/// The class of a completion's negative errno, for the classic programs, which only see
/// `blk_status_to_errno()`'s result. The kernel maps each status to its own errno, so
/// this is the same rule as [`status_class`]; EIO is also what unknown statuses map to.
pub const fn errno_class(errno: i32) -> u32 {
    match -errno {
        95 | 28 | 121 | 52 | 61 | 84 => CLASS_LUN,
        5 => CLASS_GENERIC,
        _ => CLASS_PATH,
    }
}

/// Negative errno of the `blk_status_t` values whose number is the same on every kernel
/// mpathd supports (0..=12), as `blk_status_to_errno()` maps them; 0 for the others,
/// whose errno the daemon looks up for the running kernel.
pub const fn stable_status_errno(status: u8) -> i32 {
    match status {
        0 => 0,
        STS_NOTSUPP => -95,       // EOPNOTSUPP
        STS_TIMEOUT => -110,      // ETIMEDOUT
        STS_NOSPC => -28,         // ENOSPC
        STS_TRANSPORT => -67,     // ENOLINK
        STS_TARGET => -121,       // EREMOTEIO
        STS_RESV_CONFLICT => -52, // EBADE
        STS_MEDIUM => -61,        // ENODATA
        STS_PROTECTION => -84,    // EILSEQ
        STS_RESOURCE => -12,      // ENOMEM
        STS_IOERR => -5,          // EIO
        STS_DM_REQUEUE => -78,    // EREMCHG
        STS_AGAIN => -11,         // EAGAIN
        _ => 0,
    }
}

/// Request direction, from the tracepoint's `rwbs` string or the request's operation.
pub const DIR_READ: u32 = 0;
pub const DIR_WRITE: u32 = 1;
/// Flushes, driver-private (SG_IO) and anything else without data.
pub const DIR_OTHER: u32 = 2;

/// block_rq_complete's fields after `dev` (sector, nr_sector, error, rwbs) are copied in
/// one helper call of this many bytes from `complete_span`; the daemon checks at load time
/// that they fit.
pub const SPAN_BYTES: usize = 32;

/// Byte offsets of the classic tracepoint fields the classic programs read. They differ
/// between kernels, so the daemon reads them from tracefs' `format` files at start-up and
/// writes them into the program's read-only global before loading.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockTpOffsets {
    /// block_rq_issue: `dev_t dev`, `sector_t sector`.
    pub issue_dev: u32,
    pub issue_sector: u32,
    /// block_rq_complete: `dev`, `sector`, `nr_sector`, `error`, `rwbs`.
    pub complete_dev: u32,
    pub complete_sector: u32,
    pub complete_nr_sector: u32,
    pub complete_error: u32,
    pub complete_rwbs: u32,
    /// Where the copied span of block_rq_complete starts (the lowest of the four above).
    pub complete_span: u32,
    /// block_rq_requeue: `dev`.
    pub requeue_dev: u32,
    /// 1 once the daemon has filled the offsets in; until then the programs do nothing
    /// rather than read garbage.
    pub valid: u32,
}

/// Byte offsets in kernel structures for the `tp_btf` programs, taken from the running
/// kernel's BTF by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RqBtfOffsets {
    /// struct request: q, cmd_flags, __data_len, __sector, start_time_ns
    /// (io_start_time_ns must follow it directly: they are read together), state.
    pub rq_q: u32,
    pub rq_cmd_flags: u32,
    pub rq_data_len: u32,
    pub rq_sector: u32,
    pub rq_start_time_ns: u32,
    pub rq_state: u32,
    /// struct request_queue: disk.
    pub q_disk: u32,
    /// struct gendisk: major (first_minor must follow it directly).
    pub disk_major: u32,
    /// 1 once filled in.
    pub valid: u32,
    pub _pad: u32,
}

/// Sizes chosen at load time, shared by every program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockConfig {
    /// Entries of every per-path map; [`PathCpu`] index = cpu * max_paths + slot.
    pub max_paths: u32,
    /// log2 of the watch table's size.
    pub watch_bits: u32,
    /// 1 once filled in.
    pub valid: u32,
    pub _pad: u32,
}

/// `enum mq_rq_state`: MQ_RQ_IDLE. A request completed or requeued in this state was
/// never started (a driver refused it before issue), so it was never counted as issued.
pub const MQ_RQ_IDLE: u32 = 0;

/// Direction of a request from its `cmd_flags` operation (REQ_OP_MASK = 0xff): read 0,
/// write 1, flush 2, discard 3, secure erase 5, write zeroes 9.
pub const fn op_direction(cmd_flags: u32) -> u32 {
    match cmd_flags & 0xff {
        0 => DIR_READ,
        1 | 3 | 5 | 9 => DIR_WRITE,
        _ => DIR_OTHER,
    }
}

/// One entry of the watch table: a watched device, its path slot and when it was watched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchEntry {
    /// Kernel dev_t encoding; 0 marks an empty entry (no block device has dev_t 0).
    pub dev: u32,
    /// Index into the per-path arrays.
    pub slot: u32,
    /// CLOCK_MONOTONIC ns when watching started: requests stamped before it are left out
    /// of the in-flight accounting at issue and at completion alike, so IO in flight when
    /// watching starts can neither count nor cancel anything.
    pub since_ns: u64,
}

/// Home index of `dev` in a watch table of `2^bits` entries; entries are probed linearly
/// from there.
pub const fn watch_index(dev: u32, bits: u32) -> u32 {
    // Fibonacci hashing: consecutive minors spread over the table.
    dev.wrapping_mul(0x9E37_79B1) >> (32 - bits)
}

/// Size (log2) of the watch table for `max_paths` paths.
pub const fn watch_bits(max_paths: u32) -> u32 {
    let want = max_paths.saturating_mul(WATCH_SLOTS_PER_PATH);
    let bits = 32 - want.saturating_sub(1).leading_zeros();
    if bits < 6 { 6 } else { bits }
}

/// What identifies a request in the classic programs' issue-time table: its sector with
/// the device folded in. Two requests with the same tag in the same slot would be
/// confused; that takes two devices whose dev_t and sector differ in exactly compensating
/// bits, and costs one latency sample.
pub const fn inflight_tag(dev: u32, sector: u64) -> u64 {
    sector ^ ((dev as u64) << 32)
}

/// Index of a request (by its tag) in the issue-time table.
pub const fn inflight_index(tag: u64) -> u32 {
    (tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - INFLIGHT_TABLE_SIZE.trailing_zeros())) as u32
}

/// One entry of the classic programs' issue-time table (latency only): 16 bytes, so an
/// entry never straddles cache lines. A collision overwrites the older entry; that
/// request's latency is then not measured and it counts as untimed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InflightEntry {
    pub tag: u64,
    /// bpf_ktime_get_ns() at issue; 0 when the entry is free.
    pub issue_ns: u64,
}

/// Thresholds the daemon sets per path. A zero disables that rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathLimits {
    /// A completion slower than this counts as slow.
    pub latency_limit_ns: u64,
    /// Window over which slow completions are counted.
    pub slow_window_ns: u64,
    /// Least gap between two events of the same kind for this path; repeats inside it are
    /// counted in the next event's `suppressed` instead of sent.
    pub event_gap_ns: u64,
    /// Slow completions within the window that trip the rule.
    pub slow_count: u32,
    pub _pad: u32,
}

/// Requests counted by epoch of their start stamp, as one side (issue, or completion)
/// on one CPU sees them. Each side has exactly one writer program per CPU, so plain
/// (non-atomic) adds never lose an update to a nested program; the daemon subtracts the
/// completion side from the issue side, summed over CPUs.
///
/// Counts wrap (mod 2^16): only differences are meaningful, and they are exact as long as
/// fewer than 32768 requests of one path and epoch are outstanding at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpochRing {
    /// Odd while the ring is being moved to a newer epoch; the daemon re-reads then.
    pub seq: u32,
    /// Newest epoch the ring holds: bucket `e % EPOCHS` counts epoch `e` for
    /// `epoch - EPOCHS < e <= epoch`.
    pub epoch: u32,
    /// Requests whose epoch was older than the ring when counted, or that were counted in
    /// a bucket since reused: summed without their epoch.
    pub old: u16,
    /// Requests without a start stamp (a queue that keeps none), or counted by the classic
    /// programs, which see no stamp: only the counter rule applies to them.
    pub unstamped: u16,
    pub ring: [u16; EPOCHS],
}

impl EpochRing {
    /// Counts one request by the epoch of its start stamp `start` (0: none). Requests
    /// stamped before the path was watched (`since_ns`) are not counted at all, on either
    /// side, so IO in flight when watching starts never offsets the count. The eBPF
    /// programs run exactly this; it lives here so the daemon's tests run it too.
    #[inline(always)]
    pub fn count(&mut self, since_ns: u64, start: u64) {
        if start == 0 {
            self.unstamped = self.unstamped.wrapping_add(1);
            return;
        }
        if start < since_ns {
            return;
        }
        let x = (start >> EPOCH_SHIFT) as u32;
        let ahead = x.wrapping_sub(self.epoch) as i32;
        if ahead <= -(EPOCHS as i32) {
            // Older than anything the ring holds.
            self.old = self.old.wrapping_add(1);
            return;
        }
        if ahead > 0 {
            self.advance(x, ahead as u32);
        }
        if let Some(b) = self.ring.get_mut((x as usize) & (EPOCHS - 1)) {
            *b = b.wrapping_add(1);
        }
    }

    /// Moves the ring to epoch `x`, `ahead` epochs past its newest: the buckets it reuses
    /// are folded into `old`. Bracketed by `seq` (odd while moving) so the daemon never
    /// reads a bucket both before and after it was folded.
    #[inline(always)]
    fn advance(&mut self, x: u32, ahead: u32) {
        // Volatile: the stores must reach memory in this order (the JIT keeps it; x86
        // keeps it for the reader).
        unsafe { core::ptr::write_volatile(&mut self.seq, self.seq.wrapping_add(1)) };
        let n = if ahead > EPOCHS as u32 {
            EPOCHS as u32
        } else {
            ahead
        };
        let mut k = 1u32;
        while k <= EPOCHS as u32 {
            if k > n {
                break;
            }
            let i = (self.epoch.wrapping_add(k) as usize) & (EPOCHS - 1);
            if let Some(b) = self.ring.get_mut(i) {
                self.old = self.old.wrapping_add(*b);
                *b = 0;
            }
            k += 1;
        }
        unsafe {
            core::ptr::write_volatile(&mut self.epoch, x);
            core::ptr::write_volatile(&mut self.seq, self.seq.wrapping_add(1));
        }
    }

    /// The epoch bucket `i` holds.
    pub const fn bucket_epoch(&self, i: usize) -> u32 {
        self.epoch
            .wrapping_sub(self.epoch.wrapping_sub(i as u32) % EPOCHS as u32)
    }
}

/// Per path and CPU: what the issue and completion programs write on every request.
/// 96 bytes, so 1024 paths on 64 CPUs take 6 MiB.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCpu {
    /// Written by the issue program only.
    pub issued: EpochRing,
    /// Written by the completion program only.
    pub done: EpochRing,
    /// Written by the issue program only.
    pub issues: u64,
}

/// Per path, shared by all CPUs: latency, bytes and error counters, updated with atomic
/// adds (the smoothed latency and the last completion with plain stores: a lost update
/// there only blurs a value that is overwritten on the next completion). Laid out so
/// the fields every completion writes share one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathShared {
    // Line 0: written on every completion.
    /// Bytes completed without error, read and write.
    pub bytes: [u64; 2],
    /// Sum of measured latencies per direction.
    pub latency_sum_ns: [u64; 3],
    /// bpf_ktime_get_ns() of the latest completion, 0 if none since watched.
    pub last_complete_ns: u64,
    /// Smoothed latency of reads and writes (EWMA, weight 1/8), ns.
    pub ewma_ns: [u64; 2],
    // Line 1: rare.
    pub requeues: u64,
    /// Completions without a latency sample (no start stamp), per direction.
    pub untimed: [u64; 3],
    pub errors: [u64; 3],
    /// Requeued requests without a start stamp (see [`EpochRing::unstamped`]).
    pub requeued_unstamped: u64,
    pub errors_by_kind: [u64; ERROR_KINDS],
    pub errors_by_class: [u64; ERROR_CLASSES],
    pub _pad: [u64; 5],
    /// Requeued requests by epoch: a third side of the in-flight count, kept here because
    /// requeues are rare and may come from any CPU (atomic adds; see [`RequeueSlot`]).
    pub requeued: [RequeueSlot; EPOCHS],
    /// Requeued requests whose epoch had left `requeued`.
    pub requeued_old: u64,
    pub _pad2: [u64; 7],
    /// log2 histogram of latencies per direction (timed completions = its sum).
    pub latency_hist: [[u64; LATENCY_BUCKETS]; 3],
}

/// Requeues counted for one epoch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequeueSlot {
    pub epoch: u32,
    pub count: u32,
}

impl Default for PathShared {
    fn default() -> Self {
        Self {
            bytes: [0; 2],
            latency_sum_ns: [0; 3],
            last_complete_ns: 0,
            ewma_ns: [0; 2],
            requeues: 0,
            untimed: [0; 3],
            errors: [0; 3],
            requeued_unstamped: 0,
            errors_by_kind: [0; ERROR_KINDS],
            errors_by_class: [0; ERROR_CLASSES],
            _pad: [0; 5],
            requeued: [RequeueSlot::default(); EPOCHS],
            requeued_old: 0,
            _pad2: [0; 7],
            latency_hist: [[0; LATENCY_BUCKETS]; 3],
        }
    }
}

/// Per-path state shared by all CPUs: the rule windows. Written only when a completion
/// fails or is slow; updates race between CPUs, and a lost update only blurs a count,
/// which the rules tolerate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathRuleState {
    pub slow_window_start_ns: u64,
    pub slow_in_window: u64,
    /// Last event sent, per kind (index = kind - 1), and events held back since.
    pub last_event_ns: [u64; 2],
    pub suppressed: [u64; 2],
}

/// Index in the global counters map: events the ring buffer had no room for.
pub const COUNTER_RING_FULL: u32 = 0;
pub const COUNTERS: u32 = 4;

/// Event kinds.
pub const EV_IO_ERROR: u32 = 1;
pub const EV_SLOW: u32 = 2;

/// What the kernel sends through the ring buffer when a rule trips.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEvent {
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC) when the rule tripped.
    pub ts_ns: u64,
    /// Kernel dev_t encoding.
    pub dev: u32,
    /// EV_IO_ERROR or EV_SLOW.
    pub kind: u32,
    /// Negative errno of the failed completion (EV_IO_ERROR), 0 if none or if only the
    /// daemon can tell (a status whose number differs between kernels).
    pub error: i32,
    /// DIR_READ, DIR_WRITE or DIR_OTHER.
    pub dir: u32,
    /// Latency of the completion that tripped the rule, 0 when unknown.
    pub latency_ns: u64,
    /// EV_SLOW: slow completions in the window when it tripped.
    pub count: u32,
    /// Events of this kind held back by rate limiting since the previous one sent.
    pub suppressed: u32,
    pub sector: u64,
    /// The completion's blk_status_t, or STS_UNKNOWN (classic programs).
    pub status: u32,
    /// CLASS_PATH, CLASS_GENERIC or CLASS_LUN (EV_IO_ERROR).
    pub class: u32,
}

/// Converts a userspace `dev_t` (as `stat` and sysfs `dev` give it, major:minor) into the
/// kernel's internal encoding the block tracepoints carry (major << 20 | minor).
pub const fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xfffff)
}

/// Splits the kernel's internal `dev_t` encoding into (major, minor).
pub const fn split_kernel_dev(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xfffff)
}

/// Log2 bucket of a latency in nanoseconds (see [`LATENCY_BUCKETS`]).
#[inline(always)]
pub fn latency_bucket(latency_ns: u64) -> usize {
    let us = latency_ns / 1000;
    if us == 0 {
        return 0;
    }
    let b = 63 - us.leading_zeros() as usize;
    if b >= LATENCY_BUCKETS {
        LATENCY_BUCKETS - 1
    } else {
        b
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), made only of integer fields and arrays of them, laid out
    // without implicit padding (checked by the size tests below).
    unsafe impl aya::Pod for super::BlockTpOffsets {}
    unsafe impl aya::Pod for super::RqBtfOffsets {}
    unsafe impl aya::Pod for super::BlockConfig {}
    unsafe impl aya::Pod for super::WatchEntry {}
    unsafe impl aya::Pod for super::InflightEntry {}
    unsafe impl aya::Pod for super::PathLimits {}
    unsafe impl aya::Pod for super::PathCpu {}
    unsafe impl aya::Pod for super::PathShared {}
    unsafe impl aya::Pod for super::PathRuleState {}
    unsafe impl aya::Pod for super::BlockEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn no_implicit_padding() {
        assert_eq!(size_of::<BlockTpOffsets>(), 10 * 4);
        assert_eq!(size_of::<RqBtfOffsets>(), 10 * 4);
        assert_eq!(size_of::<BlockConfig>(), 16);
        assert_eq!(size_of::<WatchEntry>(), 16);
        assert_eq!(size_of::<InflightEntry>(), 16);
        assert_eq!(size_of::<PathLimits>(), 32);
        assert_eq!(size_of::<EpochRing>(), 12 + 2 * EPOCHS);
        assert_eq!(size_of::<PathCpu>(), 96);
        assert_eq!(size_of::<RequeueSlot>(), 8);
        assert_eq!(size_of::<PathRuleState>(), 8 * 6);
        assert_eq!(size_of::<BlockEvent>(), 56);
    }

    #[test]
    fn path_shared_keeps_hot_fields_on_one_line() {
        assert_eq!(size_of::<PathShared>() % 64, 0);
        assert_eq!(core::mem::offset_of!(PathShared, requeues), 64);
        assert_eq!(core::mem::offset_of!(PathShared, latency_hist) % 64, 0);
    }

    #[test]
    fn latency_buckets_are_log2_microseconds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(999), 0);
        assert_eq!(latency_bucket(1_000), 0);
        assert_eq!(latency_bucket(2_000), 1);
        assert_eq!(latency_bucket(3_999), 1);
        assert_eq!(latency_bucket(1_000_000), 9); // 1 ms = 1000 us: 2^9 = 512
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn dev_encoding_round_trips() {
        assert_eq!(kernel_dev(8, 16), (8 << 20) | 16);
        assert_eq!(split_kernel_dev(kernel_dev(259, 3)), (259, 3));
    }

    #[test]
    fn table_indexes_stay_in_range() {
        for max in [1u32, 2, 16, 1000, 1024, MAX_PATHS_LIMIT] {
            let bits = watch_bits(max);
            assert!(1u32 << bits >= max * WATCH_SLOTS_PER_PATH, "{max}");
            for dev in [1u32, kernel_dev(7, 0), kernel_dev(8, 0), u32::MAX] {
                assert!(watch_index(dev, bits) < 1 << bits);
            }
        }
        assert_eq!(watch_bits(1), 6);
        assert_eq!(watch_bits(1024), 12);
        for sector in [0u64, 8, 1 << 40, u64::MAX] {
            assert!(inflight_index(inflight_tag(7, sector)) < INFLIGHT_TABLE_SIZE);
        }
    }

    #[test]
    fn op_decode() {
        assert_eq!(op_direction(0), DIR_READ);
        assert_eq!(op_direction(1 | (1 << 11)), DIR_WRITE); // write with a flag
        assert_eq!(op_direction(2), DIR_OTHER);
        assert_eq!(op_direction(34), DIR_OTHER); // REQ_OP_DRV_IN (SG_IO)
    }

    /// The kernel's `blk_path_error()`: false for exactly these six; we keep EIO apart.
    #[test]
    fn classes_follow_blk_path_error() {
        for s in [1u8, 3, 5, 6, 7, 8] {
            assert_eq!(status_class(s), CLASS_LUN, "status {s}");
            assert_eq!(errno_class(stable_status_errno(s)), CLASS_LUN, "status {s}");
        }
        for s in [2u8, 4, 9, 11, 12, 13, 16, 17, 18, 19] {
            assert_eq!(status_class(s), CLASS_PATH, "status {s}");
        }
        for s in [2u8, 4, 9, 11, 12] {
            assert_eq!(
                errno_class(stable_status_errno(s)),
                CLASS_PATH,
                "status {s}"
            );
        }
        assert_eq!(status_class(STS_IOERR), CLASS_GENERIC);
        assert_eq!(status_class(20), CLASS_GENERIC);
        assert_eq!(errno_class(-5), CLASS_GENERIC);
        // Errnos of the statuses above 12 on 6.1 and 6.18: offline (ENODEV), duration
        // limit (ETIME), zones (ETOOMANYREFS, EOVERFLOW), device resource (EBUSY),
        // invalid (EINVAL): all path errors by the kernel's rule.
        for e in [19, 62, 109, 75, 16, 22] {
            assert_eq!(errno_class(-e), CLASS_PATH, "errno {e}");
        }
    }

    #[test]
    fn error_kinds() {
        assert_eq!(error_kind(-5), ERR_IO);
        assert_eq!(error_kind(-67), ERR_TRANSPORT);
        assert_eq!(error_kind(-110), ERR_TIMEOUT);
        assert_eq!(error_kind(stable_status_errno(STS_MEDIUM)), ERR_MEDIUM);
        assert_eq!(error_kind(-1), ERR_OTHER);
    }
}
