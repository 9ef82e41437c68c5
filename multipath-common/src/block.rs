//! Block-layer probes: which devices are watched, what is counted per device, the limits
//! the daemon sets per device, and the events the kernel sends when one is crossed.

/// Most path devices one daemon watches at once; sizes the per-path arrays.
pub const MAX_PATHS: u32 = 1024;

/// Slots in the watch table (a direct-mapped array, see [`watch_index`]). Four times
/// [`MAX_PATHS`] keeps probe chains short.
pub const WATCH_TABLE_SIZE: u32 = 4096;
/// Entries probed from a device's home index before giving up.
pub const WATCH_PROBES: u32 = 4;
/// A removed watch-table entry: lookups probe past it (an empty entry, dev 0, ends the
/// probe), inserts reuse it. No block device has this dev_t (major 4095, minor 0xfffff).
pub const WATCH_TOMBSTONE: u32 = u32::MAX;

/// Slots of the table of issue times. Requests are placed by a hash of (dev, sector): a
/// plain array lookup, which the kernel inlines, instead of a hash-map insert and delete
/// per request. A collision overwrites the older entry; that request's latency is then
/// not measured and is counted in [`PathStats::untimed`]. Small enough (128 KiB) to stay
/// in cache: at 32 Ki entries a cache miss per request cost more than the rest together.
pub const INFLIGHT_TABLE_SIZE: u32 = 1 << 13;

/// Log2 latency buckets, in microseconds: bucket `i` holds latencies in `[2^i, 2^(i+1))`
/// us (bucket 0 also holds everything below 1 us); the last bucket is open-ended (>= 2^31
/// us, about 36 min).
pub const LATENCY_BUCKETS: usize = 32;

/// Error classes counted per path, from the negative errno a completion carries
/// (`blk_status_to_errno`).
pub const ERROR_KINDS: usize = 8;
pub const ERR_IO: usize = 0; // EIO: BLK_STS_IOERR and friends
pub const ERR_TRANSPORT: usize = 1; // ENOLINK: BLK_STS_TRANSPORT, a path problem
pub const ERR_TIMEOUT: usize = 2; // ETIMEDOUT: BLK_STS_TIMEOUT
pub const ERR_TARGET: usize = 3; // EREMOTEIO: BLK_STS_TARGET, the LUN said no
pub const ERR_MEDIUM: usize = 4; // ENODATA: BLK_STS_MEDIUM
pub const ERR_NOSPC: usize = 5; // ENOSPC
pub const ERR_NOTSUPP: usize = 6; // EOPNOTSUPP
pub const ERR_OTHER: usize = 7;

/// Maps a completion's (negative) errno to its error class.
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

/// Request direction, from the tracepoint's `rwbs` string.
pub const DIR_READ: u32 = 0;
pub const DIR_WRITE: u32 = 1;
/// Flushes and anything else without data.
pub const DIR_OTHER: u32 = 2;

/// block_rq_complete's fields after `dev` (sector, nr_sector, error, rwbs) are copied in
/// one helper call of this many bytes from `complete_span`; the daemon checks at load time
/// that they fit.
pub const SPAN_BYTES: usize = 32;

/// Byte offsets of the tracepoint fields the programs read. They differ between kernels,
/// so the daemon reads them from tracefs' `format` files at start-up and writes them into
/// the program's read-only global before loading.
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

/// Byte offsets in kernel structures for the `tp_btf` completion program, taken from the
/// running kernel's BTF by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RqBtfOffsets {
    /// struct request: q, cmd_flags, __sector, start_time_ns (io_start_time_ns must follow
    /// it directly: they are read together).
    pub rq_q: u32,
    pub rq_cmd_flags: u32,
    pub rq_sector: u32,
    pub rq_start_time_ns: u32,
    /// struct request_queue: disk.
    pub q_disk: u32,
    /// struct gendisk: major (first_minor must follow it directly).
    pub disk_major: u32,
    /// 1 once filled in.
    pub valid: u32,
    pub _pad: u32,
}

