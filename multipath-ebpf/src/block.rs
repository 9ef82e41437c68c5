//! Block-layer fast path: per-path counters, latency, in-flight requests by age, and
//! in-kernel decisions.
//!
//! Cost matters here: these run on every request of every disk. An unwatched device costs
//! a few loads and one inlined array lookup. A watched request adds one per-CPU counter at
//! issue and, at completion, per-CPU counters plus two atomic adds to the path's shared
//! line and histogram. No per-request table: a request's age comes from the kernel's own
//! start stamp in `struct request`, read at issue and at completion alike.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use multipath_common::block::{
    BPF_F_MMAPABLE, BlockConfig, BlockEvent, BlockTpOffsets, COUNTER_RING_FULL, COUNTERS,
    DIR_OTHER, DIR_READ, DIR_WRITE, EPOCH_SHIFT, EPOCHS, EV_IO_ERROR, EV_SLOW, INFLIGHT_TABLE_SIZE,
    InflightEntry, MQ_RQ_IDLE, PathCpu, PathLimits, PathRuleState, PathShared, RqBtfOffsets,
    SPAN_BYTES, STS_UNKNOWN, WATCH_PROBES, WatchEntry, errno_class, error_kind, inflight_index,
    inflight_tag, latency_bucket, op_direction, stable_status_errno, status_class, watch_index,
};

/// Sizes, written by the daemon at load time.
#[unsafe(no_mangle)]
static BLOCK_CONFIG: BlockConfig = BlockConfig {
    max_paths: 0,
    watch_bits: 0,
    valid: 0,
    _pad: 0,
};

/// Tracepoint field offsets (classic programs), written by the daemon at load time.
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
    rq_data_len: 0,
    rq_sector: 0,
    rq_start_time_ns: 0,
    rq_state: 0,
    q_disk: 0,
    disk_major: 0,
    valid: 0,
    _pad: 0,
};

// Every per-path map is sized by the daemon at load time (EbpfLoader::set_max_entries);
// the sizes here are placeholders.

/// Watched devices: a direct-mapped table probed linearly from `watch_index(dev)`.
#[map]
static WATCH: Array<WatchEntry> = Array::with_max_entries(1, 0);

/// Per path and CPU, index cpu * max_paths + slot. A plain array rather than a per-CPU
/// map so the daemon can read it through a mapping, without a syscall per path and scan.
#[map]
static PATH_CPU: Array<PathCpu> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Per path, shared by all CPUs.
#[map]
static PATH_SHARED: Array<PathShared> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Thresholds per path slot, set by the daemon.
#[map]
static PATH_LIMITS: Array<PathLimits> = Array::with_max_entries(1, 0);

/// Rule windows per path slot.
#[map]
static PATH_RULES: Array<PathRuleState> = Array::with_max_entries(1, 0);

/// Issue time of each request in flight on a watched device, placed by (dev, sector):
/// the classic programs' only way to a latency. One entry with the BTF programs.
#[map]
static INFLIGHT: Array<InflightEntry> = Array::with_max_entries(INFLIGHT_TABLE_SIZE, 0);

/// Counters of the whole object (COUNTER_*).
#[map]
static BLOCK_COUNTERS: Array<u64> = Array::with_max_entries(COUNTERS, 0);

/// Events for the daemon: one per tripped rule, rate-limited per path.
#[map]
static BLOCK_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Reads a load-time global. Volatile: the loader rewrites it after compilation; a plain
/// read would be constant-folded to the zeroes above.
#[inline(always)]
fn global<T: Copy>(g: &T) -> T {
    unsafe { core::ptr::read_volatile(g) }
}

/// `lock *(u64 *)p += v`. The BPF target has no `AtomicU64::fetch_add` (no compare and
/// swap before BPF v3); with the result unused the intrinsic compiles to BPF's plain
/// atomic add, which every kernel has.
#[inline(always)]
fn atomic_add(p: *mut u64, v: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

#[inline(always)]
fn atomic_add32(p: *mut u32, v: u32) {
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(p, v) };
}

