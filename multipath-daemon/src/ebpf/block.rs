//! Block-layer probes: per-path counters, latency histograms and the events the kernel
//! sends when a path's completion fails or is too slow, plus the stall scan that catches
//! IO which never completes.

use std::{collections::HashMap as StdHashMap, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuValues, RingBuf},
};
use multipath_common::block::{
    BlockEvent, BlockTpOffsets, DIR_READ, DIR_WRITE, ERROR_KINDS, EV_IO_ERROR, EV_SLOW,
    LATENCY_BUCKETS, MAX_PATHS, PathLimits, PathRuleState, PathStats, RqBtfOffsets, SPAN_BYTES,
    WATCH_PROBES, WATCH_TABLE_SIZE, WATCH_TOMBSTONE, WatchEntry, watch_index,
};

use super::{
    DevT, EbpfError, EventRing, ProgramStats, TraceFormat, attach_btf, attach_tracepoint,
    devt_from_kernel, kernel_devt, take_map,
};

/// The compiled eBPF object, built by build.rs through aya-build.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/multipath-block"));

/// Which programs to attach. `Auto` is what the daemon uses; the others exist so tests
/// and benchmarks can run every variant on one kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeVariant {
    /// The cheapest this kernel allows: `tp_btf` completion with offsets from the kernel's
    /// BTF when it has them, else `Tracepoint`.
    Auto,
    /// Classic tracepoints, with the record layout built in when it is one we know.
    Tracepoint,
    /// Classic tracepoints reading every field at offsets from tracefs.
    Generic,
}

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attach {
    Tracepoint,
    Btf,
}

/// (tracepoint, program, how) for issue, complete and requeue.
type Programs = [(&'static str, &'static str, Attach); 3];

/// Picks the classic-tracepoint program for each tracepoint: a variant with the record
/// layout built in (direct context loads) when the kernel's layout is one it knows, else
/// the generic one that reads fields at the offsets the daemon hands it.
fn choose_programs(issue: &TraceFormat, complete: &TraceFormat, variant: ProbeVariant) -> Programs {
    let generic: Programs = [
        ("block_rq_issue", "block_rq_issue", Attach::Tracepoint),
        ("block_rq_complete", "block_rq_complete", Attach::Tracepoint),
        ("block_rq_requeue", "block_rq_requeue", Attach::Tracepoint),
    ];
    if variant == ProbeVariant::Generic {
        return generic;
    }
    let at = |f: &TraceFormat, name: &str, offset: u32, size: u32| {
        f.field(name)
            .is_ok_and(|x| x.offset == offset && x.size == size)
    };
    let issue_fixed = at(issue, "dev", 8, 4) && at(issue, "sector", 16, 8);
    if variant == ProbeVariant::Auto && issue_fixed {
        return [
            ("block_rq_issue", "block_rq_issue_count", Attach::Tracepoint),
            ("block_rq_complete", "block_rq_complete_btf", Attach::Btf),
            generic[2],
        ];
    }
    let issue_prog = if issue_fixed {
        "block_rq_issue_fixed"
    } else {
        "block_rq_issue"
    };
    let base = at(complete, "dev", 8, 4)
        && at(complete, "sector", 16, 8)
        && at(complete, "nr_sector", 24, 4)
        && at(complete, "error", 28, 4);
    let rwbs = complete
        .field("rwbs")
        .ok()
        .filter(|f| f.size >= 4)
        .map(|f| f.offset);
    let complete_prog = match (base, rwbs) {
        (true, Some(32)) => "block_rq_complete_rwbs32",
        (true, Some(34)) => "block_rq_complete_rwbs34",
        _ => "block_rq_complete",
    };
    [
        ("block_rq_issue", issue_prog, Attach::Tracepoint),
        ("block_rq_complete", complete_prog, Attach::Tracepoint),
        generic[2],
    ]
}

