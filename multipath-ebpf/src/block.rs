//! Block-layer fast path: per-path counters, latency and in-kernel decisions.
//!
//! Cost matters here: these run on every request of every disk. An unwatched device costs
//! one tracepoint field read and one inlined array lookup. A watched request costs an
//! array store at issue and an array lookup at completion; no per-request hash map.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use multipath_common::block::{
    BlockEvent, BlockTpOffsets, DIR_OTHER, DIR_READ, DIR_WRITE, EV_IO_ERROR, EV_SLOW,
    INFLIGHT_TABLE_SIZE, InflightEntry, MAX_PATHS, PathLimits, PathRuleState, PathStats,
    SPAN_BYTES, WATCH_PROBES, WATCH_TABLE_SIZE, WatchEntry, error_kind, inflight_index,
    inflight_tag, latency_bucket, watch_index,
};
use multipath_common::block::{RqBtfOffsets, blk_status_errno, op_direction};

/// Tracepoint field offsets, written by the daemon at load time.
#[unsafe(no_mangle)]
static BLOCK_TP_OFFSETS: BlockTpOffsets = BlockTpOffsets {
    issue_dev: 0,
    issue_sector: 0,
    complete_dev: 0,
    complete_sector: 0,
    complete_nr_sector: 0,
    complete_error: 0,
    complete_rwbs: 0,
    complete_span: 0,
    requeue_dev: 0,
    valid: 0,
};

/// Offsets in struct request, request_queue and gendisk, from the kernel's BTF.
#[unsafe(no_mangle)]
static RQ_BTF_OFFSETS: RqBtfOffsets = RqBtfOffsets {
    rq_q: 0,
    rq_cmd_flags: 0,
    rq_sector: 0,
    rq_start_time_ns: 0,
    q_disk: 0,
    disk_major: 0,
    valid: 0,
    _pad: 0,
};

/// Watched devices: a direct-mapped table probed linearly from `watch_index(dev)`.
#[map]
static WATCH: Array<WatchEntry> = Array::with_max_entries(WATCH_TABLE_SIZE, 0);

/// Issue time of each request in flight on a watched device, placed by (dev, sector).
#[map]
static INFLIGHT: Array<InflightEntry> = Array::with_max_entries(INFLIGHT_TABLE_SIZE, 0);

/// Counters per path slot, one copy per CPU.
#[map]
static PATH_STATS: PerCpuArray<PathStats> = PerCpuArray::with_max_entries(MAX_PATHS, 0);

/// Thresholds per path slot, set by the daemon.
#[map]
static PATH_LIMITS: Array<PathLimits> = Array::with_max_entries(MAX_PATHS, 0);

/// Rule windows and smoothed latency per path slot, shared by all CPUs.
#[map]
static PATH_RULES: Array<PathRuleState> = Array::with_max_entries(MAX_PATHS, 0);

/// Events for the daemon: one per tripped rule, rate-limited per path.
#[map]
static BLOCK_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[inline(always)]
fn offsets() -> BlockTpOffsets {
    // Volatile: the loader rewrites this global after compilation; a plain read would be
    // constant-folded to the zeroes above.
    unsafe { core::ptr::read_volatile(&BLOCK_TP_OFFSETS) }
}

/// Reads one field of the tracepoint record (a bpf_probe_read_kernel call: a classic
/// tracepoint's context allows direct loads only at constant offsets, and ours come from
/// the daemon at load time).
#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: u32) -> Result<T, u32> {
    unsafe { ctx.read_at::<T>(offset as usize) }.map_err(|_| 1u32)
}

/// The fields of block_rq_complete after `dev`, copied with one helper call instead of
/// one per field.
struct Span([u8; SPAN_BYTES]);

impl Span {
    #[inline(always)]
    fn read(ctx: &TracePointContext, start: u32) -> Result<Self, u32> {
        read::<[u8; SPAN_BYTES]>(ctx, start).map(Span)
    }

    /// The field at record offset `offset`, where the span starts at record offset `start`.
    #[inline(always)]
    fn get<T: Copy>(&self, start: u32, offset: u32) -> Result<T, u32> {
        let off = offset.wrapping_sub(start) as usize;
        if off + core::mem::size_of::<T>() > SPAN_BYTES {
            return Err(1);
        }
        Ok(unsafe { core::ptr::read_unaligned(self.0.as_ptr().add(off).cast::<T>()) })
    }
}

