//! Host-kernel tests of the block probes on real loop devices (root).

mod support;

use std::{
    os::unix::fs::FileExt,
    time::{Duration, Instant},
};

use mpathd::ebpf::{
    BlockProbes, Dir, EbpfError, ErrorClass, PathEvent, PathEventKind, PathThresholds, ProbeEvent,
    ProbeVariant, WatchSpec, Watcher, WatcherOptions,
};
use multipath_common::block::ERR_IO;
use support::{
    AlignedBuf, FsBackedLoop, LoopDev, TmpfsLoop, need_root,
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
    // A completion the kernel skips because a BPF program already runs on that CPU (the
    // other tests' probes, in parallel) is counted as a miss, not lost silently.
    let misses = |p: &BlockProbes| -> u64 {
        p.program_stats()
            .unwrap()
            .iter()
            .map(|s| s.recursion_misses)
            .sum()
    };
    let misses_before = misses(&probes);

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
            errno,
            class,
            dir,
            sector,
            ..
        } => {
            assert_eq!((*errno, *dir, *sector), (-libc::EIO, Dir::Read, 0));
            // A shut-down file system under the loop device fails reads with EIO, which
            // the loop driver completes as BLK_STS_IOERR: the Generic class.
            assert_eq!(*class, ErrorClass::Generic);
        }
        k => panic!("expected an IO error event, got {k:?}"),
    }
    let s = probes.snapshot(failing.inner.dev).unwrap().unwrap();
    let skipped = misses(&probes) - misses_before;
    let counted = s.stats.errors();
    assert!(
        counted <= FAILS && counted + skipped >= FAILS,
        "{counted} errors counted, {skipped} runs skipped by the kernel, {FAILS} failed"
    );
    assert_eq!(s.errors_by_kind()[ERR_IO], counted);
    assert_eq!(s.errors_by_class(ErrorClass::Generic), counted);
    assert_eq!(s.errors_by_class(ErrorClass::Path), 0);
    assert_eq!(s.errors_by_class(ErrorClass::Lun), 0);

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

/// A request in flight when watching starts completes after it; a request issued later
/// hangs. Counting completions against issues would cancel the two (one issue, one
/// completion: nothing in flight) and never report the stall.
#[test]
fn loop_io_in_flight_when_watching_starts_does_not_mask_a_later_stall() {
    if need_root("loop_io_in_flight_when_watching_starts_does_not_mask_a_later_stall") {
        return;
    }
    let l = SlowLoop::new("prewatch", 16);
    let mut probes = load();
    let limit = Duration::from_millis(300);
    l.fs.set_mode(Mode::Hang);
    let path = l.path().to_owned();
    let before = std::thread::spawn(move || slowfs::read_direct(&path, 0));
    assert!(l.fs.wait_held(1, Duration::from_secs(5)));
    probes
        .watch(
            l.dev(),
            PathThresholds {
                stall_limit: limit,
                ..quiet()
            },
        )
        .unwrap();
    // Completes after watching started: counted as a completion, not against an issue.
    l.fs.release();
    before.join().unwrap().unwrap();
    let s = probes.snapshot(l.dev()).unwrap().unwrap();
    assert_eq!((s.inflight(), s.stats.issues), (0, 0), "{s:?}");
    assert_eq!(s.stats.completions(), 1, "{s:?}");

    l.fs.set_mode(Mode::Hang);
    let path = l.path().to_owned();
    let issued = Instant::now();
    let later = std::thread::spawn(move || slowfs::read_direct(&path, 4 * BS as u64));
    assert!(l.fs.wait_held(1, Duration::from_secs(5)));
    let mut stalled = None;
    while stalled.is_none() && issued.elapsed() < Duration::from_secs(3) {
        stalled = probes.scan_stalls().unwrap().pop();
        std::thread::sleep(Duration::from_millis(20));
    }
    let ev = stalled.expect("the later hung read was not reported within 3 s");
    match ev.kind {
        PathEventKind::Stalled {
            inflight, oldest, ..
        } => {
            assert_eq!(inflight, 1);
            assert!(oldest >= limit, "{oldest:?}");
        }
        k => panic!("{k:?}"),
    }
    let s = probes.snapshot(l.dev()).unwrap().unwrap();
    assert_eq!((s.inflight(), s.stats.issues), (1, 1), "{s:?}");
    l.fs.release();
    later.join().unwrap().unwrap();
}

/// A write the file under the loop device has no room for: the loop driver completes it
/// with BLK_STS_NOSPC, which the LUN would return on every path (the Lun class).
#[test]
fn loop_no_space_is_a_lun_error() {
    if need_root("loop_no_space_is_a_lun_error") {
        return;
    }
    let full = TmpfsLoop::new("nospc", 1, 8);
    let mut probes = load();
    let rt = runtime();
    let mut events = rt.block_on(async { probes.take_events() }).unwrap();
    probes.watch(full.dev, quiet()).unwrap();
    let f = full.open_direct();
    let mut buf = AlignedBuf::new(BS);
    buf.as_mut_slice().fill(0x5a);
    let mut failed = 0u64;
    for i in 0..(4 << 20) / BS as u64 {
        if let Err(e) = f.write_all_at(buf.as_slice(), i * BS as u64) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            failed += 1;
            if failed == 3 {
                break;
            }
        }
    }
    assert_eq!(failed, 3, "the 1 MiB file system never filled up");
    let got = events_within(&rt, &mut events, Duration::from_millis(300));
    assert!(
        got.iter().any(|e| matches!(
            e.kind,
            PathEventKind::IoError {
                errno,
                class: ErrorClass::Lun,
                dir: Dir::Write,
                ..
            } if errno == -libc::ENOSPC
        )),
        "{got:?}"
    );
    let s = probes.snapshot(full.dev).unwrap().unwrap();
    assert_eq!(s.errors_by_class(ErrorClass::Lun), failed, "{s:?}");
    assert_eq!(s.errors_by_class(ErrorClass::Path), 0);
}