/// Offsets for the `tp_btf` completion from the kernel's BTF; an error says why the
/// classic tracepoints are used instead.
fn rq_btf_offsets() -> Result<RqBtfOffsets, super::BtfError> {
    let btf = super::Btf::kernel()?;
    let m = |s: &str, f: &str| btf.member_offset(s, f);
    let o = RqBtfOffsets {
        rq_q: m("request", "q")?,
        rq_cmd_flags: m("request", "cmd_flags")?,
        rq_sector: m("request", "__sector")?,
        rq_start_time_ns: m("request", "start_time_ns")?,
        q_disk: m("request_queue", "disk")?,
        disk_major: m("gendisk", "major")?,
        valid: 1,
        _pad: 0,
    };
    // Read in pairs by the program: they must be neighbours.
    if m("request", "io_start_time_ns")? != o.rq_start_time_ns + 8 {
        return Err(super::BtfError::NoMember {
            path: "/sys/kernel/btf/vmlinux".into(),
            strukt: "request".into(),
            member: "io_start_time_ns right after start_time_ns".into(),
        });
    }
    if m("gendisk", "first_minor")? != o.disk_major + 4 {
        return Err(super::BtfError::NoMember {
            path: "/sys/kernel/btf/vmlinux".into(),
            strukt: "gendisk".into(),
            member: "first_minor right after major".into(),
        });
    }
    Ok(o)
}

/// What counts as a sick path, per path. A zero duration or count disables that rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathThresholds {
    /// A completion slower than this is slow.
    pub latency_limit: Duration,
    /// This many slow completions within `slow_window` send a [`PathEventKind::Slow`].
    pub slow_count: u32,
    pub slow_window: Duration,
    /// IO in flight with no completion for this long sends a [`PathEventKind::Stalled`].
    pub stall_limit: Duration,
    /// Least gap between two events of one kind for one path; repeats are counted, not sent.
    pub event_gap: Duration,
}

impl Default for PathThresholds {
    /// Defaults for an iSCSI path: a healthy one answers in milliseconds, and a dead one is
    /// worth failing within a second, long before the SCSI error handler would.
    fn default() -> Self {
        Self {
            latency_limit: Duration::from_millis(500),
            slow_count: 3,
            slow_window: Duration::from_secs(5),
            stall_limit: Duration::from_secs(1),
            event_gap: Duration::from_millis(100),
        }
    }
}

impl PathThresholds {
    fn kernel(&self) -> PathLimits {
        PathLimits {
            latency_limit_ns: self.latency_limit.as_nanos() as u64,
            slow_window_ns: self.slow_window.as_nanos() as u64,
            event_gap_ns: self.event_gap.as_nanos() as u64,
            slow_count: self.slow_count,
            _pad: 0,
        }
    }
}

/// Request direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Read,
    Write,
    /// Flushes and other requests without data.
    Other,
}

impl Dir {
    fn from_kernel(d: u32) -> Self {
        match d {
            DIR_READ => Dir::Read,
            DIR_WRITE => Dir::Write,
            _ => Dir::Other,
        }
    }
}

/// Something a path did that the health engine should decide on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathEvent {
    pub dev: DevT,
    /// CLOCK_MONOTONIC when the rule tripped, ns (the kernel's bpf_ktime_get_ns clock).
    pub at_ns: u64,
    pub kind: PathEventKind,
    /// Events of this kind for this path held back by rate limiting since the last one.
    pub suppressed: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathEventKind {
    /// A request completed with an error (a negative errno, as the block layer maps it).
    IoError {
        errno: i32,
        dir: Dir,
        sector: u64,
        latency: Duration,
    },
    /// `count` completions slower than the path's limit within its window.
    Slow {
        latency: Duration,
        count: u32,
        dir: Dir,
    },
    /// IO has been in flight with no completion for `for_`.
    Stalled { inflight: u64, for_: Duration },
}

/// A path's counters summed over CPUs, with the smoothed latency.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathSnapshot {
    pub stats: PathStats,
    /// Smoothed latency of reads and writes (EWMA, 1/8), zero until the first sample.
    pub ewma: [Duration; 2],
}

impl PathSnapshot {
    /// Requests issued and not yet completed or requeued. Counted from the moment the path
    /// was watched, so IO already in flight then is never counted negative.
    pub fn inflight(&self) -> u64 {
        self.stats
            .issues
            .saturating_sub(self.stats.completions() + self.stats.requeues)
    }