/// The watch entry of a watched device, or `None` (the common, cheap case).
#[inline(always)]
fn watched(dev: u32, cfg: &BlockConfig) -> Option<WatchEntry> {
    let mask = (1u32 << (cfg.watch_bits & 31)) - 1;
    let mut i = watch_index(dev, cfg.watch_bits);
    for _ in 0..WATCH_PROBES {
        let e = WATCH.get(i & mask)?;
        if e.dev == dev {
            return Some(*e);
        }
        if e.dev == 0 {
            return None;
        }
        i += 1;
    }
    None
}

/// This CPU's entry for path `slot`. Tracepoint programs do not migrate while they run.
#[inline(always)]
fn path_cpu(slot: u32, cfg: &BlockConfig) -> Option<*mut PathCpu> {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    PATH_CPU.get_ptr_mut(cpu.wrapping_mul(cfg.max_paths).wrapping_add(slot))
}

/// A field of a kernel struct reached from the tracepoint's typed arguments: a plain load,
/// which the verifier checks against the kernel's BTF (offset and size must be a member's).
#[inline(always)]
fn kread<T: Copy>(base: *const u8, offset: u32) -> T {
    unsafe { core::ptr::read_volatile(base.add(offset as usize).cast::<T>()) }
}

/// The whole disk's dev_t of a request (as the classic tracepoints report it), or None
/// for a request of a queue without a disk.
#[inline(always)]
fn rq_dev(rq: *const u8, off: &RqBtfOffsets) -> Option<u32> {
    let q: *const u8 = kread(rq, off.rq_q);
    let disk: *const u8 = kread(q, off.q_disk);
    if disk.is_null() {
        return None;
    }
    let major: u32 = kread(disk, off.disk_major);
    let minor: u32 = kread(disk, off.disk_major + 4);
    Some((major << 20) | (minor & 0xfffff))
}

/// block_rq_issue(struct request *rq), as a BTF tracepoint: no record is built, and the
/// request's start stamp is at hand.
#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue_btf(ctx: BtfTracePointContext) -> u32 {
    let off = global(&RQ_BTF_OFFSETS);
    let cfg = global(&BLOCK_CONFIG);
    if off.valid == 0 || cfg.valid == 0 {
        return 0;
    }
    let rq: *const u8 = ctx.arg(0);
    let Some(dev) = rq_dev(rq, &off) else {
        return 0;
    };
    let Some(w) = watched(dev, &cfg) else {
        return 0;
    };
    let Some(pc) = path_cpu(w.slot, &cfg) else {
        return 0;
    };
    let start: u64 = kread(rq, off.rq_start_time_ns);
    unsafe {
        (*pc).issued.count(w.since_ns, start);
        (*pc).issues += 1;
    }
    0
}

/// block_rq_requeue(struct request *rq): the request leaves the device and will be issued
/// again. Counted in the path's shared requeue ring (atomic adds: requeues are rare and
/// may come from any CPU and any context).
#[btf_tracepoint(function = "block_rq_requeue")]
pub fn block_rq_requeue_btf(ctx: BtfTracePointContext) -> u32 {
    let off = global(&RQ_BTF_OFFSETS);
    let cfg = global(&BLOCK_CONFIG);
    if off.valid == 0 || cfg.valid == 0 {
        return 0;
    }
    let rq: *const u8 = ctx.arg(0);
    let Some(dev) = rq_dev(rq, &off) else {
        return 0;
    };
    let Some(w) = watched(dev, &cfg) else {
        return 0;
    };
    let Some(sh) = PATH_SHARED.get_ptr_mut(w.slot) else {
        return 0;
    };
    unsafe { atomic_add(&mut (*sh).requeues, 1) };
    // Still IN_FLIGHT here if it was started (the kernel marks it idle after the event).
    let state: u32 = kread(rq, off.rq_state);
    if state == MQ_RQ_IDLE {
        return 0;
    }
    let start: u64 = kread(rq, off.rq_start_time_ns);
    requeued(unsafe { &mut *sh }, w.since_ns, start);
    0
}

