//! Block-layer probes: per-path counters, latency histograms, the events the kernel sends
//! when a path's completion fails or is too slow, and the stall scan that finds requests
//! older than a path's limit, one by one, even while the path completes others.

use std::{collections::HashMap as StdHashMap, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, RingBuf},
};
use multipath_common::block::{
    BlockConfig, BlockEvent, BlockTpOffsets, CLASS_LUN, CLASS_PATH, COUNTER_RING_FULL, DIR_READ,
    DIR_WRITE, ERROR_CLASSES, ERROR_KINDS, EV_IO_ERROR, EV_SLOW, EpochRing, INFLIGHT_TABLE_SIZE,
    LATENCY_BUCKETS, MAX_PATHS_LIMIT, PathCpu, PathLimits, PathRuleState, PathShared, RqBtfOffsets,
    SPAN_BYTES, STS_UNKNOWN, WATCH_PROBES, WATCH_TOMBSTONE, WatchEntry, stable_status_errno,
    watch_bits, watch_index,
};

use super::{
    DevT, EbpfError, EventRing, ProgramStats, TraceFormat, attach_btf, attach_tracepoint,
    devt_from_kernel, kernel_devt,
    mmap::MappedArray,
    stall::{Assessment, Outstanding, Summer, Tracker, epoch_of},
    take_map,
};

/// The compiled eBPF object, built by build.rs through aya-build.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/multipath-block"));

/// How many paths the probes are sized for unless told otherwise.
pub const DEFAULT_MAX_PATHS: u32 = 1024;

/// Which programs to attach. `Auto` is what the daemon uses; the others exist so tests
/// and benchmarks can run every variant on one kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeVariant {
    /// `tp_btf` programs with offsets from the kernel's BTF when it has them (per-request
    /// stall detection), else `Tracepoint`.
    Auto,
    /// Classic tracepoints, with the record layout built in when it is one we know. They
    /// see no start stamp: stalls only by the counter rule (see docs/probes.md).
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

const BTF_PROGRAMS: Programs = [
    ("block_rq_issue", "block_rq_issue_btf", Attach::Btf),
    ("block_rq_complete", "block_rq_complete_btf", Attach::Btf),
    ("block_rq_requeue", "block_rq_requeue_btf", Attach::Btf),
];

/// Picks the classic-tracepoint program for each tracepoint: a variant with the record
/// layout built in (direct context loads) when the kernel's layout is one it knows, else
/// the generic one that reads fields at the offsets the daemon hands it.
fn classic_programs(issue: &TraceFormat, complete: &TraceFormat, generic_only: bool) -> Programs {
    let generic: Programs = [
        ("block_rq_issue", "block_rq_issue", Attach::Tracepoint),
        ("block_rq_complete", "block_rq_complete", Attach::Tracepoint),
        ("block_rq_requeue", "block_rq_requeue", Attach::Tracepoint),
    ];
    if generic_only {
        return generic;
    }
    let at = |f: &TraceFormat, name: &str, offset: u32, size: u32| {
        f.field(name)
            .is_ok_and(|x| x.offset == offset && x.size == size)
    };
    let issue_prog = if at(issue, "dev", 8, 4) && at(issue, "sector", 16, 8) {
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

/// Record offsets for the classic programs, from tracefs.
fn tp_offsets(
    issue: &TraceFormat,
    complete: &TraceFormat,
    requeue: &TraceFormat,
) -> Result<BlockTpOffsets, EbpfError> {
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
    Ok(BlockTpOffsets {
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
    })
}

/// Offsets for the `tp_btf` programs from the kernel's BTF; an error says why the
/// classic tracepoints are used instead.
fn rq_btf_offsets() -> Result<RqBtfOffsets, super::BtfError> {
    let btf = super::Btf::kernel()?;
    let m = |s: &str, f: &str| btf.member_offset(s, f);
    let o = RqBtfOffsets {
        rq_q: m("request", "q")?,
        rq_cmd_flags: m("request", "cmd_flags")?,
        rq_data_len: m("request", "__data_len")?,
        rq_sector: m("request", "__sector")?,
        rq_start_time_ns: m("request", "start_time_ns")?,
        rq_state: m("request", "state")?,
        q_disk: m("request_queue", "disk")?,
        disk_major: m("gendisk", "major")?,
        valid: 1,
        _pad: 0,
    };
    // Read in pairs by the program: they must be neighbours.
    let neighbours = |strukt: &str, member: &str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(super::BtfError::NoMember {
                path: "/sys/kernel/btf/vmlinux".into(),
                strukt: strukt.into(),
                member: member.into(),
            })
        }
    };
    neighbours(
        "request",
        "io_start_time_ns right after start_time_ns",
        m("request", "io_start_time_ns")? == o.rq_start_time_ns + 8,
    )?;
    neighbours(
        "gendisk",
        "first_minor right after major",
        m("gendisk", "first_minor")? == o.disk_major + 4,
    )?;
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
    /// A request outstanding this long sends a [`PathEventKind::Stalled`].
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
    /// Flushes and other requests without data (SG_IO commands among them).
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

/// Whose fault a failed completion is, by the kernel's own rule (`blk_path_error()`);
/// the blk_status codes of each class are listed in docs/probes.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// The path or transport (timeout, transport, resource, offline): dm-multipath fails
    /// the path and retries on another.
    Path,
    /// Plain EIO (BLK_STS_IOERR) or a status newer than mpathd knows: the kernel retries
    /// it on another path, but it is as often the LUN's own; needs corroboration.
    Generic,
    /// The LUN itself (medium, critical target, no space, protection, reservation
    /// conflict, not supported): every path would return it; never a reason to fail one.
    Lun,
}