/// Negative errno for a `blk_status_t`, as `blk_status_to_errno` maps it. The values up to
/// BLK_STS_AGAIN have been the same from 5.x through 6.18; anything else counts as EIO.
pub const fn blk_status_errno(status: u8) -> i32 {
    match status {
        0 => 0,
        1 => -95,  // NOTSUPP: EOPNOTSUPP
        2 => -110, // TIMEOUT: ETIMEDOUT
        3 => -28,  // NOSPC: ENOSPC
        4 => -67,  // TRANSPORT: ENOLINK
        5 => -121, // TARGET: EREMOTEIO
        6 => -52,  // RESV_CONFLICT (NEXUS before 6.5): EBADE
        7 => -61,  // MEDIUM: ENODATA
        8 => -84,  // PROTECTION: EILSEQ
        9 => -12,  // RESOURCE: ENOMEM
        12 => -11, // AGAIN: EAGAIN
        _ => -5,   // IOERR and the rest: EIO
    }
}

/// Direction of a request from its `cmd_flags` operation (REQ_OP_MASK = 0xff): read 0,
/// write 1, flush 2, discard 3, secure erase 5, write zeroes 9.
pub const fn op_direction(cmd_flags: u32) -> u32 {
    match cmd_flags & 0xff {
        0 => DIR_READ,
        1 | 3 | 5 | 9 => DIR_WRITE,
        _ => DIR_OTHER,
    }
}

/// One entry of the watch table: a watched device and its path slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchEntry {
    /// Kernel dev_t encoding; 0 marks an empty entry (no block device has dev_t 0).
    pub dev: u32,
    /// Index into the per-path arrays.
    pub slot: u32,
}

/// Home index of `dev` in the watch table; entries are probed linearly from there.
pub const fn watch_index(dev: u32) -> u32 {
    // Fibonacci hashing: consecutive minors spread over the table.
    dev.wrapping_mul(0x9E37_79B1) >> (32 - WATCH_TABLE_SIZE.trailing_zeros())
}

/// What identifies a request in the issue-time table: its sector with the device folded
/// in. Two requests with the same tag in the same slot would be confused; that takes two
/// devices whose dev_t and sector differ in exactly compensating bits, and costs one
/// latency sample.
pub const fn inflight_tag(dev: u32, sector: u64) -> u64 {
    sector ^ ((dev as u64) << 32)
}

/// Index of a request (by its tag) in the issue-time table.
pub const fn inflight_index(tag: u64) -> u32 {
    (tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - INFLIGHT_TABLE_SIZE.trailing_zeros())) as u32
}

/// One entry of the issue-time table: 16 bytes, so an entry never straddles cache lines.
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

/// Counters of one direction of one path on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirStats {
    pub completions: u64,
    pub errors: u64,
    pub bytes: u64,
    /// Completions whose latency was measured, and the sum of those latencies.
    pub timed: u64,
    pub latency_sum_ns: u64,
    /// Smoothed latency on this CPU (EWMA, weight 1/8, like TCP's srtt), ns. Per CPU so
    /// the hot path never writes a cache line another CPU also writes.
    pub ewma_ns: u64,
    pub latency_hist: [u64; LATENCY_BUCKETS],
}

impl Default for DirStats {
    fn default() -> Self {
        Self {
            completions: 0,
            errors: 0,
            bytes: 0,
            timed: 0,
            latency_sum_ns: 0,
            ewma_ns: 0,
            latency_hist: [0; LATENCY_BUCKETS],
        }
    }
}

/// Counters of one path on one CPU (the daemon sums the CPUs), so the hot path never
/// contends on a shared cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Indexed by DIR_READ, DIR_WRITE, DIR_OTHER.
    pub dir: [DirStats; 3],
    pub issues: u64,
    pub requeues: u64,
    /// Completions whose issue time was lost to a table collision.
    pub untimed: u64,
    /// Latest completion seen on this CPU (bpf_ktime_get_ns), 0 if none.
    pub last_complete_ns: u64,
    pub errors_by_kind: [u64; ERROR_KINDS],
}