#[inline(always)]
fn requeued(sh: &mut PathShared, since: u64, start: u64) {
    if start == 0 {
        atomic_add(&mut sh.requeued_unstamped, 1);
        return;
    }
    if start < since {
        return;
    }
    let x = (start >> EPOCH_SHIFT) as u32;
    let Some(slot) = sh.requeued.get_mut((x as usize) & (EPOCHS - 1)) else {
        return;
    };
    let held = slot.epoch;
    if held == x {
        atomic_add32(&mut slot.count, 1);
    } else if (x.wrapping_sub(held) as i32) > 0 {
        // The slot holds an older epoch: its count goes to the old sum. Two requeues of
        // one path crossing into a new epoch at the same instant on two CPUs could both
        // do this; rare enough to accept.
        let n = slot.count;
        atomic_add(&mut sh.requeued_old, u64::from(n));
        slot.epoch = x;
        slot.count = 1;
    } else {
        atomic_add(&mut sh.requeued_old, 1);
    }
}

/// block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes) as a
/// BTF tracepoint: the request's start time is the kernel's own stamp, already in this
/// CPU's cache with the rest of the request, instead of one we carried across CPUs.
#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete_btf(ctx: BtfTracePointContext) -> u32 {
    let off = global(&RQ_BTF_OFFSETS);
    let cfg = global(&BLOCK_CONFIG);
    if off.valid == 0 || cfg.valid == 0 {
        return 0;
    }
    let rq: *const u8 = ctx.arg(0);
    let Some(dev) = rq_dev(rq, &off) else {
        return 0;
    };
    let Some(w) = watched(dev, &cfg) else {
        return 0;
    };
    let status: u8 = ctx.arg(1);
    let nr_bytes: u32 = ctx.arg(2);
    let data_len: u32 = kread(rq, off.rq_data_len);
    let state: u32 = kread(rq, off.rq_state);
    // start_time_ns (allocation) and io_start_time_ns (dispatch, set only when the queue
    // keeps stats): the request is counted in flight by the first, its latency is from
    // the second when there is one.
    let start: u64 = kread(rq, off.rq_start_time_ns);
    let io_start: u64 = kread(rq, off.rq_start_time_ns + 8);
    let now = unsafe { bpf_ktime_get_ns() };
    // A driver may complete a request in parts; it is done with the part that covers
    // what is left of it. A request never started (refused before issue) was never
    // counted as issued.
    let last = nr_bytes >= data_len;
    if last
        && state != MQ_RQ_IDLE
        && let Some(pc) = path_cpu(w.slot, &cfg)
    {
        unsafe { (*pc).done.count(w.since_ns, start) };
    }
    let latency = match (last, io_start, start) {
        (false, _, _) => 0,
        (true, 0, 0) => 0,
        (true, 0, s) | (true, s, _) => now.saturating_sub(s).max(1),
    };
    let flags: u32 = kread(rq, off.rq_cmd_flags);
    let error = if status == 0 {
        0
    } else {
        stable_status_errno(status)
    };
    let class = status_class(status);
    let done = Completion {
        dev,
        slot: w.slot,
        sector: kread(rq, off.rq_sector),
        bytes: nr_bytes,
        failed: status != 0,
        error,
        status: u32::from(status),
        class,
        dir: op_direction(flags),
        latency,
        last,
        now,
    };
    account(&done)
}

/// One completion (or part of one), as the programs that saw it decoded it.
struct Completion {
    dev: u32,
    slot: u32,
    sector: u64,
    bytes: u32,
    failed: bool,
    /// Negative errno, 0 when none or not known here.
    error: i32,
    status: u32,
    class: u32,
    dir: u32,
    /// 0: not measured.
    latency: u64,
    /// The part that finishes the request (the only one with a latency sample).
    last: bool,
    now: u64,
}