    pub fn latency_histogram(&self, dir: Dir) -> &[u64; LATENCY_BUCKETS] {
        &self.stats.dir[dir as usize].latency_hist
    }

    pub fn errors_by_kind(&self) -> &[u64; ERROR_KINDS] {
        &self.stats.errors_by_kind
    }
}

struct Watched {
    slot: u32,
    table_index: u32,
    thresholds: PathThresholds,
    /// Last stall scan that saw no IO in flight (monotonic ns): a stall cannot have
    /// started before it.
    idle_seen_ns: u64,
    stall_reported: bool,
}

/// The block-layer probes, loaded and attached. Dropping this detaches them.
pub struct BlockProbes {
    // Dropping `Ebpf` detaches the programs; keep it for as long as the maps are used.
    ebpf: Ebpf,
    watch: Array<MapData, WatchEntry>,
    stats: PerCpuArray<MapData, PathStats>,
    limits: Array<MapData, PathLimits>,
    rules: Array<MapData, PathRuleState>,
    events: Option<RingBuf<MapData>>,
    /// (tracepoint, program attached to it, how).
    programs: Programs,
    /// Mirror of the kernel's watch table (dev per index), to place entries.
    table: Vec<u32>,
    paths: StdHashMap<DevT, Watched>,
    free_slots: Vec<u32>,
    nr_cpus: usize,
}

impl BlockProbes {
    /// Loads the probes with the tracepoint layout of the running kernel and attaches them.
    pub fn load() -> Result<Self, EbpfError> {
        Self::load_with(ProbeVariant::Auto)
    }

    /// As [`load`](Self::load), with the programs of `variant`.
    pub fn load_with(variant: ProbeVariant) -> Result<Self, EbpfError> {
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| EbpfError::Cpus(e))?;
        let issue = TraceFormat::read("block", "block_rq_issue")?;
        let complete = TraceFormat::read("block", "block_rq_complete")?;
        let requeue = TraceFormat::read("block", "block_rq_requeue")?;
        let data = ["sector", "nr_sector", "error", "rwbs"];
        let widths = [8, 4, 4, 8];
        let span = data
            .iter()
            .map(|f| complete.offset_of(f))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .min()
            .unwrap_or(0);
        let at = |f: &str, w: u32| complete.offset_in_span(f, w, span, SPAN_BYTES);
        let offsets = BlockTpOffsets {
            issue_dev: issue.offset_in_span("dev", 4, 0, usize::MAX)?,
            issue_sector: issue.offset_in_span("sector", 8, 0, usize::MAX)?,
            complete_dev: complete.offset_in_span("dev", 4, 0, usize::MAX)?,
            complete_sector: at(data[0], widths[0])?,
            complete_nr_sector: at(data[1], widths[1])?,
            complete_error: at(data[2], widths[2])?,
            complete_rwbs: at(data[3], widths[3])?,
            complete_span: span,
            requeue_dev: requeue.offset_in_span("dev", 4, 0, usize::MAX)?,
            valid: 1,
        };
        let mut variant = variant;
        let btf_offsets = match variant {
            ProbeVariant::Auto => match rq_btf_offsets() {
                Ok(o) => o,
                Err(e) => {
                    tracing::info!("block probes: using classic tracepoints ({e})");
                    variant = ProbeVariant::Tracepoint;
                    RqBtfOffsets::default()
                }
            },
            _ => RqBtfOffsets::default(),
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("BLOCK_TP_OFFSETS", &offsets, true)
            .override_global("RQ_BTF_OFFSETS", &btf_offsets, true)
            .load(EBPF_OBJECT)
            .map_err(EbpfError::Load)?;
        let programs = choose_programs(&issue, &complete, variant);
        for (tracepoint, name, how) in programs {
            match how {
                Attach::Tracepoint => attach_tracepoint(&mut ebpf, name, "block", tracepoint)?,
                Attach::Btf => attach_btf(&mut ebpf, name, tracepoint)?,
            }
        }
        Ok(Self {
            watch: take_map(&mut ebpf, "WATCH", Array::try_from)?,
            stats: take_map(&mut ebpf, "PATH_STATS", PerCpuArray::try_from)?,
            limits: take_map(&mut ebpf, "PATH_LIMITS", Array::try_from)?,
            rules: take_map(&mut ebpf, "PATH_RULES", Array::try_from)?,
            events: Some(take_map(&mut ebpf, "BLOCK_EVENTS", RingBuf::try_from)?),
            ebpf,
            programs,
            table: vec![0; WATCH_TABLE_SIZE as usize],
            paths: StdHashMap::new(),
            // Pop from the end: hand out slot 0 first.
            free_slots: (0..MAX_PATHS).rev().collect(),
            nr_cpus,
        })
    }