fn spec(name: &str, dev: mpathd::ebpf::DevT, path: PathThresholds) -> WatchSpec {
    WatchSpec {
        dev,
        name: name.to_owned(),
        conn: None,
        path,
        tcp: Default::default(),
    }
}

/// The watcher the daemon and `mpathd probe` share: set() adds, removes and updates;
/// events and stalls arrive on the receiver; readings() gives every path's counters.
#[test]
fn loop_watcher_applies_watch_sets_and_delivers_events() {
    if need_root("loop_watcher_applies_watch_sets_and_delivers_events") {
        return;
    }
    let failing = FsBackedLoop::new("watcher-eio");
    let hung = SlowLoop::new("watcher-hung", 16);
    let other = LoopDev::new("watcher-other", 16);
    let rt = runtime();
    rt.block_on(async {
        let opts = WatcherOptions {
            scan_interval: Duration::from_millis(20),
            tcp: false,
            max_paths: 2,
            ..Default::default()
        };
        let (w, mut events) = Watcher::start(opts).unwrap_or_else(|e| panic!("{e}"));
        let gap_long = PathThresholds {
            event_gap: Duration::from_secs(3600),
            ..quiet()
        };
        let stall = PathThresholds {
            stall_limit: Duration::from_millis(200),
            ..quiet()
        };
        // Two paths fit; a third does not (sized for 2), and a duplicate is refused.
        let failed = w
            .set(vec![
                spec("eio", failing.inner.dev, gap_long),
                spec("hung", hung.dev(), stall),
                spec("eio-again", failing.inner.dev, quiet()),
                spec("other", other.dev, quiet()),
            ])
            .await;
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert!(
            matches!(&failed[0], (d, EbpfError::Duplicate { .. }) if *d == failing.inner.dev),
            "{failed:?}"
        );
        assert!(
            matches!(&failed[1], (d, EbpfError::Full { .. }) if *d == other.dev),
            "{failed:?}"
        );
        let r = w.readings().await;
        let devs: Vec<_> = r.iter().map(|r| r.dev).collect();
        let mut want = vec![failing.inner.dev, hung.dev()];
        want.sort();
        assert_eq!(devs, want);

        // Events flow: two failures, one event (the other held back by the gap).
        failing.shut_down();
        let mut buf = AlignedBuf::new(BS);
        let f = failing.inner.open_direct();
        for _ in 0..2 {
            f.read_exact_at(buf.as_mut_slice(), 0).unwrap_err();
        }
        let ev = tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .expect("an IO error event")
            .unwrap();
        assert!(
            matches!(&ev, ProbeEvent::Path(e) if e.dev == failing.inner.dev
                && matches!(e.kind, PathEventKind::IoError { class: ErrorClass::Generic, .. })),
            "{ev:?}"
        );
        // A threshold change keeps the path's counters and rule state: with the gap
        // lifted, the next failure is sent with the one held back.
        assert!(
            w.set(vec![
                spec("eio", failing.inner.dev, quiet()),
                spec("hung", hung.dev(), stall)
            ])
            .await
            .is_empty()
        );
        f.read_exact_at(buf.as_mut_slice(), 0).unwrap_err();
        let ev = tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .expect("a second IO error event")
            .unwrap();
        assert!(
            matches!(&ev, ProbeEvent::Path(e) if e.suppressed == 1),
            "{ev:?}"
        );
        let r = w.readings().await;
        let eio = r.iter().find(|r| r.dev == failing.inner.dev).unwrap();
        assert_eq!(eio.block.stats.errors(), 3);
        assert!(eio.conn.is_none());

        // The stall scan runs in the task: a hung read is reported on its own.
        hung.fs.set_mode(Mode::Hang);
        let path = hung.path().to_owned();
        let reader = std::thread::spawn(move || slowfs::read_direct(&path, 0));
        let ev = tokio::time::timeout(Duration::from_secs(3), events.recv())
            .await
            .expect("a stall event")
            .unwrap();
        assert!(
            matches!(&ev, ProbeEvent::Path(e) if e.dev == hung.dev()
                && matches!(e.kind, PathEventKind::Stalled { inflight: 1, .. })),
            "{ev:?}"
        );
        hung.fs.release();
        reader.join().unwrap().unwrap();

        // Removing a path frees its slot for another; the newcomer starts from zero.
        assert!(
            w.set(vec![
                spec("eio", failing.inner.dev, quiet()),
                spec("other", other.dev, quiet())
            ])
            .await
            .is_empty()
        );
        let g = other.open_direct();
        g.read_exact_at(buf.as_mut_slice(), 0).unwrap();
        let r = w.readings().await;
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|r| r.dev != hung.dev()), "{r:?}");
        let o = r.iter().find(|r| r.dev == other.dev).unwrap();
        assert_eq!(o.block.stats.completions(), 1, "{o:?}");
        assert_eq!(o.block.stats.errors(), 0, "{o:?}");

        let st = w.stats();
        assert_eq!(st.events, 3, "{st:?}");
        assert_eq!(st.suppressed, 1, "{st:?}");
        assert_eq!(st.lag.count, 2, "two events came through the ring: {st:?}");
        assert_eq!(st.dropped, 0);
    });
}
