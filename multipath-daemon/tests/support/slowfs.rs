//! A FUSE file system with one file whose IO can be made slow, failing or hung at run
//! time, and a loop device over that file: a block device with a good, slow, erroring or
//! hung path on demand.
//!
//! It speaks the FUSE protocol on /dev/fuse itself (no crate, no libfuse, no fusermount:
//! the tests run as root and mount(2) directly). One thread reads requests; a read or
//! write is answered at once, from a timer thread after the delay, with EIO, or held until
//! [`SlowFs::release`]. The mode applies to reads and writes of the file's data alike.
//!
//! The loop device uses direct IO (`losetup --direct-io=on`), and [`SlowLoop::new`]
//! checks that it took (`/sys/block/loopN/loop/dio` is 1) and that an O_DIRECT read of the
//! loop device reaches this file system, so no page cache can answer for a hung path.
//!
//! Everything is undone in `Drop`, even while a test unwinds from a panic: held requests
//! are answered, the loop device is detached, the file system unmounted, its connection
//! closed and the directory removed.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    },
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use mpathd::model::DevT;

/// How the file answers reads and writes of its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// At once.
    Normal,
    /// After this long.
    Delay(Duration),
    /// With EIO.
    Eio,
    /// Not until [`SlowFs::release`] (or the file system goes away).
    Hang,
}

/// The name of the one file, in the mount's root.
pub const FILE_NAME: &str = "disk.img";

const ROOT_ID: u64 = 1;
const FILE_ID: u64 = 2;

// Opcodes and flags from <linux/fuse.h>.
const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_SETATTR: u32 = 4;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_STATFS: u32 = 17;
const FUSE_RELEASE: u32 = 18;
const FUSE_FSYNC: u32 = 20;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;

const FUSE_ASYNC_READ: u32 = 1 << 0;
const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_ASYNC_DIO: u32 = 1 << 15;
const FUSE_MAX_PAGES: u32 = 1 << 22;

/// 7.31 has every field of the 64-byte init reply we fill (max_pages came in 7.28).
const PROTO_MINOR: u32 = 31;
const MAX_PAGES: u16 = 32;
const MAX_WRITE: u32 = MAX_PAGES as u32 * 4096;
const IN_HEADER: usize = 40;
/// Long enough that the kernel never asks again during a test.
const VALID_SECS: u64 = 3600;

struct State {
    mode: Mode,
    /// (unique, reply) of every request held in `Mode::Hang`.
    held: Vec<(u64, Reply)>,
    data: Vec<u8>,
}

enum Reply {
    Data(Vec<u8>),
    Err(i32),
}

struct Shared {
    dev: OwnedFd,
    state: Mutex<State>,
    reads: AtomicU64,
    writes: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    /// One reply is one write(2) on /dev/fuse; replies may come from any thread.
    fn reply(&self, unique: u64, r: Reply) {
        let (error, body) = match r {
            Reply::Data(b) => (0, b),
            Reply::Err(e) => (-e, Vec::new()),
        };
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&error.to_ne_bytes());
        msg.extend_from_slice(&unique.to_ne_bytes());
        msg.extend_from_slice(&body);
        // SAFETY: a valid fd and a buffer of msg.len() bytes.
        let n = unsafe { libc::write(self.dev.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        // ENOENT: the request was interrupted and is gone; ENODEV: the connection is
        // closed (unmounted). Neither is the test's business.
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) {
                eprintln!("slowfs: reply to request {unique} failed: {e}");
            }
        }
    }

    fn size(&self) -> u64 {
        self.state.lock().unwrap().data.len() as u64
    }
}

/// A mounted slowfs. Its file is [`SlowFs::file`].
pub struct SlowFs {
    shared: Arc<Shared>,
    dir: PathBuf,
    mnt: PathBuf,
    mounted: bool,
    server: Option<JoinHandle<()>>,
}

impl SlowFs {
    /// Mounts a slowfs whose file holds `size_mib` MiB of zeros (in memory).
    pub fn new(tag: &str, size_mib: u64) -> Self {
        let dir = std::env::temp_dir().join(format!("mpathd-slowfs-{tag}-{}", std::process::id()));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/fuse")
            .unwrap_or_else(|e| panic!("opening /dev/fuse: {e} (is the fuse module loaded?)"));
        let shared = Arc::new(Shared {
            dev: dev.into(),
            state: Mutex::new(State {
                mode: Mode::Normal,
                held: Vec::new(),
                data: vec![0; (size_mib << 20) as usize],
            }),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            shared.dev.as_raw_fd()
        );
        let c_mnt = CString::new(mnt.as_os_str().as_bytes()).unwrap();
        let c_opts = CString::new(opts).unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                c"slowfs".as_ptr(),
                c_mnt.as_ptr(),
                c"fuse.slowfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c_opts.as_ptr().cast(),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir_all(&dir);
            panic!(
                "mounting slowfs on {}: {e} (needs root and FUSE)",
                mnt.display()
            );
        }
        let s = shared.clone();
        let server = std::thread::Builder::new()
            .name("slowfs".into())
            .spawn(move || serve(&s))
            .unwrap();
        Self {
            shared,
            dir,
            mnt,
            mounted: true,
            server: Some(server),
        }
    }