impl ErrorClass {
    fn from_kernel(c: u32) -> Self {
        match c {
            CLASS_PATH => ErrorClass::Path,
            CLASS_LUN => ErrorClass::Lun,
            _ => ErrorClass::Generic,
        }
    }

    /// Index into [`PathStats::errors_by_class`].
    pub fn index(self) -> usize {
        match self {
            ErrorClass::Path => 0,
            ErrorClass::Generic => 1,
            ErrorClass::Lun => 2,
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
        class: ErrorClass,
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
    /// A request has been outstanding for longer than the path's stall limit.
    Stalled {
        /// Requests outstanding on the path.
        inflight: u64,
        /// Age of the oldest (a lower bound, to within 67 ms).
        oldest: Duration,
        /// Since the path last completed anything; None if nothing since watched.
        since_completion: Option<Duration>,
    },
}

/// Counters of one direction of one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirStats {
    pub completions: u64,
    pub errors: u64,
    /// Bytes completed without error (reads and writes).
    pub bytes: u64,
    /// Completions whose latency was measured, and the sum of those latencies.
    pub timed: u64,
    pub latency_sum_ns: u64,
    /// Smoothed latency (EWMA, weight 1/8 per completion), reads and writes.
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

/// A path's counters since it was watched, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Indexed by `Dir as usize`.
    pub dir: [DirStats; 3],
    pub issues: u64,
    pub requeues: u64,
    /// Completions without a latency sample (no start stamp on the request).
    pub untimed: u64,
    /// CLOCK_MONOTONIC ns of the latest completion, 0 if none.
    pub last_complete_ns: u64,
    /// By errno: ERR_IO, ERR_TRANSPORT, ... of `multipath_common::block`.
    pub errors_by_kind: [u64; ERROR_KINDS],
    /// Indexed by [`ErrorClass::index`].
    pub errors_by_class: [u64; ERROR_CLASSES],
}

impl PathStats {
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

/// A path's counters and what it has outstanding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathSnapshot {
    pub stats: PathStats,
    /// Smoothed latency of reads and writes (EWMA, 1/8), zero until the first sample.
    pub ewma: [Duration; 2],
    /// Requests issued since the path was watched and not yet completed or requeued.
    pub inflight: u64,
    /// Age of the oldest of them (lower bound, to within 67 ms).
    pub oldest: Option<Duration>,
}

impl PathSnapshot {
    /// Requests issued since the path was watched and not yet completed or requeued;
    /// IO already in flight when watching started is never counted.
    pub fn inflight(&self) -> u64 {
        self.inflight
    }

