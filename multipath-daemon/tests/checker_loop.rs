//! The path checkers on real block devices: loop devices, some over slowfs (a FUSE file
//! system whose reads can be made slow, failing or hung). Root only; every test is named
//! `loop_*` and cleans up after itself even when it panics.

mod support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use mpathd::{
    checker::{CheckOutcome, CheckResult, CheckerKind, CheckerPool},
    model::DevT,
};
use support::{
    LoopDev, need_root,
    slowfs::{self, Mode, SlowLoop},
};

/// The fixture itself: each mode does what it says, on the loop device's reads.
#[test]
fn loop_slowfs_modes_reach_the_block_device() {
    if need_root("loop_slowfs_modes_reach_the_block_device") {
        return;
    }
    let l = SlowLoop::new("modes", 16);
    l.write_direct(8192, 0xa5).unwrap();
    assert_eq!(l.read_direct(8192).unwrap(), vec![0xa5; 4096]);

    l.fs.set_mode(Mode::Delay(Duration::from_millis(300)));
    let t0 = Instant::now();
    l.read_direct(0).unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "a read delayed by 300 ms took {took:?}"
    );

    l.fs.set_mode(Mode::Eio);
    let e = l.read_direct(0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");

    l.fs.set_mode(Mode::Hang);
    let dev = l.path().to_path_buf();
    let reader = std::thread::spawn(move || slowfs::read_direct(&dev, 0));
    assert!(
        l.fs.wait_held(1, Duration::from_secs(5)),
        "the read never reached slowfs"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!reader.is_finished(), "a hung read returned before release");
    l.fs.release();
    let t0 = Instant::now();
    while !reader.is_finished() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        reader.is_finished(),
        "the read did not return after release"
    );
    reader.join().unwrap().unwrap();
}

/// A test that panics with a read hung on the device leaves no mount and no loop device.
#[test]
fn loop_slowfs_cleans_up_after_a_panic() {
    if need_root("loop_slowfs_cleans_up_after_a_panic") {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, PathBuf)>();
    let r = std::thread::spawn(move || {
        let l = SlowLoop::new("panic", 4);
        tx.send((l.path().to_path_buf(), l.fs.file())).unwrap();
        l.fs.set_mode(Mode::Hang);
        let dev = l.path().to_path_buf();
        std::thread::spawn(move || slowfs::read_direct(&dev, 0));
        assert!(l.fs.wait_held(1, Duration::from_secs(5)));
        panic!("on purpose, with a read hung");
    })
    .join();
    assert!(r.is_err(), "the inner test was meant to panic");
    let (dev, file) = rx.recv().unwrap();
    let name = dev.file_name().unwrap().to_string_lossy().into_owned();
    let backing = PathBuf::from(format!("/sys/block/{name}/loop/backing_file"));
    assert!(!backing.exists(), "{} still attached", dev.display());
    let mnt = file.parent().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*mnt.to_string_lossy()),
        "{} still mounted",
        mnt.display()
    );
    assert!(!mnt.exists(), "{} not removed", mnt.display());
}

/// How late a check may answer past its timeout: the pool's timer plus a thread wake-up
/// on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(100);

fn check(
    pool: &CheckerPool,
    dev: DevT,
    node: &Path,
    kind: CheckerKind,
    timeout: Duration,
) -> CheckResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let r = rt.block_on(pool.check(dev, node.to_path_buf(), kind, timeout));
    eprintln!(
        "{kind} {} ({dev}): {} in {:?}",
        node.display(),
        r.outcome,
        r.took
    );
    assert_eq!((r.dev, r.kind), (dev, kind));
    r
}

#[test]
fn loop_directio_on_a_good_device_is_up() {
    if need_root("loop_directio_on_a_good_device_is_up") {
        return;
    }
    let l = LoopDev::new("ck-good", 16);
    let pool = CheckerPool::new();
    let r = check(
        &pool,
        l.dev,
        &l.path,
        CheckerKind::Directio,
        Duration::from_secs(5),
    );
    assert_eq!(r.outcome, CheckOutcome::Up);
    assert!(r.took < Duration::from_secs(1), "took {:?}", r.took);
    assert_eq!(pool.outstanding(), 0);
}