    /// The one file.
    pub fn file(&self) -> PathBuf {
        self.mnt.join(FILE_NAME)
    }

    /// How later reads and writes are answered. Requests already held stay held until
    /// [`SlowFs::release`].
    pub fn set_mode(&self, mode: Mode) {
        self.shared.state.lock().unwrap().mode = mode;
    }

    /// Back to `Mode::Normal`, and every held request is answered as it would have been.
    pub fn release(&self) {
        let held = {
            let mut st = self.shared.state.lock().unwrap();
            st.mode = Mode::Normal;
            std::mem::take(&mut st.held)
        };
        for (unique, r) in held {
            self.shared.reply(unique, r);
        }
    }

    /// Data reads the file system has seen (answered or not).
    pub fn reads(&self) -> u64 {
        self.shared.reads.load(Ordering::SeqCst)
    }

    /// Data writes the file system has seen (answered or not).
    pub fn writes(&self) -> u64 {
        self.shared.writes.load(Ordering::SeqCst)
    }

    /// Requests held now (`Mode::Hang`).
    pub fn held(&self) -> usize {
        self.shared.state.lock().unwrap().held.len()
    }

    /// Waits up to `limit` for at least `n` requests to be held; says whether they were.
    pub fn wait_held(&self, n: usize, limit: Duration) -> bool {
        let t0 = Instant::now();
        while self.held() < n {
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        let c_mnt = CString::new(self.mnt.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::umount2(c_mnt.as_ptr(), 0) } != 0 {
            // Still open somewhere (a loop device being torn down lazily): detach it from
            // the tree; closing our /dev/fuse fd below aborts the connection, so nothing
            // can stay blocked on it.
            let e = std::io::Error::last_os_error();
            eprintln!(
                "slowfs: unmounting {}: {e}; detaching it lazily",
                self.mnt.display()
            );
            // SAFETY: as above.
            unsafe { libc::umount2(c_mnt.as_ptr(), libc::MNT_DETACH) };
        }
        self.mounted = false;
    }
}

impl Drop for SlowFs {
    fn drop(&mut self) {
        self.release();
        self.unmount();
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
        // The last reference to the /dev/fuse fd goes with `shared` after this; closing it
        // aborts the connection if anything still holds the file system.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads requests until told to stop or the connection goes away (unmount).
fn serve(sh: &Arc<Shared>) {
    let fd = sh.dev.as_raw_fd();
    let mut buf = vec![0u8; MAX_WRITE as usize + 64 * 1024];
    while !sh.stop.load(Ordering::SeqCst) {
        // Poll with a timeout so Drop can stop this thread even if the kernel sends
        // nothing more.
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 100) };
        if r == 0 {
            continue;
        }
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        // SAFETY: a valid fd and buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                // Interrupted, or the request was taken back before we read it.
                Some(libc::EINTR | libc::ENOENT | libc::EAGAIN) => continue,
                // ENODEV: unmounted. Anything else: nothing sensible left to do.
                _ => return,
            }
        }
        let msg = &buf[..n as usize];
        if msg.len() < IN_HEADER {
            continue;
        }
        handle(sh, msg);
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
}