    pub fn latency_histogram(&self, dir: Dir) -> &[u64; LATENCY_BUCKETS] {
        &self.stats.dir[dir as usize].latency_hist
    }

    pub fn errors_by_kind(&self) -> &[u64; ERROR_KINDS] {
        &self.stats.errors_by_kind
    }

    pub fn errors_by_class(&self, class: ErrorClass) -> u64 {
        self.stats.errors_by_class[class.index()]
    }
}

/// Kernel memory the block probes hold, as the kernel charges it (`memlock` of each map),
/// and what it is made of, to scale it to other sizes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbeMemory {
    pub max_paths: u32,
    pub possible_cpus: u32,
    /// (map, bytes) as /proc/self/fdinfo reports them.
    pub maps: Vec<(String, u64)>,
    pub total_bytes: u64,
    /// What one path costs on each CPU (the per-CPU part of its counters).
    pub per_path_per_cpu: u64,
    /// What one path costs once, whatever the CPUs (histograms, errors, limits, rules,
    /// its share of the watch table).
    pub per_path: u64,
    /// What does not depend on paths (the event ring buffer, counters, page rounding).
    pub fixed: u64,
}

impl ProbeMemory {
    /// Kernel memory for `paths` paths on `cpus` possible CPUs, by the same layout.
    pub fn estimate(&self, paths: u64, cpus: u64) -> u64 {
        self.fixed + paths * (self.per_path + cpus * self.per_path_per_cpu)
    }
}

struct Watched {
    slot: u32,
    table_index: u32,
    thresholds: PathThresholds,
    tracker: Tracker,
}

/// The block-layer probes, loaded and attached. Dropping this detaches them.
pub struct BlockProbes {
    // Dropping `Ebpf` detaches the programs; keep it for as long as the maps are used.
    ebpf: Ebpf,
    watch: Array<MapData, WatchEntry>,
    limits: Array<MapData, PathLimits>,
    rules: Array<MapData, PathRuleState>,
    counters: Array<MapData, u64>,
    cpu: MappedArray<PathCpu>,
    shared: MappedArray<PathShared>,
    events: Option<RingBuf<MapData>>,
    /// (tracepoint, program attached to it, how).
    programs: Programs,
    /// Mirror of the kernel's watch table (dev per index), to place entries.
    table: Vec<u32>,
    watch_bits: u32,
    max_paths: u32,
    paths: StdHashMap<DevT, Watched>,
    free_slots: Vec<u32>,
    /// Slots of paths no longer watched that a program may still be writing to: reused
    /// only after an RCU grace period (see `reclaim`).
    quarantine: Vec<u32>,
    nr_cpus: usize,
    memory: ProbeMemory,
    per_request: bool,
    /// Whether the last stall scan saw a request in flight on a watched path.
    busy: bool,
}

impl BlockProbes {
    /// Loads the cheapest programs this kernel allows, sized for [`DEFAULT_MAX_PATHS`].
    pub fn load() -> Result<Self, EbpfError> {
        Self::load_sized(ProbeVariant::Auto, DEFAULT_MAX_PATHS)
    }

    /// As [`load`](Self::load), with the programs of `variant`.
    pub fn load_with(variant: ProbeVariant) -> Result<Self, EbpfError> {
        Self::load_sized(variant, DEFAULT_MAX_PATHS)
    }