#[test]
fn loop_directio_reads_the_device_and_an_io_error_is_down() {
    if need_root("loop_directio_reads_the_device_and_an_io_error_is_down") {
        return;
    }
    let l = SlowLoop::new("ck-eio", 16);
    let pool = CheckerPool::new();
    // The check is real IO: it reaches the file system under the loop device.
    let before = l.fs.reads();
    let r = check(
        &pool,
        l.dev(),
        l.path(),
        CheckerKind::Directio,
        Duration::from_secs(5),
    );
    assert_eq!(r.outcome, CheckOutcome::Up);
    assert_eq!(l.fs.reads(), before + 1, "one read per check");

    l.fs.set_mode(Mode::Eio);
    let r = check(
        &pool,
        l.dev(),
        l.path(),
        CheckerKind::Directio,
        Duration::from_secs(5),
    );
    assert_eq!(
        r.outcome,
        CheckOutcome::Down {
            why: "read of block 0: Input/output error (os error 5)".into(),
            ambiguous: true,
        }
    );
    assert_eq!(pool.outstanding(), 0);
}

#[test]
fn loop_directio_on_a_hung_device_times_out_then_is_pending_until_released() {
    if need_root("loop_directio_on_a_hung_device_times_out_then_is_pending_until_released") {
        return;
    }
    let l = SlowLoop::new("ck-hung", 16);
    let pool = CheckerPool::new();
    let timeout = Duration::from_millis(500);
    l.fs.set_mode(Mode::Hang);

    let r = check(&pool, l.dev(), l.path(), CheckerKind::Directio, timeout);
    assert_eq!(r.outcome, CheckOutcome::Timeout);
    assert!(
        r.took >= timeout && r.took < timeout + SLACK,
        "a check with a {timeout:?} timeout answered after {:?}",
        r.took
    );
    assert_eq!(l.fs.held(), 1, "the read should be held in slowfs");
    assert_eq!(pool.outstanding(), 1);

    // Still hung: Pending at once, and no second read is started.
    for _ in 0..3 {
        let r = check(&pool, l.dev(), l.path(), CheckerKind::Directio, timeout);
        assert_eq!(r.outcome, CheckOutcome::Pending);
        assert!(
            r.took < Duration::from_millis(20),
            "Pending took {:?}",
            r.took
        );
    }
    assert_eq!(l.fs.held(), 1, "a Pending check must not issue IO");
    assert_eq!(pool.outstanding(), 1);

    l.fs.release();
    let t0 = Instant::now();
    while pool.outstanding() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the timed-out check did not end after the read was released"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!("the blocked check ended {:?} after release", t0.elapsed());
    let r = check(&pool, l.dev(), l.path(), CheckerKind::Directio, timeout);
    assert_eq!(r.outcome, CheckOutcome::Up);
}

#[test]
fn loop_directio_on_a_slow_device_is_up_below_the_timeout_and_timeout_above() {
    if need_root("loop_directio_on_a_slow_device_is_up_below_the_timeout_and_timeout_above") {
        return;
    }
    let l = SlowLoop::new("ck-slow", 16);
    let pool = CheckerPool::new();
    let delay = Duration::from_millis(300);
    l.fs.set_mode(Mode::Delay(delay));

    let r = check(
        &pool,
        l.dev(),
        l.path(),
        CheckerKind::Directio,
        Duration::from_secs(2),
    );
    assert_eq!(r.outcome, CheckOutcome::Up);
    assert!(
        r.took >= delay,
        "a read delayed by {delay:?} answered in {:?}",
        r.took
    );

    let timeout = Duration::from_millis(100);
    let r = check(&pool, l.dev(), l.path(), CheckerKind::Directio, timeout);
    assert_eq!(r.outcome, CheckOutcome::Timeout);
    assert!(r.took < timeout + SLACK, "took {:?}", r.took);
    // The slow read completes on its own; then the path is checked afresh.
    let t0 = Instant::now();
    while pool.outstanding() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the slow read never ended"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    l.fs.set_mode(Mode::Normal);
    let r = check(&pool, l.dev(), l.path(), CheckerKind::Directio, timeout);
    assert_eq!(r.outcome, CheckOutcome::Up);
}