fn handle(sh: &Arc<Shared>, msg: &[u8]) {
    let opcode = u32_at(msg, 4);
    let unique = u64_at(msg, 8);
    let nodeid = u64_at(msg, 16);
    let arg = &msg[IN_HEADER..];
    match opcode {
        FUSE_INIT => {
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(&7u32.to_ne_bytes());
            out.extend_from_slice(&PROTO_MINOR.to_ne_bytes());
            out.extend_from_slice(&u32_at(arg, 8).to_ne_bytes()); // max_readahead as asked
            out.extend_from_slice(
                &(FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_MAX_PAGES)
                    .to_ne_bytes(),
            );
            out.extend_from_slice(&16u16.to_ne_bytes()); // max_background
            out.extend_from_slice(&12u16.to_ne_bytes()); // congestion_threshold
            out.extend_from_slice(&MAX_WRITE.to_ne_bytes());
            out.extend_from_slice(&1u32.to_ne_bytes()); // time_gran (ns)
            out.extend_from_slice(&MAX_PAGES.to_ne_bytes());
            out.resize(64, 0); // map_alignment, flags2, unused
            sh.reply(unique, Reply::Data(out));
        }
        FUSE_LOOKUP => {
            let name = arg.split(|&b| b == 0).next().unwrap_or_default();
            if nodeid == ROOT_ID && name == FILE_NAME.as_bytes() {
                let mut out = Vec::with_capacity(128);
                out.extend_from_slice(&FILE_ID.to_ne_bytes());
                out.extend_from_slice(&0u64.to_ne_bytes()); // generation
                out.extend_from_slice(&VALID_SECS.to_ne_bytes()); // entry_valid
                out.extend_from_slice(&VALID_SECS.to_ne_bytes()); // attr_valid
                out.extend_from_slice(&[0; 8]); // the two nsec fields
                out.extend_from_slice(&attr(FILE_ID, sh.size()));
                sh.reply(unique, Reply::Data(out));
            } else {
                sh.reply(unique, Reply::Err(libc::ENOENT));
            }
        }
        // Attributes never change from outside; a SETATTR (truncate, times) is answered
        // with them as they are.
        FUSE_GETATTR | FUSE_SETATTR => {
            if nodeid != ROOT_ID && nodeid != FILE_ID {
                return sh.reply(unique, Reply::Err(libc::ENOENT));
            }
            let mut out = Vec::with_capacity(104);
            out.extend_from_slice(&VALID_SECS.to_ne_bytes());
            out.extend_from_slice(&[0; 8]); // attr_valid_nsec, dummy
            out.extend_from_slice(&attr(nodeid, sh.size()));
            sh.reply(unique, Reply::Data(out));
        }
        FUSE_OPEN => {
            if nodeid != FILE_ID {
                return sh.reply(unique, Reply::Err(libc::EISDIR));
            }
            // fh 0, no open flags: the page cache is kept out by the loop device's direct
            // IO, which SlowLoop verifies, not by FOPEN_DIRECT_IO.
            sh.reply(unique, Reply::Data(vec![0; 16]));
        }
        FUSE_READ => {
            sh.reads.fetch_add(1, Ordering::SeqCst);
            let (off, size) = (u64_at(arg, 8) as usize, u32_at(arg, 16) as usize);
            let mut st = sh.state.lock().unwrap();
            let end = (off + size).min(st.data.len());
            let data = st.data.get(off..end).unwrap_or_default().to_vec();
            answer(sh, &mut st, unique, Reply::Data(data));
        }
        FUSE_WRITE => {
            sh.writes.fetch_add(1, Ordering::SeqCst);
            let (off, size) = (u64_at(arg, 8) as usize, u32_at(arg, 16) as usize);
            let payload = &arg[40..40 + size];
            let mut st = sh.state.lock().unwrap();
            let r = if st.mode == Mode::Eio {
                Reply::Err(libc::EIO)
            } else if off + size > st.data.len() {
                Reply::Err(libc::ENOSPC)
            } else {
                // Stored at once, acknowledged as the mode says.
                st.data[off..off + size].copy_from_slice(payload);
                let mut out = (size as u32).to_ne_bytes().to_vec();
                out.extend_from_slice(&[0; 4]);
                Reply::Data(out)
            };
            answer(sh, &mut st, unique, r);
        }
        FUSE_STATFS => {
            let mut out = vec![0u8; 80];
            out[64..68].copy_from_slice(&4096u32.to_ne_bytes()); // bsize
            out[68..72].copy_from_slice(&255u32.to_ne_bytes()); // namelen
            out[72..76].copy_from_slice(&4096u32.to_ne_bytes()); // frsize
            sh.reply(unique, Reply::Data(out));
        }
        FUSE_RELEASE | FUSE_FLUSH | FUSE_FSYNC => sh.reply(unique, Reply::Data(Vec::new())),
        // No reply expected (FORGET), or the request it names is answered by its own
        // reply in due course (INTERRUPT): a held read stays held, as on a dead path.
        FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT | FUSE_DESTROY => {}
        _ => sh.reply(unique, Reply::Err(libc::ENOSYS)),
    }
}