    /// Loads the programs of `variant` with every per-path map sized for `max_paths`
    /// paths (1 to 4096): kernel memory grows with it (see [`memory`](Self::memory)).
    pub fn load_sized(variant: ProbeVariant, max_paths: u32) -> Result<Self, EbpfError> {
        if !(1..=MAX_PATHS_LIMIT).contains(&max_paths) {
            return Err(EbpfError::Size(format!(
                "the probes can be sized for 1 to {MAX_PATHS_LIMIT} paths, not {max_paths}"
            )));
        }
        // Even, so each CPU's part of PATH_CPU (96 bytes a path) starts on a cache line.
        let max_paths = max_paths + (max_paths & 1);
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| EbpfError::Cpus(e))?;
        let btf = match variant {
            ProbeVariant::Auto => match rq_btf_offsets() {
                Ok(o) => Some(o),
                Err(e) => {
                    tracing::info!(
                        "block probes: using classic tracepoints, stalls by counters only ({e})"
                    );
                    None
                }
            },
            _ => None,
        };
        let (programs, tp) = match btf {
            Some(_) => (BTF_PROGRAMS, BlockTpOffsets::default()),
            None => {
                let issue = TraceFormat::read("block", "block_rq_issue")?;
                let complete = TraceFormat::read("block", "block_rq_complete")?;
                let requeue = TraceFormat::read("block", "block_rq_requeue")?;
                (
                    classic_programs(&issue, &complete, variant == ProbeVariant::Generic),
                    tp_offsets(&issue, &complete, &requeue)?,
                )
            }
        };
        let bits = watch_bits(max_paths);
        let config = BlockConfig {
            max_paths,
            watch_bits: bits,
            valid: 1,
            _pad: 0,
        };
        let cpu_entries = u32::try_from(nr_cpus)
            .ok()
            .and_then(|n| n.checked_mul(max_paths))
            .ok_or_else(|| EbpfError::Size(format!("{nr_cpus} CPUs x {max_paths} paths")))?;
        let btf_offsets = btf.unwrap_or_default();
        let mut ebpf = EbpfLoader::new()
            .override_global("BLOCK_CONFIG", &config, true)
            .override_global("BLOCK_TP_OFFSETS", &tp, true)
            .override_global("RQ_BTF_OFFSETS", &btf_offsets, true)
            .map_max_entries("WATCH", 1 << bits)
            .map_max_entries("PATH_CPU", cpu_entries)
            .map_max_entries("PATH_SHARED", max_paths)
            .map_max_entries("PATH_LIMITS", max_paths)
            .map_max_entries("PATH_RULES", max_paths)
            // Only the classic programs keep issue times.
            .map_max_entries(
                "INFLIGHT",
                if btf.is_some() {
                    1
                } else {
                    INFLIGHT_TABLE_SIZE
                },
            )
            .load(EBPF_OBJECT)
            .map_err(EbpfError::Load)?;
        for (tracepoint, name, how) in programs {
            match how {
                Attach::Tracepoint => attach_tracepoint(&mut ebpf, name, "block", tracepoint)?,
                Attach::Btf => attach_btf(&mut ebpf, name, tracepoint)?,
            }
        }
        let memory = measure_memory(&ebpf, max_paths, nr_cpus as u32);
        let mapped = |ebpf: &mut Ebpf, name: &'static str| {
            take_map(ebpf, name, |m| match m {
                Map::Array(d) => Ok(d),
                _ => Err(aya::maps::MapError::InvalidMapType { map_type: 0 }),
            })
        };
        let cpu = MappedArray::new(mapped(&mut ebpf, "PATH_CPU")?, cpu_entries, "PATH_CPU")?;
        let shared = MappedArray::new(mapped(&mut ebpf, "PATH_SHARED")?, max_paths, "PATH_SHARED")?;
        Ok(Self {
            watch: take_map(&mut ebpf, "WATCH", Array::try_from)?,
            limits: take_map(&mut ebpf, "PATH_LIMITS", Array::try_from)?,
            rules: take_map(&mut ebpf, "PATH_RULES", Array::try_from)?,
            counters: take_map(&mut ebpf, "BLOCK_COUNTERS", Array::try_from)?,
            events: Some(take_map(&mut ebpf, "BLOCK_EVENTS", RingBuf::try_from)?),
            cpu,
            shared,
            ebpf,
            programs,
            table: vec![0; 1 << bits],
            watch_bits: bits,
            max_paths,
            paths: StdHashMap::new(),
            // Pop from the end: hand out slot 0 first.
            free_slots: (0..max_paths).rev().collect(),
            quarantine: Vec::new(),
            nr_cpus,
            memory,
            per_request: btf.is_some(),
            busy: false,
        })
    }

    /// True when the programs see each request's start stamp (the `tp_btf` programs):
    /// stalls are found per request. False with the classic tracepoints: by counters.
    pub fn per_request(&self) -> bool {
        self.per_request
    }

    /// Most paths these probes can watch at once.
    pub fn max_paths(&self) -> u32 {
        self.max_paths
    }

    /// Starts watching `dev` with these thresholds; its counters start from zero, and
    /// requests already in flight are never counted. Watching a device already watched
    /// only updates its thresholds.
    pub fn watch(&mut self, dev: DevT, thresholds: PathThresholds) -> Result<(), EbpfError> {
        if let Some(w) = self.paths.get_mut(&dev) {
            if w.thresholds == thresholds {
                return Ok(());
            }
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
        let size = 1u32 << self.watch_bits;
        let home = watch_index(kdev, self.watch_bits);
        let table_index = (0..WATCH_PROBES)
            .map(|i| (home + i) % size)
            .find(|&i| matches!(self.table[i as usize], 0 | WATCH_TOMBSTONE))
            .ok_or_else(|| EbpfError::Full {
                dev,
                why: format!(
                    "its {WATCH_PROBES} entries of the watch table are taken by other paths; \
                     load the probes sized for more paths"
                ),
            })?;
        if self.free_slots.is_empty() {
            self.reclaim();
        }
        let slot = *self.free_slots.last().ok_or_else(|| EbpfError::Full {
            dev,
            why: format!(
                "all {} path slots are in use; load the probes sized for more paths",
                self.max_paths
            ),
        })?;
        // Zero the slot and set its limits before publishing the device in the watch
        // table, so the programs never see stale figures from a previous path. The rings
        // start at the current epoch: nothing older is counted in them.
        let now = monotonic_ns();
        let ring = EpochRing {
            epoch: epoch_of(now),
            ..Default::default()
        };
        let fresh = PathCpu {
            issued: ring,
            issues: 0,
            done: ring,
        };
        for cpu in 0..self.nr_cpus {
            self.cpu.write(self.cpu_index(cpu, slot), fresh);
        }
        self.shared.write(slot as usize, PathShared::default());
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
            .set(
                table_index,
                WatchEntry {
                    dev: kdev,
                    slot,
                    since_ns: now,
                },
                0,
            )
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
                tracker: Tracker::new(now),
            },
        );
        Ok(())
    }

    /// Stops watching `dev`. Unknown devices are ignored.
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
                    since_ns: 0,
                },
                0,
            )
            .map_err(|source| EbpfError::Map {
                map: "WATCH",
                source,
            })?;
        self.table[w.table_index as usize] = WATCH_TOMBSTONE;
        self.quarantine.push(w.slot);
        self.paths.remove(&dev);
        Ok(())
    }

    /// Makes quarantined slots reusable. A program that looked the device up just before
    /// it was unwatched may still be writing to its slot; every such program has finished
    /// after an RCU grace period, which membarrier(MEMBARRIER_CMD_GLOBAL) waits for (a
    /// few ms; it is called only when no free slot is left).
    fn reclaim(&mut self) {
        if self.quarantine.is_empty() {
            return;
        }
        const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
        // SAFETY: membarrier takes no pointers.
        let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
        if r != 0 {
            // Refused on nohz_full systems: programs run for microseconds, so a pause
            // far longer than that stands in for the grace period.
            std::thread::sleep(Duration::from_millis(100));
        }
        self.free_slots.append(&mut self.quarantine);
    }

    fn cpu_index(&self, cpu: usize, slot: u32) -> usize {
        cpu * self.max_paths as usize + slot as usize
    }

    /// Devices watched now.
    pub fn watched(&self) -> impl Iterator<Item = DevT> + '_ {
        self.paths.keys().copied()
    }

    /// The thresholds `dev` is watched with.
    pub fn thresholds(&self, dev: DevT) -> Option<PathThresholds> {
        self.paths.get(&dev).map(|w| w.thresholds)
    }

    /// Requests outstanding on `slot`, summed over CPUs, and the instant read.
    fn outstanding(&self, slot: u32) -> (Outstanding, u64) {
        let mut rings = Vec::with_capacity(2 * self.nr_cpus);
        for cpu in 0..self.nr_cpus {
            let p = self.cpu.at(self.cpu_index(cpu, slot));
            // SAFETY: p points into the mapping; the fields are read in place.
            unsafe {
                rings.push((read_ring(&raw const (*p).issued), true));
                rings.push((read_ring(&raw const (*p).done), false));
            }
        }
        let sh = self.shared.at(slot as usize);
        // SAFETY: as above; each field is an aligned integer or array of them.
        let (requeued, old, unstamped) = unsafe {
            (
                std::ptr::read_volatile(&raw const (*sh).requeued),
                std::ptr::read_volatile(&raw const (*sh).requeued_old),
                std::ptr::read_volatile(&raw const (*sh).requeued_unstamped),
            )
        };
        // After the reads: no ring can be newer than this instant.
        let now = monotonic_ns();
        let mut sum = Summer::new(epoch_of(now));
        for (r, issued) in &rings {
            sum.ring(r, *issued);
        }
        sum.requeues(&requeued, old, unstamped);
        (sum.finish(), now)
    }

    fn last_complete_ns(&self, slot: u32) -> u64 {
        let sh = self.shared.at(slot as usize);
        // SAFETY: an aligned u64 in the mapping.
        unsafe { std::ptr::read_volatile(&raw const (*sh).last_complete_ns) }
    }

    /// A watched path's counters; `None` if it is not watched.
    pub fn snapshot(&self, dev: DevT) -> Result<Option<PathSnapshot>, EbpfError> {
        let Some(w) = self.paths.get(&dev) else {
            return Ok(None);
        };
        let mut stats = PathStats::default();
        for cpu in 0..self.nr_cpus {
            let p = self.cpu.at(self.cpu_index(cpu, w.slot));
            // SAFETY: an aligned u64 in the mapping.
            stats.issues += unsafe { std::ptr::read_volatile(&raw const (*p).issues) };
        }
        let sh = self.shared.read(w.slot as usize);
        for (d, out) in stats.dir.iter_mut().enumerate() {
            let hist = sh.latency_hist[d];
            let timed: u64 = hist.iter().sum();
            *out = DirStats {
                completions: timed + sh.untimed[d],
                errors: sh.errors[d],
                bytes: sh.bytes.get(d).copied().unwrap_or(0),
                timed,
                latency_sum_ns: sh.latency_sum_ns[d],
                ewma_ns: sh.ewma_ns.get(d).copied().unwrap_or(0),
                latency_hist: hist,
            };
        }
        stats.requeues = sh.requeues;
        stats.untimed = sh.untimed.iter().sum();
        stats.last_complete_ns = sh.last_complete_ns;
        stats.errors_by_kind = sh.errors_by_kind;
        stats.errors_by_class = sh.errors_by_class;
        let (o, now) = self.outstanding(w.slot);
        let Assessment { inflight, oldest } = w.tracker.peek(&o, now, sh.last_complete_ns);
        Ok(Some(PathSnapshot {
            ewma: [
                Duration::from_nanos(sh.ewma_ns[0]),
                Duration::from_nanos(sh.ewma_ns[1]),
            ],
            stats,
            inflight,
            oldest,
        }))
    }

    /// Looks for watched paths with a request outstanding for longer than their stall
    /// limit: a silently dead path, or one request stuck on a path that completes the
    /// rest. Reports each stall once, and again only after no request is over the limit.
    /// Call it periodically (at most a second apart: the kernel keeps request ages for
    /// 1.07 s, the daemon for longer); its resolution is the calling period.
    pub fn scan_stalls(&mut self) -> Result<Vec<PathEvent>, EbpfError> {
        let mut out = Vec::new();
        let devs: Vec<(DevT, u32)> = self.paths.iter().map(|(d, w)| (*d, w.slot)).collect();
        self.busy = false;
        for (dev, slot) in devs {
            let (o, now) = self.outstanding(slot);
            let last = self.last_complete_ns(slot);
            let w = self.paths.get_mut(&dev).expect("listed above");
            let a = w.tracker.update(&o, now, last);
            self.busy |= a.inflight > 0;
            if w.tracker.newly_stalled(&a, w.thresholds.stall_limit) {
                out.push(PathEvent {
                    dev,
                    at_ns: now,
                    kind: PathEventKind::Stalled {
                        inflight: a.inflight,
                        oldest: a.oldest.unwrap_or_default(),
                        since_completion: (last != 0)
                            .then(|| Duration::from_nanos(now.saturating_sub(last))),
                    },
                    suppressed: 0,
                });
            }
        }
        Ok(out)
    }

    /// Whether the last [`scan_stalls`](Self::scan_stalls) saw any request in flight on a
    /// watched path: with none, nothing can stall before the next request is issued.
    pub fn busy(&self) -> bool {
        self.busy
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

    /// Events the kernel could not put in the ring buffer because it was full (each is
    /// also counted in the `suppressed` of the next event of its path and kind).
    pub fn ring_full(&self) -> u64 {
        self.counters.get(&COUNTER_RING_FULL, 0).unwrap_or(0)
    }

    /// Run count, total run time and skipped runs of each attached program (run time is
    /// zero unless [`enable_run_stats`](super::enable_run_stats) is in force).
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, EbpfError> {
        let named: Vec<(&'static str, &'static str)> =
            self.programs.iter().map(|&(t, p, _)| (t, p)).collect();
        super::program_stats(&self.ebpf, &named)
    }

    /// The kernel memory these probes hold and its make-up.
    pub fn memory(&self) -> &ProbeMemory {
        &self.memory
    }
}

