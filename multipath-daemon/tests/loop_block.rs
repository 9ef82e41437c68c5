//! Host-kernel tests of the block probes on real loop devices (root).

mod support;

use std::{
    os::unix::fs::FileExt,
    time::{Duration, Instant},
};

use mpathd::ebpf::{BlockProbes, Dir, PathEvent, PathEventKind, PathThresholds, ProbeVariant};
use multipath_common::block::ERR_IO;
use support::{
    AlignedBuf, FsBackedLoop, LoopDev, need_root,
    slowfs::{self, Mode, SlowLoop},
};

const BS: usize = 4096;

/// Thresholds that never trip: only counting is under test.
fn quiet() -> PathThresholds {
    PathThresholds {
        latency_limit: Duration::ZERO,
        slow_count: 0,
        slow_window: Duration::ZERO,
        stall_limit: Duration::ZERO,
        event_gap: Duration::ZERO,
    }
}

/// The programs attached, in (issue, complete, requeue) order.
fn program_names(probes: &BlockProbes) -> Vec<&'static str> {
    probes
        .program_stats()
        .unwrap()
        .iter()
        .map(|p| p.program)
        .collect()
}

fn load() -> BlockProbes {
    BlockProbes::load().unwrap_or_else(|e| panic!("{e}"))
}

