//! The daemon's side of the in-kernel probes: load, configure, attach, read.
//!
//! This is the only module that talks to aya. The rest of the daemon sees typed values
//! ([`DevT`], [`PathSnapshot`], [`PathEvent`]) and errors that name their cause.

mod block;
mod btf;
mod mmap;
mod stall;
mod tcp;
mod tracefs;
mod watcher;

pub use block::{
    BlockEventStream, BlockProbes, DEFAULT_MAX_PATHS, Dir, DirStats, ErrorClass, PathEvent,
    PathEventKind, PathSnapshot, PathStats, PathThresholds, ProbeMemory, ProbeVariant,
    monotonic_ns,
};
pub use btf::{Btf, BtfError};
pub use tcp::{
    ConnEvent, ConnEventKind, ConnSnapshot, ConnThresholds, ISCSI_PORT, TcpEventStream, TcpProbes,
    TcpVariant,
};
pub use tracefs::{TraceField, TraceFormat, TraceFormatError};
pub use watcher::{
    LagStats, PathReading, ProbeEvent, WatchSpec, Watcher, WatcherOptions, WatcherStats,
};

use multipath_common::block::{kernel_dev, split_kernel_dev};

pub use crate::model::{Conn, DevT};

/// The kernel's internal encoding of a device number, as block tracepoints carry it.
pub(crate) fn kernel_devt(d: DevT) -> u32 {
    kernel_dev(d.major, d.minor)
}

pub(crate) fn devt_from_kernel(dev: u32) -> DevT {
    let (major, minor) = split_kernel_dev(dev);
    DevT::new(major, minor)
}

/// Why the probes could not be set up or used. Each message names the cause.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(transparent)]
    TraceFormat(#[from] TraceFormatError),
    #[error(
        "loading the eBPF object failed: {0}\n\
         mpathd needs root (CAP_BPF and CAP_PERFMON) and a kernel with BPF and BTF enabled"
    )]
    Load(#[source] aya::EbpfError),
    #[error(
        "the eBPF object has no {kind} named {name}: the daemon and its probes are out of step, rebuild mpathd"
    )]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("the eBPF program {program} failed to {step}: {source}")]
    Program {
        program: &'static str,
        step: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot read the number of possible CPUs from /sys/devices/system/cpu/possible: {0}")]
    Cpus(#[source] std::io::Error),
    #[error("cannot watch {dev}: {why}")]
    Full { dev: DevT, why: String },
    #[error("reading eBPF events: {0}")]
    Events(#[source] std::io::Error),
    #[error("enabling kernel BPF run-time statistics: {0}")]
    Stats(#[source] std::io::Error),
    #[error("sizing the probes: {0}")]
    Size(String),
    #[error(
        "mapping eBPF map {map} into memory: {source}; the kernel needs BPF_F_MMAPABLE \
         arrays (Linux 5.5 or newer)"
    )]
    Mmap {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the probe task has stopped: {0}")]
    Stopped(String),
    #[error("starting the probes' thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(
        "{dev} is listed more than once in the watch set (again as {name}); the first entry is used"
    )]
    Duplicate { dev: DevT, name: String },
    #[error("the path's iSCSI connection {conn} is not watched: {why}")]
    Conn { conn: String, why: String },
}

/// Run-time statistics of one program, from the kernel (run count and time need stats
/// enabled; skipped runs are always counted).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProgramStats {
    pub tracepoint: &'static str,
    pub program: &'static str,
    pub run_count: u64,
    pub run_time_ns: u64,
    /// Runs the kernel skipped because the program was already running on that CPU (an
    /// interrupt's completion inside another's): each one is a request counted on one
    /// side only (see docs/probes.md).
    pub recursion_misses: u64,
}

/// Turns on the kernel's per-program run-time accounting while the returned fd lives
/// (benchmarks; it costs a little on every program run).
pub fn enable_run_stats() -> Result<std::os::fd::OwnedFd, EbpfError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| EbpfError::Stats(std::io::Error::other(e.to_string())))
}

/// Run count and total run time of each (tracepoint, program) attached from `ebpf`.
fn program_stats(
    ebpf: &aya::Ebpf,
    programs: &[(&'static str, &'static str)],
) -> Result<Vec<ProgramStats>, EbpfError> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut out = Vec::new();
    for &(tracepoint, name) in programs {
        let fd = ebpf
            .program(name)
            .ok_or(EbpfError::Missing {
                kind: "program",
                name,
            })?
            .fd()
            .map_err(|source| EbpfError::Program {
                program: name,
                step: "report its statistics".into(),
                source,
            })?
            .as_fd()
            .as_raw_fd();
        // fdinfo has all three, recursion_misses among them (ProgramInfo lacks it): one
        // read for the three.
        let text = block::fdinfo(fd).unwrap_or_default();
        let field = |f| block::fdinfo_value(&text, f).unwrap_or(0);
        out.push(ProgramStats {
            tracepoint,
            program: name,
            run_count: field("run_cnt"),
            run_time_ns: field("run_time_ns"),
            recursion_misses: field("recursion_misses"),
        });
    }
    Ok(out)
}