/// A consistent copy of one ring: re-read while the kernel is moving it (`seq` odd or
/// changed), which takes it a few nanoseconds.
///
/// # Safety
/// `p` points to an `EpochRing` in the mapping.
unsafe fn read_ring(p: *const EpochRing) -> EpochRing {
    use std::sync::atomic::{Ordering, compiler_fence};
    for _ in 0..10_000 {
        // SAFETY: per the caller.
        let (s1, r, s2) = unsafe {
            let s1 = std::ptr::read_volatile(&raw const (*p).seq);
            compiler_fence(Ordering::Acquire);
            let r = std::ptr::read_volatile(p);
            compiler_fence(Ordering::Acquire);
            (s1, r, std::ptr::read_volatile(&raw const (*p).seq))
        };
        if s1 & 1 == 0 && s1 == s2 {
            return r;
        }
        std::hint::spin_loop();
    }
    // A program cannot stay inside the move; if it ever seemed to, a torn copy only
    // skews one reading.
    // SAFETY: per the caller.
    unsafe { std::ptr::read_volatile(p) }
}

/// Each map's memory as the kernel charges it (`memlock` in the map fd's fdinfo), and
/// the per-path and per-CPU parts by layout.
fn measure_memory(ebpf: &Ebpf, max_paths: u32, cpus: u32) -> ProbeMemory {
    use std::os::fd::{AsFd, AsRawFd};
    let mut maps = Vec::new();
    for (name, map) in ebpf.maps() {
        let data = match map {
            Map::Array(d) | Map::RingBuf(d) | Map::PerCpuArray(d) | Map::HashMap(d) => d,
            _ => continue,
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let bytes = fdinfo_field(fd, "memlock").unwrap_or(0);
        maps.push((name.to_owned(), bytes));
    }
    maps.sort();
    let total_bytes: u64 = maps.iter().map(|(_, b)| b).sum();
    let size = |s: usize| s as u64;
    let per_path_per_cpu = size(std::mem::size_of::<PathCpu>());
    let watch_share = u64::from(multipath_common::block::WATCH_SLOTS_PER_PATH)
        * size(std::mem::size_of::<WatchEntry>());
    let per_path = size(std::mem::size_of::<PathShared>())
        + size(std::mem::size_of::<PathLimits>())
        + size(std::mem::size_of::<PathRuleState>())
        + watch_share;
    let scaled = u64::from(max_paths) * (per_path + u64::from(cpus) * per_path_per_cpu);
    ProbeMemory {
        max_paths,
        possible_cpus: cpus,
        maps,
        total_bytes,
        per_path_per_cpu,
        per_path,
        fixed: total_bytes.saturating_sub(scaled),
    }
}

/// A numeric field of /proc/self/fdinfo/FD (bpf maps and programs list their memory and
/// run statistics there).
pub(crate) fn fdinfo_field(fd: i32, field: &str) -> Option<u64> {
    fdinfo_value(&fdinfo(fd)?, field)
}

/// The whole of /proc/self/fdinfo/FD, to read several fields from one read.
pub(crate) fn fdinfo(fd: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()
}

/// A numeric field of an fdinfo text already read.
pub(crate) fn fdinfo_value(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == field).then(|| v.trim().parse().ok())?
    })
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