/// The generic programs (offsets handed in at load time) count like the layout-specific
/// ones the host picks; this is what runs on a kernel whose layout mpathd does not know.
#[test]
fn loop_generic_programs_count_and_report_errors() {
    if need_root("loop_generic_programs_count_and_report_errors") {
        return;
    }
    let failing = FsBackedLoop::new("generic");
    let mut probes =
        BlockProbes::load_with(ProbeVariant::Generic).unwrap_or_else(|e| panic!("{e}"));
    let programs = program_names(&probes);
    assert_eq!(
        programs,
        ["block_rq_issue", "block_rq_complete", "block_rq_requeue"]
    );
    let rt = runtime();
    let mut events = rt.block_on(async { probes.take_events() }).unwrap();
    probes.watch(failing.inner.dev, quiet()).unwrap();
    let f = failing.inner.open_direct();
    let mut buf = AlignedBuf::new(BS);
    for i in 0..8 {
        f.write_all_at(buf.as_slice(), i * BS as u64).unwrap();
        f.read_exact_at(buf.as_mut_slice(), i * BS as u64).unwrap();
    }
    let s = probes.snapshot(failing.inner.dev).unwrap().unwrap();
    assert_eq!(s.stats.dir[Dir::Read as usize].completions, 8, "{s:?}");
    assert_eq!(
        s.stats.dir[Dir::Write as usize].bytes,
        8 * BS as u64,
        "{s:?}"
    );
    assert_eq!(s.stats.dir[Dir::Read as usize].timed, 8, "{s:?}");
    failing.shut_down();
    f.read_exact_at(buf.as_mut_slice(), 0).unwrap_err();
    let got = events_within(&rt, &mut events, Duration::from_millis(300));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        matches!(got[0].kind, PathEventKind::IoError { errno, dir: Dir::Read, .. } if errno == -libc::EIO),
        "{got:?}"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Collects the events that arrive within `wait`.
fn events_within(
    rt: &tokio::runtime::Runtime,
    stream: &mut mpathd::ebpf::BlockEventStream,
    wait: Duration,
) -> Vec<PathEvent> {
    let mut out = Vec::new();
    rt.block_on(async {
        let _ = tokio::time::timeout(wait, async {
            loop {
                stream.next_batch(&mut out).await.unwrap();
            }
        })
        .await;
    });
    out
}

#[test]
fn loop_counts_io_per_watched_device() {
    if need_root("loop_counts_io_per_watched_device") {
        return;
    }
    let probes = load();
    let programs = program_names(&probes);
    // This kernel has BTF: the completion comes from the tp_btf program.
    assert_eq!(
        programs,
        [
            "block_rq_issue_btf",
            "block_rq_complete_btf",
            "block_rq_requeue_btf"
        ]
    );
    counts_io(probes, "watched");
}

/// The classic tracepoint programs, which kernels without BTF get, count the same.
#[test]
fn loop_classic_tracepoint_programs_count_io() {
    if need_root("loop_classic_tracepoint_programs_count_io") {
        return;
    }
    let probes = BlockProbes::load_with(ProbeVariant::Tracepoint).unwrap_or_else(|e| panic!("{e}"));
    let programs = program_names(&probes);
    assert!(programs[0].starts_with("block_rq_issue") && !programs[0].ends_with("_btf"));
    assert!(
        programs[1].starts_with("block_rq_complete_rwbs"),
        "{programs:?}"
    );
    counts_io(probes, "classic");
}

fn counts_io(mut probes: BlockProbes, tag: &str) {
    let watched = LoopDev::new(&format!("{tag}-watched"), 16);
    let other = LoopDev::new(&format!("{tag}-other"), 16);
    let rt = runtime();
    let mut events = rt.block_on(async { probes.take_events() }).unwrap();
    probes.watch(watched.dev, quiet()).unwrap();

    const WRITES: u64 = 64;
    const READS: u64 = 48;
    let mut buf = AlignedBuf::new(BS);
    let f = watched.open_direct();
    let g = other.open_direct();
    for i in 0..WRITES {
        buf.as_mut_slice().fill(i as u8);
        f.write_all_at(buf.as_slice(), i * BS as u64).unwrap();
        // IO on an unwatched device must not be counted anywhere.
        g.write_all_at(buf.as_slice(), i * BS as u64).unwrap();
    }
    for i in 0..READS {
        f.read_exact_at(buf.as_mut_slice(), i * BS as u64).unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == i as u8));
    }

    // The completion program runs on the CPU that completes the request; under load the
    // reader can get its data a moment before that CPU's counters show the completion
    // (seen once in ~20 runs with the classic programs). Wait for them, briefly.
    let t0 = std::time::Instant::now();
    let s = loop {
        let s = probes.snapshot(watched.dev).unwrap().expect("watched");
        let done: u64 = s.stats.dir.iter().map(|d| d.completions).sum();
        if done >= READS + WRITES || t0.elapsed() > Duration::from_secs(1) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let r = &s.stats.dir[Dir::Read as usize];
    let w = &s.stats.dir[Dir::Write as usize];
    assert_eq!(
        (r.completions, r.bytes),
        (READS, READS * BS as u64),
        "{s:?}"
    );
    assert_eq!(
        (w.completions, w.bytes),
        (WRITES, WRITES * BS as u64),
        "{s:?}"
    );
    assert_eq!(s.stats.issues, READS + WRITES, "{s:?}");
    assert_eq!(s.stats.errors(), 0);
    assert_eq!(s.inflight(), 0);
    // One request at a time on distinct sectors: every latency is measured.
    assert_eq!(s.stats.untimed, 0, "{s:?}");
    assert_eq!(r.timed, READS);
    assert_eq!(s.latency_histogram(Dir::Read).iter().sum::<u64>(), READS);
    assert_eq!(s.latency_histogram(Dir::Write).iter().sum::<u64>(), WRITES);
    assert!(r.latency_sum_ns > 0 && !s.ewma[0].is_zero() && !s.ewma[1].is_zero());
    assert_eq!(probes.snapshot(other.dev).unwrap(), None);
    // Thresholds off: a healthy device sends nothing.
    assert_eq!(
        events_within(&rt, &mut events, Duration::from_millis(100)),
        vec![]
    );

    // Unwatched again: further IO is not counted, and a reused slot starts at zero.
    probes.unwatch(watched.dev).unwrap();
    f.read_exact_at(buf.as_mut_slice(), 0).unwrap();
    assert_eq!(probes.snapshot(watched.dev).unwrap(), None);
    probes.watch(other.dev, quiet()).unwrap();
    g.read_exact_at(buf.as_mut_slice(), 0).unwrap();
    let s = probes.snapshot(other.dev).unwrap().expect("watched");
    assert_eq!((s.stats.completions(), s.stats.bytes()), (1, BS as u64));
}