/// Answers a data request as the current mode says.
fn answer(sh: &Arc<Shared>, st: &mut State, unique: u64, r: Reply) {
    match st.mode {
        Mode::Normal => sh.reply(unique, r),
        Mode::Eio => sh.reply(unique, Reply::Err(libc::EIO)),
        Mode::Hang => st.held.push((unique, r)),
        Mode::Delay(d) => {
            let sh = sh.clone();
            std::thread::spawn(move || {
                std::thread::sleep(d);
                sh.reply(unique, r);
            });
        }
    }
}

/// A `struct fuse_attr` (88 bytes) for the root directory or the file.
fn attr(ino: u64, size: u64) -> Vec<u8> {
    let (size, mode, nlink) = if ino == ROOT_ID {
        (0, libc::S_IFDIR | 0o755, 2u32)
    } else {
        (size, libc::S_IFREG | 0o644, 1)
    };
    let mut a = Vec::with_capacity(88);
    a.extend_from_slice(&ino.to_ne_bytes());
    a.extend_from_slice(&size.to_ne_bytes());
    a.extend_from_slice(&size.div_ceil(512).to_ne_bytes()); // blocks
    a.extend_from_slice(&[0; 24]); // atime, mtime, ctime
    a.extend_from_slice(&[0; 12]); // their nsec
    a.extend_from_slice(&mode.to_ne_bytes());
    a.extend_from_slice(&nlink.to_ne_bytes());
    a.extend_from_slice(&[0; 12]); // uid, gid, rdev
    a.extend_from_slice(&4096u32.to_ne_bytes()); // blksize
    a.extend_from_slice(&[0; 4]); // flags
    a
}

/// A loop device (direct IO) over a slowfs file.
pub struct SlowLoop {
    /// Declared first: dropped (detached) before the file system is unmounted.
    loop_: LoopOver,
    pub fs: SlowFs,
}

struct LoopOver {
    path: PathBuf,
}

impl Drop for LoopOver {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
        // Detaching is asynchronous while the device is open (autoclear): wait a little
        // for the backing file to be let go, so the unmount after this succeeds.
        let name = self
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let backing = format!("/sys/block/{name}/loop/backing_file");
        let t0 = Instant::now();
        while Path::new(&backing).exists() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for SlowLoop {
    fn drop(&mut self) {
        // Held requests first: the loop device cannot be detached (nor its backing file
        // let go) while a request of it is in flight.
        self.fs.release();
    }
}

impl SlowLoop {
    /// A `size_mib` MiB slowfs and a loop device over its file, in `Mode::Normal`.
    /// Panics unless the loop device does direct IO and an O_DIRECT read of it reaches
    /// the file system.
    pub fn new(tag: &str, size_mib: u64) -> Self {
        let fs = SlowFs::new(tag, size_mib);
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(fs.file())
            .output()
            .expect("running losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup over {} failed: {}",
            fs.file().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let l = Self {
            loop_: LoopOver { path },
            fs,
        };
        let dio = std::fs::read_to_string(format!(
            "/sys/block/{}/loop/dio",
            l.loop_.path.file_name().unwrap().to_string_lossy()
        ))
        .unwrap_or_default();
        assert_eq!(
            dio.trim(),
            "1",
            "{} does not do direct IO over the slowfs file, so reads could be answered from \
             the page cache; losetup said: {}",
            l.loop_.path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let before = l.fs.reads();
        l.read_direct(0)
            .expect("O_DIRECT read of the new loop device");
        assert!(
            l.fs.reads() > before,
            "an O_DIRECT read of {} did not reach slowfs",
            l.loop_.path.display()
        );
        l
    }

    /// The loop device node (/dev/loopN).
    pub fn path(&self) -> &Path {
        &self.loop_.path
    }

    pub fn dev(&self) -> DevT {
        super::dev_of(&self.loop_.path)
    }

    /// One O_DIRECT read of 4 KiB at `offset` of the loop device, from the calling thread
    /// (blocks as long as the mode says).
    pub fn read_direct(&self, offset: u64) -> std::io::Result<Vec<u8>> {
        read_direct(&self.loop_.path, offset)
    }

    /// One O_DIRECT write of 4 KiB of `byte` at `offset` of the loop device.
    pub fn write_direct(&self, offset: u64, byte: u8) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.loop_.path)?;
        let mut buf = super::AlignedBuf::new(4096);
        buf.as_mut_slice().fill(byte);
        f.write_all_at(buf.as_slice(), offset)?;
        Ok(())
    }
}

/// One O_DIRECT read of 4 KiB at `offset` of `dev`; for threads that must not borrow the
/// SlowLoop.
pub fn read_direct(dev: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let mut buf = super::AlignedBuf::new(4096);
    f.read_exact_at(buf.as_mut_slice(), offset)?;
    Ok(buf.as_slice().to_vec())
}
