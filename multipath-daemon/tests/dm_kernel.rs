//! [`KernelDm`] on the kernel's device-mapper, with loop devices as paths.
//!
//! The host has no device-mapper: these tests are ignored there and run in the lab guest
//! (Debian's 6.1 kernel) by the scenario tests/lab/scenarios/dm-kernel.sh, once without
//! udevd (mpathd makes /dev/mapper/<name> itself) and once with it (udev links it):
//! `$DM_KERNEL_TEST --ignored --test-threads=1`.
//!
//! What 6.1 reads back, for tables loaded by these tests (`dmsetup table`/`status` params;
//! loop devices are 7:N, maps 254:N in the guest):
//!
//! ```text
//! loaded    0 0 1 1 round-robin 0 2 1 7:0 100 7:1 7
//! table     0 0 1 1 round-robin 0 2 1 7:0 1 7:1 1
//! status    2 1 0 0 1 1 E 0 2 0 7:0 A 0 7:1 A 0
//! loaded    0 0 1 1 round-robin 0 2 0 7:0 7:1
//! table     0 0 1 1 round-robin 0 2 1 7:0 1 7:1 1
//! loaded    1 queue_if_no_path 0 1 1 queue-length 0 2 1 7:0 128 7:1 128
//! table     1 queue_if_no_path 0 1 1 queue-length 0 2 1 7:0 1 7:1 1
//! status    2 1 0 0 1 1 E 0 2 1 7:0 A 0 0 7:1 A 0 0
//! loaded    0 0 1 1 service-time 0 2 2 7:0 128 1 7:1 128 4
//! table     0 0 1 1 service-time 0 2 2 7:0 1 1 7:1 1 4
//! status    2 1 0 0 1 1 E 0 2 2 7:0 A 0 0 1 7:1 A 0 0 4
//! loaded    0 0 1 1 service-time 0 2 0 7:0 7:1
//! table     0 0 1 1 service-time 0 2 2 7:0 1 1 7:1 1 1
//! loaded    0 0 1 1 round-robin 1 7 1 1 7:0 1
//! table     0 0 1 1 round-robin 0 1 1 7:0 1
//! loaded    2 queue_mode bio 0 1 1 round-robin 0 1 1 7:0 1
//! table     3 retain_attached_hw_handler queue_mode bio 0 1 1 round-robin 0 1 1 7:0 1
//! loaded    2 queue_mode mq 0 1 1 round-robin 0 1 1 7:0 1   (and `queue_mode rq`)
//! table     0 0 1 1 round-robin 0 1 1 7:0 1
//! after switch_group 2 on a failover map, the table's initial group reads back as 2:
//! table     1 queue_if_no_path 0 2 2 round-robin 0 1 1 7:0 1 round-robin 0 1 1 7:1 1
//! ```
//!
//! `pg_init_retries 0` is refused (1 to 50), `0 1 alua` on a loop device fails with
//! ENODEV (scsi_dh attaches to SCSI devices only). The tests print every table and
//! status they read back (console.log of the lab run).

use std::{
    fs::{File, OpenOptions},
    os::{
        fd::AsRawFd,
        unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use mpathd::dm::{
    DmBackend, DmError, KernelDm, MapInfo, Message, MultipathTable, PathGroup, PathSpec, PathState,
    Selector, tables_match,
};
use mpathd::model::DevT;

/// 8 MiB loop devices.
const LOOP_MIB: u64 = 8;
const SECTORS: u64 = LOOP_MIB * 2048;
const BS: usize = 4096;

fn dm() -> KernelDm {
    KernelDm::new().unwrap_or_else(|e| panic!("{e}"))
}

fn udev_running() -> bool {
    Path::new("/run/udev/control").exists()
}

fn dev_of(p: &Path) -> DevT {
    let r = std::fs::metadata(p).unwrap().rdev();
    DevT::new(libc::major(r), libc::minor(r))
}

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

/// A free loop device over `file`, by ioctl: spawning losetup costs a second or more
/// per call under the lab's emulated CPU.
fn loop_attach(file: &Path) -> PathBuf {
    let ctl = File::open("/dev/loop-control").expect("/dev/loop-control (modprobe loop)");
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    for _ in 0..10 {
        // SAFETY: plain ioctls on open descriptors; no pointers are passed.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        assert!(
            n >= 0,
            "LOOP_CTL_GET_FREE: {}",
            std::io::Error::last_os_error()
        );
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD as _, backing.as_raw_fd()) };
        if r == 0 {
            return path;
        }
        let e = std::io::Error::last_os_error();
        // Taken by someone else since GET_FREE: try the next free one.
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EBUSY),
            "LOOP_SET_FD {}: {e}",
            path.display()
        );
    }
    panic!("no free loop device for {}", file.display());
}