#[test]
fn loop_io_errors_send_one_rate_limited_event_with_the_right_dev() {
    if need_root("loop_io_errors_send_one_rate_limited_event_with_the_right_dev") {
        return;
    }
    let failing = FsBackedLoop::new("eio");
    let bystander = LoopDev::new("eio-bystander", 16);
    let mut probes = load();
    let rt = runtime();
    let mut events = rt.block_on(async { probes.take_events() }).unwrap();
    let gap_long = PathThresholds {
        event_gap: Duration::from_secs(3600),
        ..quiet()
    };
    probes.watch(failing.inner.dev, gap_long).unwrap();
    probes.watch(bystander.dev, gap_long).unwrap();

    failing.shut_down();
    let f = failing.inner.open_direct();
    let mut buf = AlignedBuf::new(BS);
    const FAILS: u64 = 20;
    for i in 0..FAILS {
        let e = f
            .read_exact_at(buf.as_mut_slice(), i * BS as u64)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }
    bystander
        .open_direct()
        .read_exact_at(buf.as_mut_slice(), 0)
        .unwrap();

    let got = events_within(&rt, &mut events, Duration::from_millis(300));
    assert_eq!(got.len(), 1, "one event, the rest rate-limited: {got:?}");
    assert_eq!(got[0].dev, failing.inner.dev);
    match &got[0].kind {
        PathEventKind::IoError {
            errno, dir, sector, ..
        } => {
            assert_eq!((*errno, *dir, *sector), (-libc::EIO, Dir::Read, 0));
        }
        k => panic!("expected an IO error event, got {k:?}"),
    }
    let s = probes.snapshot(failing.inner.dev).unwrap().unwrap();
    assert_eq!(s.stats.errors(), FAILS);
    assert_eq!(s.errors_by_kind()[ERR_IO], FAILS);

    // With the gap lifted the next failure goes out at once, carrying the count held back.
    probes.watch(failing.inner.dev, quiet()).unwrap();
    f.read_exact_at(buf.as_mut_slice(), 0).unwrap_err();
    let got = events_within(&rt, &mut events, Duration::from_millis(300));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].suppressed, (FAILS - 1) as u32, "{got:?}");
}

#[test]
fn loop_hung_io_is_reported_stalled_then_slow() {
    if need_root("loop_hung_io_is_reported_stalled_then_slow") {
        return;
    }
    let mut dev = FsBackedLoop::new("stall");
    let idle = LoopDev::new("stall-idle", 16);
    let mut probes = load();
    let rt = runtime();
    let mut events = rt.block_on(async { probes.take_events() }).unwrap();
    let t = PathThresholds {
        latency_limit: Duration::from_millis(100),
        slow_count: 1,
        slow_window: Duration::from_secs(10),
        stall_limit: Duration::from_millis(200),
        event_gap: Duration::ZERO,
    };
    probes.watch(dev.inner.dev, t).unwrap();
    probes.watch(idle.dev, t).unwrap();

    dev.freeze();
    let f = dev.inner.open_direct();
    let writer = std::thread::spawn(move || {
        let mut buf = AlignedBuf::new(BS);
        buf.as_mut_slice().fill(0xa5);
        f.write_all_at(buf.as_slice(), 0)
    });
    std::thread::sleep(Duration::from_millis(50));
    let early = probes.scan_stalls().unwrap();
    assert!(early.is_empty(), "not stalled yet: {early:?}");
    std::thread::sleep(Duration::from_millis(350));
    let seen_at = std::time::Instant::now();
    let stalls = probes.scan_stalls().unwrap();
    assert_eq!(stalls.len(), 1, "only the hung device: {stalls:?}");
    assert_eq!(stalls[0].dev, dev.inner.dev);
    match stalls[0].kind {
        PathEventKind::Stalled {
            inflight, oldest, ..
        } => {
            assert_eq!(inflight, 1);
            assert!(oldest >= Duration::from_millis(200), "{oldest:?}");
        }
        ref k => panic!("{k:?}"),
    }
    assert!(
        probes.scan_stalls().unwrap().is_empty(),
        "reported once per stall"
    );

    // The write was in flight when the scan above saw it: held this much longer, its
    // latency is at least that (a fixed figure would depend on when the writer thread
    // got to issue it, which under load varies).
    std::thread::sleep(Duration::from_millis(150));
    let held = seen_at.elapsed();
    dev.thaw();
    writer.join().unwrap().unwrap();
    // The write that hung completes late: the latency rule trips with its real latency.
    let got = events_within(&rt, &mut events, Duration::from_millis(500));
    let slow: Vec<_> = got
        .iter()
        .filter(|e| matches!(e.kind, PathEventKind::Slow { .. }))
        .collect();
    assert_eq!(slow.len(), 1, "{got:?}");
    assert_eq!(slow[0].dev, dev.inner.dev);
    match slow[0].kind {
        PathEventKind::Slow {
            latency,
            count,
            dir,
        } => {
            assert!(latency >= held, "{latency:?} < {held:?}");
            assert_eq!((count, dir), (1, Dir::Write));
        }
        ref k => panic!("{k:?}"),
    }
    assert!(
        probes.scan_stalls().unwrap().is_empty(),
        "progress clears the stall"
    );
    assert_eq!(
        probes.snapshot(dev.inner.dev).unwrap().unwrap().inflight(),
        0
    );
}