    /// Starts watching `dev` with these thresholds; its counters start from zero.
    /// Watching a device already watched only updates its thresholds.
    pub fn watch(&mut self, dev: DevT, thresholds: PathThresholds) -> Result<(), EbpfError> {
        if let Some(w) = self.paths.get_mut(&dev) {
            self.limits
                .set(w.slot, thresholds.kernel(), 0)
                .map_err(|source| EbpfError::Map {
                    map: "PATH_LIMITS",
                    source,
                })?;
            w.thresholds = thresholds;
            return Ok(());
        }
        let kdev = kernel_devt(dev);
        let home = watch_index(kdev);
        let table_index = (0..WATCH_PROBES)
            .map(|i| (home + i) % WATCH_TABLE_SIZE)
            .find(|&i| matches!(self.table[i as usize], 0 | WATCH_TOMBSTONE))
            .ok_or_else(|| EbpfError::Full {
                dev,
                why: format!(
                    "its {WATCH_PROBES} entries of the watch table are taken; \
                     more paths than this build supports hash to the same place"
                ),
            })?;
        let slot = *self.free_slots.last().ok_or_else(|| EbpfError::Full {
            dev,
            why: format!("all {MAX_PATHS} path slots are in use"),
        })?;
        // Zero the slot and set its limits before publishing the device in the watch
        // table, so the programs never see stale figures from a previous path.
        let zero = PerCpuValues::try_from(vec![PathStats::default(); self.nr_cpus])
            .map_err(EbpfError::Cpus)?;
        self.stats
            .set(slot, zero, 0)
            .map_err(|source| EbpfError::Map {
                map: "PATH_STATS",
                source,
            })?;
        self.rules
            .set(slot, PathRuleState::default(), 0)
            .map_err(|source| EbpfError::Map {
                map: "PATH_RULES",
                source,
            })?;
        self.limits
            .set(slot, thresholds.kernel(), 0)
            .map_err(|source| EbpfError::Map {
                map: "PATH_LIMITS",
                source,
            })?;
        self.watch
            .set(table_index, WatchEntry { dev: kdev, slot }, 0)
            .map_err(|source| EbpfError::Map {
                map: "WATCH",
                source,
            })?;
        self.free_slots.pop();
        self.table[table_index as usize] = kdev;
        self.paths.insert(
            dev,
            Watched {
                slot,
                table_index,
                thresholds,
                idle_seen_ns: monotonic_ns(),
                stall_reported: false,
            },
        );
        Ok(())
    }

    /// Stops watching `dev` and frees its slot. Unknown devices are ignored.
    pub fn unwatch(&mut self, dev: DevT) -> Result<(), EbpfError> {
        let Some(w) = self.paths.get(&dev) else {
            return Ok(());
        };
        self.watch
            .set(
                w.table_index,
                WatchEntry {
                    dev: WATCH_TOMBSTONE,
                    slot: 0,
                },
                0,
            )
            .map_err(|source| EbpfError::Map {
                map: "WATCH",
                source,
            })?;
        self.table[w.table_index as usize] = WATCH_TOMBSTONE;
        self.free_slots.push(w.slot);
        self.paths.remove(&dev);
        Ok(())
    }