#[test]
fn loop_tur_on_a_loop_device_is_unsupported() {
    if need_root("loop_tur_on_a_loop_device_is_unsupported") {
        return;
    }
    let l = LoopDev::new("ck-tur", 16);
    let pool = CheckerPool::new();
    let r = check(
        &pool,
        l.dev,
        &l.path,
        CheckerKind::Tur,
        Duration::from_secs(5),
    );
    let CheckOutcome::Unsupported { why } = &r.outcome else {
        panic!("expected Unsupported, got {:?}", r.outcome)
    };
    assert!(
        why.starts_with(&format!(
            "TUR: {} takes no SCSI commands (SG_IO: ",
            l.path.display()
        )),
        "{why}"
    );
}

#[test]
fn loop_none_is_up_even_on_a_failing_device() {
    if need_root("loop_none_is_up_even_on_a_failing_device") {
        return;
    }
    let l = SlowLoop::new("ck-none", 4);
    l.fs.set_mode(Mode::Eio);
    let pool = CheckerPool::new();
    let before = l.fs.reads();
    let r = check(
        &pool,
        l.dev(),
        l.path(),
        CheckerKind::None,
        Duration::from_secs(1),
    );
    assert_eq!(r.outcome, CheckOutcome::Up);
    assert_eq!(l.fs.reads(), before, "the none checker must do no IO");
}

/// Not a host test: SCSI disks exist only in the lab guest, where
/// tests/lab/scenarios/checker.sh runs this against the iSCSI paths while it injects
/// faults. Checks every node in CHECKER_WATCH_DEVS (space-separated) with every checker in
/// CHECKER_WATCH_KINDS, each pair every CHECKER_WATCH_INTERVAL_MS with a timeout of
/// CHECKER_WATCH_TIMEOUT_MS, until the file CHECKER_WATCH_STOP exists. Appends one line
/// per check to CHECKER_WATCH_LOG, tab-separated:
/// `EPOCH_SECS NODE KIND OUTCOME TOOK_MS WHY` (EPOCH_SECS when the answer came; WHY `-`
/// unless down or unsupported).
#[test]
#[ignore = "runs in the lab guest against SCSI disks (tests/lab/scenarios/checker.sh)"]
fn lab_checker_watch() {
    use std::io::Write;
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (see this test's doc)"))
    };
    let ms = |name: &str| Duration::from_millis(var(name).parse().expect(name));
    let nodes: Vec<PathBuf> = var("CHECKER_WATCH_DEVS")
        .split_whitespace()
        .map(PathBuf::from)
        .collect();
    let kinds: Vec<CheckerKind> = var("CHECKER_WATCH_KINDS")
        .split_whitespace()
        .map(|k| k.parse().unwrap())
        .collect();
    let (interval, timeout) = (
        ms("CHECKER_WATCH_INTERVAL_MS"),
        ms("CHECKER_WATCH_TIMEOUT_MS"),
    );
    let stop = PathBuf::from(var("CHECKER_WATCH_STOP"));
    let log = std::sync::Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(var("CHECKER_WATCH_LOG"))
            .unwrap(),
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // A pool per checker: a path blocked in one checker (Pending there) is still checked
    // by the others, so the log shows how each one sees the fault.
    let pools: Vec<(CheckerKind, CheckerPool)> =
        kinds.iter().map(|&k| (k, CheckerPool::new())).collect();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for node in &nodes {
            let dev = support::dev_of(node);
            for (kind, pool) in &pools {
                let (kind, pool, node, stop, log) =
                    (*kind, pool.clone(), node.clone(), stop.clone(), log.clone());
                tasks.spawn(async move {
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.exists() {
                        tick.tick().await;
                        let r = pool.check(dev, node.clone(), kind, timeout).await;
                        let at = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_secs_f64();
                        let why = match &r.outcome {
                            CheckOutcome::Down { why, .. } | CheckOutcome::Unsupported { why } => {
                                why.as_str()
                            }
                            _ => "-",
                        };
                        let line = format!(
                            "{at:.3}\t{}\t{kind}\t{}\t{:.1}\t{why}\n",
                            node.display(),
                            r.outcome.name(),
                            r.took.as_secs_f64() * 1e3
                        );
                        log.lock().unwrap().write_all(line.as_bytes()).unwrap();
                    }
                });
            }
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });
    for (kind, pool) in &pools {
        eprintln!(
            "{kind} checks still blocked in the kernel at exit: {}",
            pool.outstanding()
        );
    }
}