/// One request held by the file system under the loop device while every other request
/// on the device completes at once: the counters would show a busy, healthy path; the
/// per-request rule reports the one that is stuck, at its age.
#[test]
fn loop_one_hung_request_is_reported_while_the_path_completes_others() {
    if need_root("loop_one_hung_request_is_reported_while_the_path_completes_others") {
        return;
    }
    let l = SlowLoop::new("hung-one", 16);
    let mut probes = load();
    let limit = Duration::from_millis(300);
    probes
        .watch(
            l.dev(),
            PathThresholds {
                stall_limit: limit,
                ..quiet()
            },
        )
        .unwrap();
    l.fs.set_mode(Mode::Hang);
    let path = l.path().to_owned();
    let issued = Instant::now();
    let hung = std::thread::spawn(move || slowfs::read_direct(&path, 8 * BS as u64));
    assert!(
        l.fs.wait_held(1, Duration::from_secs(5)),
        "the read was not held"
    );
    l.fs.set_mode(Mode::Normal);
    let mut stalled = None;
    let mut reads = 0u64;
    while stalled.is_none() && issued.elapsed() < Duration::from_secs(3) {
        // The path keeps completing IO the whole time.
        l.read_direct(0).unwrap();
        reads += 1;
        stalled = probes.scan_stalls().unwrap().pop();
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = issued.elapsed();
    let ev = stalled.expect("the hung read was not reported within 3 s");
    assert_eq!(ev.dev, l.dev());
    match ev.kind {
        PathEventKind::Stalled {
            inflight,
            oldest,
            since_completion,
        } => {
            assert_eq!(inflight, 1);
            assert!(
                oldest >= limit && oldest <= seen,
                "{oldest:?} (seen after {seen:?})"
            );
            // Reported within one epoch (67 ms) and a few scans of crossing the limit.
            assert!(seen < limit + Duration::from_millis(300), "{seen:?}");
            let since = since_completion.expect("the path completed reads");
            assert!(since < Duration::from_millis(100), "{since:?}");
        }
        k => panic!("{k:?}"),
    }
    assert!(reads >= 10, "only {reads} reads completed meanwhile");
    let s = probes.snapshot(l.dev()).unwrap().unwrap();
    assert_eq!(s.inflight(), 1, "{s:?}");
    assert!(s.stats.completions() >= reads, "{s:?}");
    assert!(probes.scan_stalls().unwrap().is_empty(), "reported once");

    l.fs.release();
    hung.join().unwrap().unwrap();
    let t0 = Instant::now();
    while probes.snapshot(l.dev()).unwrap().unwrap().inflight() != 0 {
        assert!(t0.elapsed() < Duration::from_secs(1), "still in flight");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(probes.scan_stalls().unwrap().is_empty());
}