/// Counts a completion in the path's shared counters and applies the rules.
#[inline(always)]
fn account(c: &Completion) -> u32 {
    let Some(sh) = PATH_SHARED.get_ptr_mut(c.slot) else {
        return 0;
    };
    let sh = unsafe { &mut *sh };
    let d = (c.dir as usize).min(2);
    sh.last_complete_ns = c.now;
    if !c.failed
        && d < 2
        && let Some(b) = sh.bytes.get_mut(d)
    {
        atomic_add(b, u64::from(c.bytes));
    }
    if c.last {
        if c.latency != 0 {
            if let Some(s) = sh.latency_sum_ns.get_mut(d) {
                atomic_add(s, c.latency);
            }
            if let Some(b) = sh
                .latency_hist
                .get_mut(d)
                .and_then(|h| h.get_mut(latency_bucket(c.latency)))
            {
                atomic_add(b, 1);
            }
            if let Some(e) = sh.ewma_ns.get_mut(d) {
                // EWMA with weight 1/8; the first sample seeds it.
                let v = *e;
                *e = if v == 0 {
                    c.latency
                } else {
                    v - (v >> 3) + (c.latency >> 3)
                };
            }
        } else if let Some(u) = sh.untimed.get_mut(d) {
            atomic_add(u, 1);
        }
    }
    if c.failed {
        if let Some(e) = sh.errors.get_mut(d) {
            atomic_add(e, 1);
        }
        let kind = if c.error != 0 {
            error_kind(c.error)
        } else {
            multipath_common::block::ERR_OTHER
        };
        if let Some(k) = sh.errors_by_kind.get_mut(kind) {
            atomic_add(k, 1);
        }
        if let Some(k) = sh.errors_by_class.get_mut(c.class as usize) {
            atomic_add(k, 1);
        }
    }

    let Some(limits) = PATH_LIMITS.get(c.slot) else {
        return 0;
    };
    let slow =
        c.latency != 0 && limits.latency_limit_ns != 0 && c.latency > limits.latency_limit_ns;
    if !c.failed && !slow {
        // The common case ends here.
        return 0;
    }
    let Some(rules) = PATH_RULES.get_ptr_mut(c.slot) else {
        return 0;
    };
    let rules = unsafe { &mut *rules };
    let mut event = BlockEvent {
        ts_ns: c.now,
        dev: c.dev,
        kind: 0,
        error: c.error,
        dir: c.dir,
        latency_ns: c.latency,
        count: 0,
        suppressed: 0,
        sector: c.sector,
        status: c.status,
        class: c.class,
    };
    if c.failed {
        // Any failed completion on a path is worth a decision.
        event.kind = EV_IO_ERROR;
        send(rules, limits, event);
        return 0;
    }
    if c.now.saturating_sub(rules.slow_window_start_ns) > limits.slow_window_ns {
        rules.slow_window_start_ns = c.now;
        rules.slow_in_window = 0;
    }
    rules.slow_in_window += 1;
    if rules.slow_in_window >= u64::from(limits.slow_count.max(1)) {
        event.kind = EV_SLOW;
        event.count = rules.slow_in_window as u32;
        rules.slow_in_window = 0;
        rules.slow_window_start_ns = c.now;
        send(rules, limits, event);
    }
    0
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
    } else {
        // Ring full: the daemon is behind. Counted globally, and held back like a
        // rate-limited event so the next one sent carries it.
        if let Some(s) = rules.suppressed.get_mut(k) {
            *s += 1;
        }
        if let Some(n) = BLOCK_COUNTERS.get_ptr_mut(COUNTER_RING_FULL) {
            atomic_add(n, 1);
        }
    }
}

// ---- Classic tracepoints: kernels without usable BTF ----------------------------------
//
// The classic records carry no start stamp, so every request counts as "unstamped" and
// only the counter rule can see a stall; latency comes from an issue-time table.

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

/// A field of the tracepoint record at a constant offset, loaded straight from the
/// context (the verifier checks the offset is within the record and aligned).
#[inline(always)]
unsafe fn load<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
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

fn try_block_rq_issue(ctx: TracePointContext) -> Result<u32, u32> {
    let off = global(&BLOCK_TP_OFFSETS);
    if off.valid == 0 {
        return Ok(0);
    }
    let cfg = global(&BLOCK_CONFIG);
    if cfg.valid == 0 {
        return Ok(0);
    }
    let dev: u32 = read(&ctx, off.issue_dev)?;
    let Some(w) = watched(dev, &cfg) else {
        return Ok(0);
    };
    let sector: u64 = read(&ctx, off.issue_sector)?;
    issued(&w, &cfg, dev, sector)
}