    /// Devices watched now.
    pub fn watched(&self) -> impl Iterator<Item = DevT> + '_ {
        self.paths.keys().copied()
    }

    /// A watched path's counters summed over CPUs; `None` if it is not watched.
    pub fn snapshot(&self, dev: DevT) -> Result<Option<PathSnapshot>, EbpfError> {
        let Some(w) = self.paths.get(&dev) else {
            return Ok(None);
        };
        let per_cpu = self
            .stats
            .get(&w.slot, 0)
            .map_err(|source| EbpfError::Map {
                map: "PATH_STATS",
                source,
            })?;
        let mut stats = PathStats::default();
        for c in per_cpu.iter() {
            stats.accumulate(c);
        }
        let ewma = [
            Duration::from_nanos(stats.dir[0].ewma_ns),
            Duration::from_nanos(stats.dir[1].ewma_ns),
        ];
        Ok(Some(PathSnapshot { stats, ewma }))
    }

    /// Looks for watched paths with IO in flight and no completion for longer than their
    /// stall limit: how a silently dead path shows, since its requests never complete.
    /// Reports each stall once, and again only after the path has made progress. Call it
    /// periodically; its resolution is the calling period.
    pub fn scan_stalls(&mut self) -> Result<Vec<PathEvent>, EbpfError> {
        let now = monotonic_ns();
        let devs: Vec<DevT> = self.paths.keys().copied().collect();
        let mut out = Vec::new();
        for dev in devs {
            let Some(snap) = self.snapshot(dev)? else {
                continue;
            };
            let w = self.paths.get_mut(&dev).expect("listed above");
            let inflight = snap.inflight();
            if inflight == 0 {
                w.idle_seen_ns = now;
                w.stall_reported = false;
                continue;
            }
            let since = snap.stats.last_complete_ns.max(w.idle_seen_ns);
            let stalled = Duration::from_nanos(now.saturating_sub(since));
            if w.thresholds.stall_limit.is_zero() || stalled < w.thresholds.stall_limit {
                // Progress (or a disabled rule) re-arms the report.
                w.stall_reported = false;
                continue;
            }
            if w.stall_reported {
                continue;
            }
            w.stall_reported = true;
            out.push(PathEvent {
                dev,
                at_ns: now,
                kind: PathEventKind::Stalled {
                    inflight,
                    for_: stalled,
                },
                suppressed: 0,
            });
        }
        Ok(out)
    }

    /// Takes the kernel's event stream; it can be taken once and read from a tokio task.
    pub fn take_events(&mut self) -> Result<BlockEventStream, EbpfError> {
        let ring = self.events.take().ok_or(EbpfError::Missing {
            kind: "event stream (already taken)",
            name: "BLOCK_EVENTS",
        })?;
        Ok(BlockEventStream {
            ring: EventRing::new(ring, decode)?,
        })
    }

    /// Run count and total run time of each attached program (zero unless
    /// [`enable_run_stats`](super::enable_run_stats) is in force).
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, EbpfError> {
        let named: Vec<(&'static str, &'static str)> =
            self.programs.iter().map(|&(t, p, _)| (t, p)).collect();
        super::program_stats(&self.ebpf, &named)
    }
}

/// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel's block events, read asynchronously.
pub struct BlockEventStream {
    ring: EventRing<PathEvent>,
}

impl BlockEventStream {
    /// Waits for events and appends every one ready to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<PathEvent>) -> Result<(), EbpfError> {
        self.ring.next_batch(out).await
    }
}

fn decode(bytes: &[u8]) -> Option<PathEvent> {
    if bytes.len() < std::mem::size_of::<BlockEvent>() {
        return None;
    }
    // SAFETY: length checked; BlockEvent is plain integers; the ring does not align it.
    let e: BlockEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let dir = Dir::from_kernel(e.dir);
    let latency = Duration::from_nanos(e.latency_ns);
    let kind = match e.kind {
        EV_IO_ERROR => PathEventKind::IoError {
            errno: e.error,
            dir,
            sector: e.sector,
            latency,
        },
        EV_SLOW => PathEventKind::Slow {
            latency,
            count: e.count,
            dir,
        },
        _ => return None,
    };
    Some(PathEvent {
        dev: devt_from_kernel(e.dev),
        at_ns: e.ts_ns,
        kind,
        suppressed: e.suppressed,
    })
}