fn loop_detach(path: &Path) {
    if let Ok(dev) = File::open(path) {
        // SAFETY: as above. A device still held by a map is detached when released.
        unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD as _) };
    }
}

/// Loop devices under /tmp; with `shared` all over one file: several paths to one LUN.
struct Loops {
    devs: Vec<(PathBuf, DevT)>,
    files: Vec<PathBuf>,
}

impl Loops {
    fn new(tag: &str, n: usize, shared: bool) -> Self {
        let mut files = Vec::new();
        let mut devs = Vec::new();
        for i in 0..n {
            if i == 0 || !shared {
                let f = PathBuf::from(format!("/tmp/dmk-{tag}-{i}.img"));
                File::create(&f).unwrap().set_len(LOOP_MIB << 20).unwrap();
                files.push(f);
            }
            let path = loop_attach(files.last().unwrap());
            let dev = dev_of(&path);
            devs.push((path, dev));
        }
        Self { devs, files }
    }

    fn dev(&self, i: usize) -> String {
        self.devs[i].1.to_string()
    }

    fn all(&self) -> Vec<String> {
        (0..self.devs.len()).map(|i| self.dev(i)).collect()
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        for (p, _) in &self.devs {
            loop_detach(p);
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Removes the map when the test ends, whatever happened. Declare it after the
/// [`Loops`] it uses, so it is dropped first.
struct Cleanup<'a>(&'a KernelDm, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        // A writer thread of a failed test may still hold the map open for a moment.
        let end = Instant::now() + Duration::from_secs(5);
        while let Ok(Some(_)) = self.0.info(&self.1) {
            match self.0.remove(&self.1) {
                Err(DmError::Busy { .. }) if Instant::now() < end => {
                    thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    eprintln!("cleanup: {e}");
                    break;
                }
                Ok(()) => break,
            }
        }
    }
}

/// Stops the background writer when the test ends, whatever happened.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn selector_args(sel: &str, loose: bool) -> Vec<String> {
    let v: &[&str] = match (sel, loose) {
        (_, true) => &[],
        ("service-time", false) => &["1", "1"],
        _ => &["1"],
    };
    v.iter().map(|s| s.to_string()).collect()
}

/// A failover (group per path) or multibus (one group) table with `sel`; `loose`: no
/// per-path arguments at all (the kernel fills in its defaults).
fn table(sel: &str, failover: bool, devs: &[String], loose: bool) -> MultipathTable {
    let path = |d: &String| PathSpec::new(d.clone(), selector_args(sel, loose));
    let groups = if failover {
        devs.iter()
            .map(|d| PathGroup::new(Selector::new(sel), vec![path(d)]))
            .collect()
    } else {
        vec![PathGroup::new(
            Selector::new(sel),
            devs.iter().map(path).collect(),
        )]
    };
    MultipathTable {
        features: Vec::new(),
        hw_handler: None,
        initial_pg: 1,
        groups,
    }
}

/// `/dev/mapper/<name>` is the map's block device: udev's link when udevd runs, else
/// the node KernelDm made.
fn check_node(name: &str, dev: DevT) {
    let p = PathBuf::from("/dev/mapper").join(name);
    // With udevd the link comes once udev has run the map's rules, after create returns.
    let t0 = std::time::Instant::now();
    while udev_running() && !p.exists() && t0.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(m.file_type().is_block_device(), "{}", p.display());
    assert_eq!(dev_of(&p), dev, "{} names another device", p.display());
    let link = std::fs::symlink_metadata(&p)
        .unwrap()
        .file_type()
        .is_symlink();
    assert_eq!(
        link,
        udev_running(),
        "{}: expected {} (udev running: {})",
        p.display(),
        if udev_running() {
            "udev's symlink"
        } else {
            "a block node made by KernelDm"
        },
        udev_running()
    );
}