/// Negative errno of a `blk_status_t` on the running kernel. Statuses 0..=12 are the same
/// everywhere; above that the numbers moved when BLK_STS_ZONE_RESOURCE (14) went away in
/// 6.10, and BLK_STS_INVAL (19) came in 6.11.
pub(crate) fn status_errno(status: u8, kernel: (u32, u32)) -> i32 {
    let stable = stable_status_errno(status);
    if stable != 0 || status == 0 {
        return stable;
    }
    const EBUSY: i32 = 16;
    const ETOOMANYREFS: i32 = 109;
    const EOVERFLOW: i32 = 75;
    const ENODEV: i32 = 19;
    const ETIME: i32 = 62;
    const EINVAL: i32 = 22;
    let e = if kernel < (6, 10) {
        match status {
            13 | 14 => EBUSY,
            15 => ETOOMANYREFS,
            16 => EOVERFLOW,
            17 => ENODEV,
            18 => ETIME,
            _ => 5,
        }
    } else {
        match status {
            13 => EBUSY,
            14 => ETOOMANYREFS,
            15 => EOVERFLOW,
            16 => ENODEV,
            17 => ETIME,
            19 => EINVAL,
            _ => 5,
        }
    };
    -e
}

/// (major, minor) of the running kernel, from uname.
fn kernel_version() -> (u32, u32) {
    static VERSION: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *VERSION.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut it = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    })
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
            errno: match (e.error, e.status) {
                (0, s) if s != STS_UNKNOWN => status_errno(s as u8, kernel_version()),
                (0, _) => -libc::EIO,
                (errno, _) => errno,
            },
            class: ErrorClass::from_kernel(e.class),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errnos_follow_the_kernel_version() {
        assert_eq!(status_errno(STS_IOERR_TEST, (6, 1)), -libc::EIO);
        assert_eq!(status_errno(4, (6, 18)), -libc::ENOLINK);
        assert_eq!(status_errno(17, (6, 1)), -libc::ENODEV); // OFFLINE before 6.10
        assert_eq!(status_errno(16, (6, 18)), -libc::ENODEV); // OFFLINE since 6.10
        assert_eq!(status_errno(17, (6, 18)), -libc::ETIME);
        assert_eq!(status_errno(19, (6, 18)), -libc::EINVAL);
        assert_eq!(status_errno(42, (6, 18)), -libc::EIO);
    }
    const STS_IOERR_TEST: u8 = multipath_common::block::STS_IOERR;

    #[test]
    fn decodes_an_io_error_with_its_class() {
        let e = BlockEvent {
            ts_ns: 7,
            dev: multipath_common::block::kernel_dev(8, 16),
            kind: EV_IO_ERROR,
            error: 0,
            dir: DIR_READ,
            latency_ns: 1000,
            count: 0,
            suppressed: 2,
            sector: 64,
            status: 16,
            class: CLASS_PATH,
        };
        // SAFETY: BlockEvent is plain integers.
        let bytes: [u8; std::mem::size_of::<BlockEvent>()] = unsafe { std::mem::transmute(e) };
        let ev = decode(&bytes).unwrap();
        assert_eq!(ev.dev, DevT::new(8, 16));
        assert_eq!(ev.suppressed, 2);
        match ev.kind {
            PathEventKind::IoError {
                errno,
                class,
                dir,
                sector,
                ..
            } => {
                assert_eq!(
                    errno,
                    status_errno(16, kernel_version()),
                    "looked up for this kernel"
                );
                assert_eq!((class, dir, sector), (ErrorClass::Path, Dir::Read, 64));
            }
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn memory_estimate_scales_by_paths_and_cpus() {
        let m = ProbeMemory {
            max_paths: 2,
            possible_cpus: 2,
            maps: vec![],
            total_bytes: 0,
            per_path_per_cpu: 96,
            per_path: 1000,
            fixed: 300_000,
        };
        assert_eq!(m.estimate(1024, 64), 300_000 + 1024 * (1000 + 64 * 96));
    }
}