fn try_block_rq_issue_fixed(ctx: TracePointContext) -> Result<u32, u32> {
    let cfg = global(&BLOCK_CONFIG);
    if cfg.valid == 0 {
        return Ok(0);
    }
    let dev: u32 = unsafe { load(&ctx, 8) };
    let Some(w) = watched(dev, &cfg) else {
        return Ok(0);
    };
    issued(&w, &cfg, dev, unsafe { load(&ctx, 16) })
}

/// An issue seen by the classic programs.
#[inline(always)]
fn issued(w: &WatchEntry, cfg: &BlockConfig, dev: u32, sector: u64) -> Result<u32, u32> {
    let now = unsafe { bpf_ktime_get_ns() };
    let pc = path_cpu(w.slot, cfg).ok_or(1u32)?;
    let tag = inflight_tag(dev, sector);
    let entry = INFLIGHT.get_ptr_mut(inflight_index(tag)).ok_or(1u32)?;
    // The issue-time entry is shared; a colliding request may overwrite it (that one
    // completes untimed).
    unsafe {
        (*pc).issued.count(w.since_ns, 0);
        (*pc).issues += 1;
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
    let off = global(&BLOCK_TP_OFFSETS);
    let cfg = global(&BLOCK_CONFIG);
    if off.valid == 0 || cfg.valid == 0 {
        return Ok(0);
    }
    let dev: u32 = read(&ctx, off.requeue_dev)?;
    let Some(w) = watched(dev, &cfg) else {
        return Ok(0);
    };
    let sh = PATH_SHARED.get_ptr_mut(w.slot).ok_or(1u32)?;
    unsafe {
        atomic_add(&mut (*sh).requeues, 1);
        atomic_add(&mut (*sh).requeued_unstamped, 1);
    }
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

fn try_block_rq_complete_fixed<const RWBS: usize>(ctx: TracePointContext) -> Result<u32, u32> {
    let dev: u32 = unsafe { load(&ctx, 8) };
    let cfg = global(&BLOCK_CONFIG);
    if cfg.valid == 0 {
        return Ok(0);
    }
    let Some(w) = watched(dev, &cfg) else {
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
        &w,
        &cfg,
        dev,
        unsafe { load(&ctx, 16) },
        unsafe { load(&ctx, 24) },
        unsafe { load(&ctx, 28) },
        direction(&rwbs),
    )
}

fn try_block_rq_complete(ctx: TracePointContext) -> Result<u32, u32> {
    let off = global(&BLOCK_TP_OFFSETS);
    let cfg = global(&BLOCK_CONFIG);
    if off.valid == 0 || cfg.valid == 0 {
        return Ok(0);
    }
    let dev: u32 = read(&ctx, off.complete_dev)?;
    let Some(w) = watched(dev, &cfg) else {
        return Ok(0);
    };
    let at = off.complete_span;
    let span = Span::read(&ctx, at)?;
    let rwbs: [u8; 4] = span.get(at, off.complete_rwbs)?;
    completed(
        &w,
        &cfg,
        dev,
        span.get(at, off.complete_sector)?,
        span.get(at, off.complete_nr_sector)?,
        span.get(at, off.complete_error)?,
        direction(&rwbs),
    )
}

/// A completion seen by the classic programs.
#[inline(always)]
fn completed(
    w: &WatchEntry,
    cfg: &BlockConfig,
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
                latency = now.saturating_sub((*e).issue_ns).max(1);
                (*e).issue_ns = 0;
            }
        }
    }
    if let Some(pc) = path_cpu(w.slot, cfg) {
        unsafe { (*pc).done.count(w.since_ns, 0) };
    }
    Ok(account(&Completion {
        dev,
        slot: w.slot,
        sector,
        bytes: nr_sector << 9,
        failed: error != 0,
        error,
        status: STS_UNKNOWN,
        class: errno_class(error),
        dir,
        latency,
        last: true,
        now,
    }))
}