fn no_node(name: &str) {
    let p = PathBuf::from("/dev/mapper").join(name);
    assert!(
        std::fs::symlink_metadata(&p).is_err(),
        "{} is left behind",
        p.display()
    );
}

/// The map is gone: no info, not listed, no node, no sysfs dm entry with its name.
fn gone(dm: &KernelDm, name: &str) {
    assert!(dm.info(name).unwrap().is_none(), "{name} still exists");
    assert!(!dm.list().unwrap().iter().any(|m| m.name == name));
    no_node(name);
}

fn check_info(dm: &KernelDm, info: &MapInfo, name: &str, uuid: &str) {
    assert_eq!(info.name, name);
    assert_eq!(info.uuid.as_deref(), Some(uuid));
    assert_eq!(info.size_sectors, SECTORS);
    assert_eq!(info.open_count, 0);
    assert!(!info.suspended);
    let sys = format!("/sys/dev/block/{}/dm/name", info.dev);
    assert_eq!(std::fs::read_to_string(&sys).unwrap().trim(), name, "{sys}");
    let listed: Vec<MapInfo> = dm.list().unwrap();
    assert!(listed.contains(info), "list() has no {info:?}: {listed:?}");
    assert_eq!(dm.info(name).unwrap().as_ref(), Some(info));
    check_node(name, info.dev);
}

#[test]
#[ignore = "needs device-mapper: runs in the lab scenario dm-kernel"]
fn round_trip_every_selector_and_shape() {
    let dm = dm();
    let loops = Loops::new("rt", 3, false);
    let devs = loops.all();
    let mut n = 0;
    for sel in ["round-robin", "queue-length", "service-time"] {
        for failover in [true, false] {
            for loose in [false, true] {
                n += 1;
                let name = format!("dmk-rt{n}");
                let uuid = format!("mpath-dmk-rt{n}");
                let want =
                    table(sel, failover, &devs[..2], loose).with_queue_if_no_path(n % 2 == 0);
                let _c = Cleanup(&dm, name.clone());
                let info = dm
                    .create(&name, &uuid, SECTORS, &want)
                    .unwrap_or_else(|e| panic!("{e}"));
                check_info(&dm, &info, &name, &uuid);
                assert_eq!(info.wwid(), Some(&*format!("dmk-rt{n}")));
                let live = dm.table(&name).unwrap();
                let st = dm.status(&name).unwrap();
                println!("loaded {want}\n  table  {live}\n  status {st}");
                assert!(tables_match(&want, &live), "{want}\nvs live\n{live}");
                assert_eq!(live.queue_if_no_path(), want.queue_if_no_path());
                assert_eq!(st.groups.len(), want.groups.len());
                assert_eq!(st.active_paths(), 2);
                assert_eq!(
                    st.paths().map(|p| p.dev.as_str()).collect::<Vec<_>>(),
                    devs[..2]
                );
                // What tables_match must tell apart.
                let differ = [
                    ("a path more", table(sel, failover, &devs, loose)),
                    (
                        "another path",
                        table(sel, failover, &[devs[0].clone(), devs[2].clone()], loose),
                    ),
                    ("the other shape", table(sel, !failover, &devs[..2], loose)),
                    (
                        "another selector",
                        table(
                            if sel == "round-robin" {
                                "queue-length"
                            } else {
                                "round-robin"
                            },
                            failover,
                            &devs[..2],
                            loose,
                        ),
                    ),
                ];
                for (what, mut other) in differ {
                    other.set_queue_if_no_path(want.queue_if_no_path());
                    assert!(
                        !tables_match(&other, &live),
                        "{what}: {other} matches {live}"
                    );
                }
                let flipped = want.clone().with_queue_if_no_path(!want.queue_if_no_path());
                assert!(
                    !tables_match(&flipped, &live),
                    "queue_if_no_path: {flipped} matches {live}"
                );
                dm.remove(&name).unwrap_or_else(|e| panic!("{e}"));
                gone(&dm, &name);
            }
        }
    }
    // Per-path arguments the kernel keeps (service-time's relative throughput) count.
    let name = "dmk-rt-st";
    let _c = Cleanup(&dm, name.into());
    let mut want = table("service-time", false, &devs[..2], false);
    want.groups[0].paths[1].args = vec!["128".into(), "4".into()];
    dm.create(name, "mpath-dmk-rt-st", SECTORS, &want).unwrap();
    let live = dm.table(name).unwrap();
    println!(
        "loaded {want}\n  table  {live}\n  status {}",
        dm.status(name).unwrap()
    );
    assert!(tables_match(&want, &live));
    assert!(!tables_match(
        &table("service-time", false, &devs[..2], false),
        &live
    ));
    dm.remove(name).unwrap();
    gone(&dm, name);
}