/// The path slot of a watched device, or `None` (the common, cheap case).
#[inline(always)]
fn watched_slot(dev: u32) -> Option<u32> {
    let mut i = watch_index(dev);
    for _ in 0..WATCH_PROBES {
        let e = WATCH.get(i & (WATCH_TABLE_SIZE - 1))?;
        if e.dev == dev {
            return Some(e.slot);
        }
        if e.dev == 0 {
            return None;
        }
        i += 1;
    }
    None
}

/// A field of the tracepoint record at a constant offset, loaded straight from the
/// context (the verifier checks the offset is within the record and aligned).
#[inline(always)]
unsafe fn load<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    use aya_ebpf::EbpfContext;
    unsafe { *ctx.as_ptr().cast::<u8>().add(offset).cast::<T>() }
}

/// Direction from the first bytes of the tracepoint's `rwbs` string ("R", "WS", "FWS",
/// "D", "FN", ...); the letter that says it comes within the first three.
#[inline(always)]
fn direction(rwbs: &[u8; 4]) -> u32 {
    for &c in rwbs.iter() {
        match c {
            b'R' => return DIR_READ,
            b'W' | b'D' => return DIR_WRITE,
            0 => break,
            _ => {}
        }
    }
    DIR_OTHER
}

#[tracepoint]
pub fn block_rq_issue(ctx: TracePointContext) -> u32 {
    match try_block_rq_issue(ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// For kernels whose block_rq_issue has `dev` at 8 and `sector` at 16 (6.1 through 6.18
/// at least): direct context loads at constant offsets instead of helper calls.
#[tracepoint]
pub fn block_rq_issue_fixed(ctx: TracePointContext) -> u32 {
    match try_block_rq_issue_fixed(ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// With the `tp_btf` completion, which takes the request's start time from the kernel's
/// own stamp, issue only needs counting: no clock read, no table write.
#[tracepoint]
pub fn block_rq_issue_count(ctx: TracePointContext) -> u32 {
    let dev: u32 = unsafe { load(&ctx, 8) };
    if let Some(slot) = watched_slot(dev)
        && let Some(stats) = PATH_STATS.get_ptr_mut(slot)
    {
        unsafe { (*stats).issues += 1 };
    }
    0
}

fn try_block_rq_issue(ctx: TracePointContext) -> Result<u32, u32> {
    let off = offsets();
    if off.valid == 0 {
        return Ok(0);
    }
    let dev: u32 = read(&ctx, off.issue_dev)?;
    let Some(slot) = watched_slot(dev) else {
        return Ok(0);
    };
    let sector: u64 = read(&ctx, off.issue_sector)?;
    issued(slot, dev, sector)
}

fn try_block_rq_issue_fixed(ctx: TracePointContext) -> Result<u32, u32> {
    let dev: u32 = unsafe { load(&ctx, 8) };
    let Some(slot) = watched_slot(dev) else {
        return Ok(0);
    };
    issued(slot, dev, unsafe { load(&ctx, 16) })
}

#[inline(always)]
fn issued(slot: u32, dev: u32, sector: u64) -> Result<u32, u32> {
    let now = unsafe { bpf_ktime_get_ns() };
    let stats = PATH_STATS.get_ptr_mut(slot).ok_or(1u32)?;
    let tag = inflight_tag(dev, sector);
    let entry = INFLIGHT.get_ptr_mut(inflight_index(tag)).ok_or(1u32)?;
    // Per-CPU slot, tracepoints run with preemption off: plain adds are safe. The
    // issue-time entry is shared; a colliding request may overwrite it (counted as
    // untimed at completion).
    unsafe {
        (*stats).issues += 1;
        *entry = InflightEntry { tag, issue_ns: now };
    }
    Ok(0)
}

#[tracepoint]
pub fn block_rq_requeue(ctx: TracePointContext) -> u32 {
    match try_block_rq_requeue(ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_block_rq_requeue(ctx: TracePointContext) -> Result<u32, u32> {
    let off = offsets();
    if off.valid == 0 {
        return Ok(0);
    }
    let dev: u32 = read(&ctx, off.requeue_dev)?;
    let Some(slot) = watched_slot(dev) else {
        return Ok(0);
    };
    // A requeued request is issued again later; without this the in-flight count
    // (issues - completions - requeues) would drift.
    let stats = PATH_STATS.get_ptr_mut(slot).ok_or(1u32)?;
    unsafe { (*stats).requeues += 1 };
    Ok(0)
}

#[tracepoint]
pub fn block_rq_complete(ctx: TracePointContext) -> u32 {
    match try_block_rq_complete(ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// For kernels whose block_rq_complete has dev 8, sector 16, nr_sector 24, error 28 and
/// `rwbs` at 32 (6.1) or 34 (6.18, after `ioprio`): direct context loads.
#[tracepoint]
pub fn block_rq_complete_rwbs32(ctx: TracePointContext) -> u32 {
    match try_block_rq_complete_fixed::<32>(ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[tracepoint]
pub fn block_rq_complete_rwbs34(ctx: TracePointContext) -> u32 {
    match try_block_rq_complete_fixed::<34>(ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes) as a
/// BTF tracepoint: the request's start time is the kernel's own stamp, already in this
/// CPU's cache with the rest of the request, instead of one we carried across CPUs.
#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete_btf(ctx: BtfTracePointContext) -> u32 {
    match try_block_rq_complete_btf(ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// A field of a kernel struct reached from the tracepoint's typed arguments: a plain load,
/// which the verifier checks against the kernel's BTF (offset and size must be a member's).
#[inline(always)]
fn kread<T: Copy>(base: *const u8, offset: u32) -> Result<T, u32> {
    Ok(unsafe { core::ptr::read_volatile(base.add(offset as usize).cast::<T>()) })
}

fn try_block_rq_complete_btf(ctx: BtfTracePointContext) -> Result<u32, u32> {
    let off = unsafe { core::ptr::read_volatile(&RQ_BTF_OFFSETS) };
    if off.valid == 0 {
        return Ok(0);
    }
    let rq: *const u8 = ctx.arg(0);
    let q: *const u8 = kread(rq, off.rq_q)?;
    let disk: *const u8 = kread(q, off.q_disk)?;
    if disk.is_null() {
        return Ok(0);
    }
    // major, first_minor: the whole disk's number, as the classic tracepoint reports it.
    let major: u32 = kread(disk, off.disk_major)?;
    let minor: u32 = kread(disk, off.disk_major + 4)?;
    let dev = (major << 20) | (minor & 0xfffff);
    let Some(slot) = watched_slot(dev) else {
        return Ok(0);
    };
    let status: u8 = ctx.arg(1);
    let nr_bytes: u32 = ctx.arg(2);
    let sector: u64 = kread(rq, off.rq_sector)?;
    let flags: u32 = kread(rq, off.rq_cmd_flags)?;
    // start_time_ns (allocation) and io_start_time_ns (dispatch, set only when the queue
    // keeps stats): the dispatch time when there is one.
    let io_start: u64 = kread(rq, off.rq_start_time_ns + 8)?;
    let start = if io_start != 0 {
        io_start
    } else {
        kread(rq, off.rq_start_time_ns)?
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let latency = if start != 0 {
        now.saturating_sub(start)
    } else {
        0
    };
    account(
        slot,
        dev,
        sector,
        nr_bytes >> 9,
        blk_status_errno(status),
        op_direction(flags),
        latency,
        now,
    )
}

fn try_block_rq_complete_fixed<const RWBS: usize>(ctx: TracePointContext) -> Result<u32, u32> {
    let dev: u32 = unsafe { load(&ctx, 8) };
    let Some(slot) = watched_slot(dev) else {
        return Ok(0);
    };
    // Byte loads: the verifier wants context loads aligned to their size.
    let rwbs: [u8; 4] = unsafe {
        [
            load(&ctx, RWBS),
            load(&ctx, RWBS + 1),
            load(&ctx, RWBS + 2),
            load(&ctx, RWBS + 3),
        ]
    };
    completed(
        slot,
        dev,
        unsafe { load(&ctx, 16) },
        unsafe { load(&ctx, 24) },
        unsafe { load(&ctx, 28) },
        direction(&rwbs),
    )
}

fn try_block_rq_complete(ctx: TracePointContext) -> Result<u32, u32> {
    let off = offsets();
    if off.valid == 0 {
        return Ok(0);
    }
    let dev: u32 = read(&ctx, off.complete_dev)?;
    let Some(slot) = watched_slot(dev) else {
        return Ok(0);
    };
    let at = off.complete_span;
    let span = Span::read(&ctx, at)?;
    let rwbs: [u8; 4] = span.get(at, off.complete_rwbs)?;
    completed(
        slot,
        dev,
        span.get(at, off.complete_sector)?,
        span.get(at, off.complete_nr_sector)?,
        span.get(at, off.complete_error)?,
        direction(&rwbs),
    )
}

#[inline(always)]
fn completed(
    slot: u32,
    dev: u32,
    sector: u64,
    nr_sector: u32,
    error: i32,
    dir: u32,
) -> Result<u32, u32> {
    let now = unsafe { bpf_ktime_get_ns() };
    let mut latency = 0u64;
    let tag = inflight_tag(dev, sector);
    if let Some(e) = INFLIGHT.get_ptr_mut(inflight_index(tag)) {
        unsafe {
            if (*e).tag == tag && (*e).issue_ns != 0 {
                latency = now.saturating_sub((*e).issue_ns);
                (*e).issue_ns = 0;
            }
        }
    }

    account(slot, dev, sector, nr_sector, error, dir, latency, now)
}

/// Counts a completion and applies the rules; `latency` 0 means unknown.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn account(
    slot: u32,
    dev: u32,
    sector: u64,
    nr_sector: u32,
    error: i32,
    dir: u32,
    latency: u64,
    now: u64,
) -> Result<u32, u32> {
    let stats = PATH_STATS.get_ptr_mut(slot).ok_or(1u32)?;
    let stats = unsafe { &mut *stats };
    stats.last_complete_ns = now;
    if latency == 0 {
        stats.untimed += 1;
    }
    if let Some(d) = stats.dir.get_mut(dir as usize) {
        d.completions += 1;
        d.bytes += u64::from(nr_sector) * 512;
        if latency != 0 {
            d.timed += 1;
            d.latency_sum_ns += latency;
            // EWMA with weight 1/8; the first sample seeds it.
            d.ewma_ns = if d.ewma_ns == 0 {
                latency
            } else {
                d.ewma_ns - (d.ewma_ns >> 3) + (latency >> 3)
            };
            if let Some(b) = d.latency_hist.get_mut(latency_bucket(latency)) {
                *b += 1;
            }
        }
        if error != 0 {
            d.errors += 1;
        }
    }
    if error != 0 {
        if let Some(k) = stats.errors_by_kind.get_mut(error_kind(error)) {
            *k += 1;
        }
    }

    let limits = PATH_LIMITS.get(slot).ok_or(1u32)?;
    let slow = latency != 0 && limits.latency_limit_ns != 0 && latency > limits.latency_limit_ns;
    if error == 0 && !slow {
        // The common case ends here, having written only this CPU's counters.
        return Ok(0);
    }
    let rules = PATH_RULES.get_ptr_mut(slot).ok_or(1u32)?;
    let rules = unsafe { &mut *rules };
    let mut event = BlockEvent {
        ts_ns: now,
        dev,
        kind: 0,
        error,
        dir,
        latency_ns: latency,
        count: 0,
        suppressed: 0,
        sector,
    };
    if error != 0 {
        // Any failed completion on a path is worth a decision.
        event.kind = EV_IO_ERROR;
        send(rules, limits, event);
        return Ok(0);
    }
    if now.saturating_sub(rules.slow_window_start_ns) > limits.slow_window_ns {
        rules.slow_window_start_ns = now;
        rules.slow_in_window = 0;
    }
    rules.slow_in_window += 1;
    if rules.slow_in_window >= u64::from(limits.slow_count.max(1)) {
        event.kind = EV_SLOW;
        event.count = rules.slow_in_window as u32;
        rules.slow_in_window = 0;
        rules.slow_window_start_ns = now;
        send(rules, limits, event);
    }
    Ok(0)
}

/// Sends `ev` unless one of its kind went out less than `event_gap_ns` ago, in which case
/// it is counted and reported with the next one sent.
#[inline(always)]
fn send(rules: &mut PathRuleState, limits: &PathLimits, mut ev: BlockEvent) {
    let k = (ev.kind - 1) as usize;
    let (Some(last), Some(held)) = (
        rules.last_event_ns.get(k).copied(),
        rules.suppressed.get(k).copied(),
    ) else {
        return;
    };
    if last != 0 && ev.ts_ns.saturating_sub(last) < limits.event_gap_ns {
        if let Some(s) = rules.suppressed.get_mut(k) {
            *s += 1;
        }
        return;
    }
    ev.suppressed = held as u32;
    if BLOCK_EVENTS.output::<BlockEvent>(&ev, 0).is_ok() {
        if let Some(l) = rules.last_event_ns.get_mut(k) {
            *l = ev.ts_ns;
        }
        if let Some(s) = rules.suppressed.get_mut(k) {
            *s = 0;
        }
    } else if let Some(s) = rules.suppressed.get_mut(k) {
        // Ring full: the daemon is behind; count it rather than lose it silently.
        *s += 1;
    }
}