impl PathStats {
    /// Adds another CPU's copy into this one.
    pub fn accumulate(&mut self, o: &PathStats) {
        for (d, od) in self.dir.iter_mut().zip(o.dir.iter()) {
            // CPUs' smoothed latencies combine weighted by how many samples each saw.
            let n = d.timed + od.timed;
            if n > 0 {
                d.ewma_ns = ((d.ewma_ns as u128 * d.timed as u128
                    + od.ewma_ns as u128 * od.timed as u128)
                    / n as u128) as u64;
            }
            d.completions += od.completions;
            d.errors += od.errors;
            d.bytes += od.bytes;
            d.timed += od.timed;
            d.latency_sum_ns += od.latency_sum_ns;
            for (b, ob) in d.latency_hist.iter_mut().zip(od.latency_hist.iter()) {
                *b += ob;
            }
        }
        self.issues += o.issues;
        self.requeues += o.requeues;
        self.untimed += o.untimed;
        self.last_complete_ns = self.last_complete_ns.max(o.last_complete_ns);
        for (e, oe) in self.errors_by_kind.iter_mut().zip(o.errors_by_kind.iter()) {
            *e += oe;
        }
    }

    pub fn completions(&self) -> u64 {
        self.dir.iter().map(|d| d.completions).sum()
    }

    pub fn errors(&self) -> u64 {
        self.dir.iter().map(|d| d.errors).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.dir.iter().map(|d| d.bytes).sum()
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
    /// Negative errno of the failed completion (EV_IO_ERROR), else 0.
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
    unsafe impl aya::Pod for super::WatchEntry {}
    unsafe impl aya::Pod for super::InflightEntry {}
    unsafe impl aya::Pod for super::PathLimits {}
    unsafe impl aya::Pod for super::DirStats {}
    unsafe impl aya::Pod for super::PathStats {}
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
        assert_eq!(size_of::<RqBtfOffsets>(), 8 * 4);
        assert_eq!(size_of::<WatchEntry>(), 8);
        assert_eq!(size_of::<InflightEntry>(), 16);
        assert_eq!(size_of::<PathLimits>(), 32);
        assert_eq!(size_of::<DirStats>(), 8 * (6 + LATENCY_BUCKETS));
        assert_eq!(
            size_of::<PathStats>(),
            3 * size_of::<DirStats>() + 8 * (4 + ERROR_KINDS)
        );
        assert_eq!(size_of::<PathRuleState>(), 8 * 6);
        assert_eq!(size_of::<BlockEvent>(), 48);
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
        for dev in [1u32, kernel_dev(7, 0), kernel_dev(8, 0), u32::MAX] {
            assert!(watch_index(dev) < WATCH_TABLE_SIZE);
            for sector in [0u64, 8, 1 << 40, u64::MAX] {
                assert!(inflight_index(inflight_tag(dev, sector)) < INFLIGHT_TABLE_SIZE);
            }
        }
    }

    #[test]
    fn block_status_and_op_decode() {
        assert_eq!(blk_status_errno(10), -5);
        assert_eq!(error_kind(blk_status_errno(4)), ERR_TRANSPORT);
        assert_eq!(error_kind(blk_status_errno(2)), ERR_TIMEOUT);
        assert_eq!(op_direction(0), DIR_READ);
        assert_eq!(op_direction(1 | (1 << 11)), DIR_WRITE); // write with a flag
        assert_eq!(op_direction(2), DIR_OTHER);
    }

    #[test]
    fn error_kinds() {
        assert_eq!(error_kind(-5), ERR_IO);
        assert_eq!(error_kind(-67), ERR_TRANSPORT);
        assert_eq!(error_kind(-110), ERR_TIMEOUT);
        assert_eq!(error_kind(-1), ERR_OTHER);
    }
}