/// Program `name` of `ebpf` as the program type `T`.
fn typed_program<'a, T>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
    step: &str,
) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EbpfError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| EbpfError::Program {
            program: name,
            step: step.into(),
            source,
        })
}

/// Loads program `name` from `ebpf` (the verifier runs here) and attaches it to the
/// tracepoint `category:tracepoint`.
fn attach_tracepoint(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    category: &str,
    tracepoint: &str,
) -> Result<(), EbpfError> {
    let program: &mut aya::programs::TracePoint = typed_program(ebpf, name, "be a tracepoint")?;
    program.load().map_err(|source| EbpfError::Program {
        program: name,
        step: "load (verifier)".into(),
        source,
    })?;
    program
        .attach(category, tracepoint)
        .map_err(|source| EbpfError::Program {
            program: name,
            step: format!("attach to {category}:{tracepoint}"),
            source,
        })?;
    Ok(())
}

/// Takes map `name` out of `ebpf` and converts it to its typed form.
fn take_map<T>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, EbpfError> {
    let m = ebpf
        .take_map(name)
        .ok_or(EbpfError::Missing { kind: "map", name })?;
    convert(m).map_err(|source| EbpfError::Map { map: name, source })
}

struct RingFd(aya::maps::RingBuf<aya::maps::MapData>);

impl std::os::fd::AsRawFd for RingFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

/// A ring buffer of events read with tokio; `decode` turns each record into a `T`.
struct EventRing<T> {
    ring: tokio::io::unix::AsyncFd<RingFd>,
    decode: fn(&[u8]) -> Option<T>,
}

impl<T> EventRing<T> {
    fn new(
        ring: aya::maps::RingBuf<aya::maps::MapData>,
        decode: fn(&[u8]) -> Option<T>,
    ) -> Result<Self, EbpfError> {
        // SAFETY: the ring buffer's fd is owned by `RingFd` and lives as long as it.
        let ring = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                RingFd(ring),
                tokio::io::Interest::READABLE,
            )
        }
        .map_err(|e| EbpfError::Events(e.into()))?;
        Ok(Self { ring, decode })
    }

    /// Waits for records and appends every one ready to `out`.
    async fn next_batch(&mut self, out: &mut Vec<T>) -> Result<(), EbpfError> {
        loop {
            let mut guard = self.ring.readable_mut().await.map_err(EbpfError::Events)?;
            let ring = &mut guard.get_inner_mut().0;
            let before = out.len();
            while let Some(item) = ring.next() {
                out.extend((self.decode)(&item));
            }
            guard.clear_ready();
            if out.len() > before {
                return Ok(());
            }
        }
    }
}

/// The kernel's BTF as aya parses it, read once per process: each `tp_btf` program needs
/// it, and one parse of vmlinux's BTF takes 84 ms here in a debug build, seconds under
/// emulation (loading the probes took over a minute in the lab at 128 LUNs).
fn kernel_btf() -> Result<&'static aya::Btf, aya::BtfError> {
    static BTF: std::sync::OnceLock<aya::Btf> = std::sync::OnceLock::new();
    if let Some(b) = BTF.get() {
        return Ok(b);
    }
    // Two threads may both parse the first time; one result is kept.
    let b = aya::Btf::from_sys_fs()?;
    Ok(BTF.get_or_init(|| b))
}

/// Loads a `tp_btf` program against the kernel's BTF and attaches it.
fn attach_btf(ebpf: &mut aya::Ebpf, name: &'static str, tracepoint: &str) -> Result<(), EbpfError> {
    let btf = kernel_btf().map_err(|e| EbpfError::Program {
        program: name,
        step: "read the kernel's BTF".into(),
        source: aya::programs::ProgramError::Btf(e),
    })?;
    let p: &mut aya::programs::BtfTracePoint = typed_program(ebpf, name, "be a BTF tracepoint")?;
    p.load(tracepoint, btf)
        .map_err(|source| EbpfError::Program {
            program: name,
            step: "load (verifier)".into(),
            source,
        })?;
    p.attach().map_err(|source| EbpfError::Program {
        program: name,
        step: format!("attach to tp_btf/{tracepoint}"),
        source,
    })?;
    Ok(())
}