#[test]
#[ignore = "needs device-mapper: runs in the lab scenario dm-kernel"]
fn list_skips_maps_that_are_not_multipath() {
    use devicemapper::{DM, DevId, DmName, DmOptions};
    let dm = dm();
    let loops = Loops::new("lin", 1, false);
    let raw = DM::new().unwrap();
    let name = "dmk-linear";
    let id = DevId::Name(DmName::new(name).unwrap());
    raw.device_create(DmName::new(name).unwrap(), None, DmOptions::default())
        .unwrap();
    let params = format!("{} 0", loops.dev(0));
    raw.table_load(
        &id,
        &[(0, SECTORS, "linear".into(), params)],
        DmOptions::default(),
    )
    .unwrap();
    raw.device_suspend(&id, DmOptions::default()).unwrap();
    let res = std::panic::catch_unwind(|| {
        assert!(!dm.list().unwrap().iter().any(|m| m.name == name));
        let info = dm.info(name).unwrap().expect("info of a linear map");
        assert_eq!(info.size_sectors, SECTORS);
        assert_eq!(info.uuid, None);
        match dm.table(name) {
            Err(DmError::NotMultipath { name: n, target }) => {
                assert_eq!((n.as_str(), target.as_str()), (name, "linear"))
            }
            other => panic!("table of a linear map: {other:?}"),
        }
        assert!(matches!(dm.status(name), Err(DmError::NotMultipath { .. })));
    });
    raw.device_remove(&id, DmOptions::default()).unwrap();
    res.unwrap();
}

/// Counts of the background writer.
#[derive(Default)]
struct IoStats {
    ops: AtomicU64,
    errors: AtomicU64,
}

fn open_direct(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A 4 KiB-aligned block stamped with (round, block).
struct Block(Box<[u8]>, usize);

impl Block {
    fn new() -> Self {
        let v = vec![0u8; BS * 2].into_boxed_slice();
        let off = (BS - (v.as_ptr() as usize % BS)) % BS;
        Self(v, off)
    }
    fn buf(&mut self) -> &mut [u8] {
        &mut self.0[self.1..self.1 + BS]
    }
    fn stamp(&mut self, round: u64, block: u64) {
        for (i, c) in self.buf().chunks_mut(8).enumerate() {
            let v = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (block << 20) ^ i as u64;
            c.copy_from_slice(&v.to_le_bytes());
        }
    }
}

const IO_BLOCKS: u64 = 256;

/// Writes and re-reads every block in turn with O_DIRECT, a few hundred times a second,
/// until `stop`; returns the last
/// round each block was written in, and any failure it saw.
fn writer(dev: PathBuf, stop: Arc<AtomicBool>, stats: Arc<IoStats>) -> (Vec<u64>, Option<String>) {
    let f = open_direct(&dev);
    let mut last = vec![0u64; IO_BLOCKS as usize];
    let (mut w, mut r) = (Block::new(), Block::new());
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        for b in 0..IO_BLOCKS {
            w.stamp(round, b);
            if let Err(e) = f.write_all_at(w.buf(), b * BS as u64) {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                return (last, Some(format!("write block {b} round {round}: {e}")));
            }
            last[b as usize] = round;
            if let Err(e) = f.read_exact_at(r.buf(), b * BS as u64) {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                return (last, Some(format!("read block {b} round {round}: {e}")));
            }
            if r.buf() != w.buf() {
                return (
                    last,
                    Some(format!("block {b} round {round} reads back different data")),
                );
            }
            stats.ops.fetch_add(2, Ordering::Relaxed);
            // Leave the (emulated) CPU to udev and the reloads.
            thread::sleep(Duration::from_millis(2));
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
    (last, None)
}

/// Waits until the writer completes `n` more IOs, or panics after `secs`.
fn wait_progress(stats: &IoStats, n: u64, secs: u64, what: &str) {
    let start = stats.ops.load(Ordering::Relaxed);
    let end = Instant::now() + Duration::from_secs(secs);
    while stats.ops.load(Ordering::Relaxed) < start + n {
        assert_eq!(stats.errors.load(Ordering::Relaxed), 0, "IO error {what}");
        assert!(Instant::now() < end, "IO made no progress {what} (stuck?)");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "needs device-mapper: runs in the lab scenario dm-kernel"]
fn reload_between_two_and_three_paths_under_io() {
    let dm = dm();
    // Three paths to one "LUN": loop devices over the same file share its page cache.
    let loops = Loops::new("io", 3, true);
    let devs = loops.all();
    let name = "dmk-io";
    let _c = Cleanup(&dm, name.into());
    let two = MultipathTable::multibus(devs[..2].to_vec()).with_queue_if_no_path(true);
    let three = MultipathTable::multibus(devs.clone()).with_queue_if_no_path(true);
    let made = dm.create(name, "mpath-dmk-io", SECTORS, &two).unwrap();
    check_node(name, made.dev);

    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let stats = Arc::new(IoStats::default());
    let w = {
        let (stop, stats) = (stop.clone(), stats.clone());
        let dev = PathBuf::from("/dev/mapper").join(name);
        thread::spawn(move || writer(dev, stop, stats))
    };
    wait_progress(&stats, 50, 20, "before the first reload");

    // Open: remove refuses.
    let info = dm.info(name).unwrap().unwrap();
    assert_eq!(info.open_count, 1);
    match dm.remove(name) {
        Err(e @ DmError::Busy { .. }) => {
            assert!(e.to_string().contains(name), "{e}");
            println!("remove while open: {e}");
        }
        other => panic!("remove of an open map: {other:?}"),
    }

    for round in 0..2 {
        let t = Instant::now();
        dm.reload(name, SECTORS, &three)
            .unwrap_or_else(|e| panic!("{e}"));
        println!("reload 2 -> 3 paths (round {round}) took {:?}", t.elapsed());
        assert!(tables_match(&three, &dm.table(name).unwrap()));
        assert_eq!(dm.status(name).unwrap().active_paths(), 3);
        wait_progress(&stats, 50, 20, "after the reload to 3 paths");
        dm.reload(name, SECTORS, &two)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(tables_match(&two, &dm.table(name).unwrap()));
        wait_progress(&stats, 50, 20, "after the reload to 2 paths");
    }

    // Every path failed: with queue_if_no_path the IO waits in the map; a reload
    // (noflush) keeps it queued and the new table's paths complete it.
    for d in &devs[..2] {
        dm.message(name, &Message::FailPath(d.parse().unwrap()))
            .unwrap();
    }
    let st = dm.status(name).unwrap();
    assert_eq!(st.active_paths(), 0, "{st}");
    thread::sleep(Duration::from_millis(300));
    let before = stats.ops.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(500));
    let queued = stats.ops.load(Ordering::Relaxed) == before;
    println!(
        "all paths failed: IO {}",
        if queued { "queued" } else { "still moving?" }
    );
    assert!(
        queued,
        "IO completed with every path failed: {}",
        dm.status(name).unwrap()
    );
    dm.reload(name, SECTORS, &three)
        .unwrap_or_else(|e| panic!("{e}"));
    wait_progress(
        &stats,
        50,
        20,
        "after reloading a map whose paths had all failed",
    );

    // A table the kernel refuses: the live table stays, the inactive slot is empty.
    let mut bad = three.clone();
    bad.groups[0].paths[2].dev = missing_dev();
    let e = dm.reload(name, SECTORS, &bad).unwrap_err();
    println!("reload with a missing path: {e}");
    let msg = e.to_string();
    assert!(msg.contains(name) && msg.contains("load table"), "{msg}");
    assert!(tables_match(&three, &dm.table(name).unwrap()));
    assert!(
        !inactive_present(name),
        "a failed reload left an inactive table"
    );
    wait_progress(&stats, 50, 20, "after a failed reload");

    stop.store(true, Ordering::Relaxed);
    let (last, failure) = w.join().unwrap();
    assert_eq!(failure, None);
    // The data as the paths see it: every block holds its last round.
    let f = open_direct(&loops.devs[2].0);
    let mut b = Block::new();
    let mut want = Block::new();
    for (blk, round) in last.iter().enumerate() {
        if *round == 0 {
            continue;
        }
        f.read_exact_at(b.buf(), (blk * BS) as u64).unwrap();
        want.stamp(*round, blk as u64);
        assert!(
            b.buf() == want.buf(),
            "block {blk} does not hold round {round}"
        );
    }
    println!(
        "IO during reloads: {} IOs, {} errors, data verified",
        stats.ops.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed)
    );
    dm.remove(name).unwrap();
    gone(&dm, name);
}

fn inactive_present(name: &str) -> bool {
    use devicemapper::{DM, DevId, DmFlags, DmName};
    DM::new()
        .unwrap()
        .device_info(&DevId::Name(DmName::new(name).unwrap()))
        .unwrap()
        .flags()
        .contains(DmFlags::DM_INACTIVE_PRESENT)
}

/// A device number no device has. Not a loop number: opening a missing loop minor
/// makes the loop driver create it. Major 60 is reserved for local use and unassigned.
fn missing_dev() -> String {
    let d = "60:0";
    assert!(
        !Path::new("/sys/dev/block").join(d).exists(),
        "{d} exists here"
    );
    d.to_string()
}

#[test]
#[ignore = "needs device-mapper: runs in the lab scenario dm-kernel"]
fn messages_show_in_status() {
    let dm = dm();
    let loops = Loops::new("msg", 2, true);
    let devs = loops.all();
    let d: Vec<DevT> = devs.iter().map(|s| s.parse().unwrap()).collect();
    let name = "dmk-msg";
    let _c = Cleanup(&dm, name.into());
    let want = MultipathTable::failover(devs.clone()).with_queue_if_no_path(true);
    dm.create(name, "mpath-dmk-msg", SECTORS, &want).unwrap();

    dm.message(name, &Message::FailPath(d[0])).unwrap();
    let st = dm.status(name).unwrap();
    println!("after fail_path {}: {st}", d[0]);
    let p = st.path(&devs[0]).unwrap();
    assert_eq!((p.state, p.fail_count), (PathState::Failed, 1));
    assert_eq!(st.active_paths(), 1);

    dm.message(name, &Message::ReinstatePath(d[0])).unwrap();
    let st = dm.status(name).unwrap();
    println!("after reinstate_path {}: {st}", d[0]);
    let p = st.path(&devs[0]).unwrap();
    assert_eq!((p.state, p.fail_count), (PathState::Active, 1));

    dm.message(name, &Message::SwitchGroup(2)).unwrap();
    let st = dm.status(name).unwrap();
    let live = dm.table(name).unwrap();
    println!("after switch_group 2: status {st}\n  table {live}");
    assert_eq!(st.next_pg, 2);
    // The table's initial group follows the switch; the tables still match.
    assert_eq!(live.initial_pg, 2);
    assert!(tables_match(&want, &live));

    dm.message(name, &Message::FailIfNoPath).unwrap();
    let live = dm.table(name).unwrap();
    println!("after fail_if_no_path: table {live}");
    assert!(!live.queue_if_no_path());
    assert!(!tables_match(&want, &live));
    dm.message(name, &Message::QueueIfNoPath).unwrap();
    let live = dm.table(name).unwrap();
    println!("after queue_if_no_path: table {live}");
    assert!(live.queue_if_no_path());
    assert!(tables_match(&want, &live));

    let other: DevT = missing_dev().parse().unwrap();
    let e = dm.message(name, &Message::FailPath(other)).unwrap_err();
    println!("fail_path of a path not in the map: {e}");
    let msg = e.to_string();
    assert!(
        msg.contains(name) && msg.contains("message") && msg.contains("fail_path"),
        "{msg}"
    );
    let e = dm.message(name, &Message::SwitchGroup(3)).unwrap_err();
    assert!(e.to_string().contains("switch_group 3"), "{e}");

    // Not found, for every call.
    let none = "dmk-no-such-map";
    assert!(dm.info(none).unwrap().is_none());
    assert!(matches!(dm.table(none), Err(DmError::NotFound(_))));
    assert!(matches!(dm.status(none), Err(DmError::NotFound(_))));
    assert!(matches!(dm.remove(none), Err(DmError::NotFound(_))));
    assert!(matches!(
        dm.message(none, &Message::QueueIfNoPath),
        Err(DmError::NotFound(_))
    ));
    assert!(matches!(
        dm.reload(none, SECTORS, &want),
        Err(DmError::NotFound(_))
    ));
    dm.remove(name).unwrap();
    gone(&dm, name);
}

#[test]
#[ignore = "needs device-mapper: runs in the lab scenario dm-kernel"]
fn remove_is_refused_while_open() {
    let dm = dm();
    let loops = Loops::new("busy", 1, false);
    let name = "dmk-busy";
    let _c = Cleanup(&dm, name.into());
    let info = dm
        .create(
            name,
            "mpath-dmk-busy",
            SECTORS,
            &MultipathTable::failover(loops.all()),
        )
        .unwrap();
    check_node(name, info.dev);
    let f = File::open(PathBuf::from("/dev/mapper").join(name)).unwrap();
    assert_eq!(dm.info(name).unwrap().unwrap().open_count, 1);
    match dm.remove(name) {
        Err(DmError::Busy {
            name: n,
            open_count,
        }) => assert_eq!((n.as_str(), open_count), (name, 1)),
        other => panic!("remove of an open map: {other:?}"),
    }
    check_node(name, info.dev);
    drop(f);
    dm.remove(name).unwrap();
    gone(&dm, name);
    assert!(matches!(dm.remove(name), Err(DmError::NotFound(_))));
}

#[test]
#[ignore = "needs device-mapper: runs in the lab scenario dm-kernel"]
fn rename_while_open_moves_the_node_and_keeps_the_table() {
    let dm = dm();
    let loops = Loops::new("ren", 2, true);
    let (old, new) = ("dmk-ren-a", "dmk-ren-b");
    let _c = Cleanup(&dm, old.into());
    let _c2 = Cleanup(&dm, new.into());
    let t = MultipathTable::failover(loops.all());
    let info = dm.create(old, "mpath-dmk-ren", SECTORS, &t).unwrap();
    check_node(old, info.dev);
    // Held open (a mount would): a rename is allowed, a remove would not be.
    let f = File::open(PathBuf::from("/dev/mapper").join(old)).unwrap();
    dm.rename(old, new).unwrap();
    assert!(dm.info(old).unwrap().is_none());
    let got = dm.info(new).unwrap().expect("renamed map");
    assert_eq!((got.dev, got.open_count), (info.dev, 1));
    assert_eq!(got.wwid(), Some("dmk-ren"));
    assert!(tables_match(&t, &dm.table(new).unwrap()));
    check_node(new, info.dev);
    if !udev_running() {
        no_node(old);
    }
    // The name is taken: a second rename onto it is refused, the map stays.
    let other = dm
        .create(
            old,
            "mpath-dmk-ren2",
            SECTORS,
            &MultipathTable::failover([loops.dev(0)]),
        )
        .unwrap();
    assert!(matches!(dm.rename(old, new), Err(DmError::Exists(_))));
    assert_eq!(dm.info(old).unwrap().unwrap().dev, other.dev);
    drop(f);
}

#[test]
#[ignore = "needs device-mapper: runs in the lab scenario dm-kernel"]
fn failed_creates_leave_nothing_behind() {
    let dm = dm();
    let loops = Loops::new("fail", 2, false);
    let devs = loops.all();
    let name = "dmk-fail";
    let uuid = "mpath-dmk-fail";
    let _c = Cleanup(&dm, name.into());
    let mut hw = MultipathTable::failover(devs.clone());
    hw.hw_handler = Some(mpathd::dm::HwHandler {
        name: "alua".into(),
        args: Vec::new(),
    });
    let cases = [
        (
            "a missing path",
            MultipathTable::failover([devs[0].clone(), missing_dev()]),
            "do not exist",
        ),
        (
            "an unknown selector",
            table("no-such-selector", true, &devs, false),
            "selector",
        ),
        ("alua on a loop device", hw, "alua"),
    ];
    for (what, t, hint) in cases {
        let e = dm.create(name, uuid, SECTORS, &t).unwrap_err();
        println!("create with {what}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains(name) && msg.contains("load table") && msg.contains(hint),
            "{what}: {msg}"
        );
        gone(&dm, name);
    }
    let e = dm
        .create(
            name,
            uuid,
            SECTORS,
            &MultipathTable::failover(["/dev/loop0"]),
        )
        .unwrap_err();
    assert!(matches!(e, DmError::Invalid { .. }), "{e}");
    for bad in ["control", "a/b"] {
        assert!(matches!(
            dm.create(bad, uuid, SECTORS, &MultipathTable::failover(devs.clone())),
            Err(DmError::Invalid { .. })
        ));
    }
    gone(&dm, name);

    // Name and uuid are free again: the same create now works.
    let good = MultipathTable::failover(devs.clone());
    dm.create(name, uuid, SECTORS, &good).unwrap();
    assert!(matches!(
        dm.create(name, "mpath-other", SECTORS, &good),
        Err(DmError::Exists(_))
    ));
    let e = dm.create("dmk-fail2", uuid, SECTORS, &good).unwrap_err();
    println!("create with a uuid in use: {e}");
    assert!(e.to_string().contains(name), "{e}");
    gone(&dm, "dmk-fail2");
    dm.remove(name).unwrap();
    gone(&dm, name);
}

#[test]
#[ignore = "needs device-mapper: runs in the lab scenario dm-kernel"]
fn a_second_instance_adopts_existing_maps() {
    let first = dm();
    let loops = Loops::new("adopt", 2, true);
    let name = "dmk-adopt";
    let _c = Cleanup(&first, name.into());
    let want = MultipathTable::failover(loops.all()).with_queue_if_no_path(true);
    let made = first
        .create(name, "mpath-dmk-adopt", SECTORS, &want)
        .unwrap();

    let second = dm();
    let seen = second.list().unwrap();
    assert!(seen.contains(&made), "{made:?} not in {seen:?}");
    assert_eq!(made.wwid(), Some("dmk-adopt"));
    // The live table matches: adopting needs no reload.
    assert!(tables_match(&want, &second.table(name).unwrap()));
    second
        .message(name, &Message::FailPath(loops.devs[1].1))
        .unwrap();
    assert_eq!(first.status(name).unwrap().active_paths(), 1);
    second.remove(name).unwrap();
    gone(&first, name);
}

/// Runs on the host, which has no device-mapper: the error says what is missing.
#[test]
fn without_device_mapper_new_says_what_to_do() {
    if Path::new("/dev/mapper/control").exists() {
        // With device-mapper (the lab guest) the same call must work.
        if let Err(e) = KernelDm::new() {
            panic!("/dev/mapper/control exists but KernelDm::new failed: {e}");
        }
        return;
    }
    let e = KernelDm::new()
        .err()
        .expect("KernelDm::new without /dev/mapper/control");
    let msg = e.to_string();
    assert!(
        msg.contains("/dev/mapper/control") && msg.contains("modprobe dm_mod"),
        "{msg}"
    );
}
