//! Helpers for tests that need real kernel objects. Every object made here is torn down in
//! `Drop`, so it goes away even when the test panics.
#![allow(dead_code)]

pub mod slowfs;

use std::{
    fs::File,
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    time::Duration,
};

use mpathd::{ebpf::DevT, model::Conn};

/// Set by `cargo xtask test`: a test that cannot get the kernel feature it needs fails
/// instead of skipping, so CI never passes by skipping everything.
pub fn strict() -> bool {
    std::env::var_os("MPATHD_TEST_STRICT").is_some_and(|v| v == "1")
}

/// Skips the calling test (returns true) when not root, or panics under `strict()`.
pub fn need_root(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return false;
    }
    if strict() {
        panic!("{test} needs root (MPATHD_TEST_STRICT=1 forbids skipping)");
    }
    eprintln!("skipped {test}: needs root to load eBPF programs and make loop devices");
    true
}

/// A loop device over a sparse file in a temporary directory.
pub struct LoopDev {
    pub path: PathBuf,
    pub dev: DevT,
    dir: PathBuf,
    /// Removed by whoever owns the directory (see `over_file`).
    owns_dir: bool,
    detached: bool,
}

impl LoopDev {
    pub fn new(tag: &str, size_mib: u64) -> Self {
        let dir = std::env::temp_dir().join(format!("mpathd-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut l = Self::over_file(&dir.join("backing.img"), size_mib, dir);
        l.owns_dir = true;
        l
    }

    /// A loop device over a new sparse file at `img`.
    fn over_file(img: &Path, size_mib: u64, dir: PathBuf) -> Self {
        File::create(img).unwrap().set_len(size_mib << 20).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(img)
            .output()
            .expect("running losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let dev = dev_of(&path);
        Self {
            path,
            dev,
            dir,
            owns_dir: false,
            detached: false,
        }
    }

    /// Opens the device for O_DIRECT IO, so every read and write is one request.
    pub fn open_direct(&self) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path)
            .unwrap()
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if !self.detached {
            let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
        }
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A loop device over a file on an ext4 file system (itself on a loop device), so the
/// test can make the watched device's IO fail (shut the file system down: every read gets
/// EIO) or hang (freeze the file system: writes stay in flight until it is thawed).
pub struct FsBackedLoop {
    pub inner: LoopDev,
    outer: LoopDev,
    mnt: PathBuf,
    frozen: bool,
}

const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;
const FS_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587D;

impl FsBackedLoop {
    pub fn new(tag: &str) -> Self {
        let outer = LoopDev::new(&format!("{tag}-outer"), 64);
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&outer.path)
            .status()
            .expect("running mkfs.ext4 (e2fsprogs)");
        assert!(st.success(), "mkfs.ext4 failed");
        let mnt = outer.dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let st = Command::new("mount")
            .arg(&outer.path)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success(), "mounting the ext4 image failed");
        // Sparse: writes must allocate, which needs the journal, which a freeze blocks.
        let inner = LoopDev::over_file(&mnt.join("inner.img"), 16, mnt.clone());
        Self {
            inner,
            outer,
            mnt,
            frozen: false,
        }
    }

    fn fs_ioctl(&self, req: libc::c_ulong, arg: u32) -> std::io::Result<()> {
        let dir = File::open(&self.mnt)?;
        let mut arg = arg;
        // SAFETY: valid fd; the three ioctls take a pointer to a u32 (or ignore it).
        let r = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                req as _,
                &mut arg as *mut u32,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Every later read of the inner device fails with EIO.
    pub fn shut_down(&self) {
        // Flag 2: FSOP_GOING_FLAGS_NOLOGFLUSH.
        self.fs_ioctl(FS_IOC_SHUTDOWN, 2).expect("FS_IOC_SHUTDOWN");
    }

    /// Writes to the inner device stay in flight until `thaw`.
    pub fn freeze(&mut self) {
        self.fs_ioctl(FIFREEZE, 0).expect("FIFREEZE");
        self.frozen = true;
    }

    pub fn thaw(&mut self) {
        if self.frozen {
            self.fs_ioctl(FITHAW, 0).expect("FITHAW");
            self.frozen = false;
        }
    }
}

impl Drop for FsBackedLoop {
    fn drop(&mut self) {
        if self.frozen {
            let _ = self.fs_ioctl(FITHAW, 0);
        }
        // The inner loop device goes first (its file is on the mount), then the mount;
        // the outer LoopDev is dropped after this.
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.inner.path)
            .status();
        self.inner.detached = true;
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

/// A loop device over a file larger than the tmpfs it sits on: writes past the file
/// system's size fail with ENOSPC.
pub struct TmpfsLoop {
    pub path: PathBuf,
    pub dev: DevT,
    mnt: PathBuf,
    dir: PathBuf,
}

impl TmpfsLoop {
    pub fn new(tag: &str, fs_mib: u64, file_mib: u64) -> Self {
        let dir = std::env::temp_dir().join(format!("mpathd-test-{tag}-{}", std::process::id()));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={fs_mib}m"),
                "mpathd-test",
            ])
            .arg(&mnt)
            .status()
            .expect("running mount");
        assert!(st.success(), "mounting a tmpfs on {}", mnt.display());
        let img = mnt.join("backing.img");
        File::create(&img).unwrap().set_len(file_mib << 20).unwrap();
        // Buffered (no direct IO): tmpfs allocates a page per write and says ENOSPC.
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output()
            .expect("running losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let dev = dev_of(&path);
        Self {
            path,
            dev,
            mnt,
            dir,
        }
    }

    pub fn open_direct(&self) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path)
            .unwrap()
    }
}

impl Drop for TmpfsLoop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
        // The detach is asynchronous while the device is open: retry the unmount briefly.
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// major:minor of a block device node.
pub fn dev_of(path: &Path) -> DevT {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(path).unwrap().rdev();
    DevT::new(libc::major(rdev), libc::minor(rdev))
}

/// A buffer aligned for O_DIRECT.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Self { ptr, len }
    }
    pub fn as_slice(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).unwrap();
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

/// A namespace `ns` with a veth pair: `a` in the root namespace (.1 of a /30), `b` in the
/// namespace (.2). RFC 2544 benchmark addresses (198.18.0.0/15), on a link of our own; the
/// /30 comes from the process id and `n` (below 8), so two test processes running at once
/// never route into each other's links.
pub struct NetNs {
    name: String,
    our_if: String,
    peer_if: String,
    local: std::net::Ipv4Addr,
    remote: std::net::Ipv4Addr,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .status()
        .expect("running ip (iproute2)");
    assert!(st.success(), "ip {}", args.join(" "));
}

impl NetNs {
    pub fn new(n: u8) -> Self {
        assert!(n < 8, "NetNs::new takes 0 to 7");
        let id = format!("{}{n}", std::process::id() % 100_000);
        // 32768 /30 blocks in 198.18.0.0/15: 4096 processes x 8.
        let block = (std::process::id() % 4096) * 8 + u32::from(n);
        let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + block * 4;
        let name = format!("mpt{id}");
        let (a, b) = (format!("mpa{id}"), format!("mpb{id}"));
        ip(&["netns", "add", &name]);
        let ns = Self {
            name: name.clone(),
            our_if: a.clone(),
            peer_if: b.clone(),
            local: std::net::Ipv4Addr::from(base + 1),
            remote: std::net::Ipv4Addr::from(base + 2),
        };
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &b, "netns", &name]);
        ip(&["addr", "add", &format!("{}/30", ns.local), "dev", &a]);
        ip(&["link", "set", &a, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/30", ns.remote),
            "dev",
            &b,
        ]);
        ip(&["-n", &name, "link", "set", &b, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// Silently drops everything on the link, as a dead switch port does: the peer's end
    /// goes down, ours stays up, so TCP only notices by retransmitting.
    pub fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.peer_if, "down"]);
    }

    /// A listener on `port` inside the namespace; each accepted connection is handed to
    /// `serve` on its own thread.
    pub fn listen(&self, port: u16, serve: fn(TcpStream)) {
        let path = format!("/run/netns/{}", self.name);
        let addr = SocketAddr::from((self.remote, port));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only; the fd is a network namespace.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let l = TcpListener::bind(addr).unwrap();
            tx.send(()).unwrap();
            for s in l.incoming().flatten() {
                std::thread::spawn(move || serve(s));
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("listener up");
    }

    pub fn connect(&self, port: u16) -> (TcpStream, Conn) {
        let s = TcpStream::connect_timeout(
            &SocketAddr::from((self.remote, port)),
            Duration::from_secs(5),
        )
        .unwrap();
        let conn = Conn {
            local: s.local_addr().unwrap(),
            remote: s.peer_addr().unwrap(),
        };
        (s, conn)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Our end first: the namespace lives on while sockets in it linger, and with it
        // the pair and its route, which would break the next run.
        let _ = Command::new("ip")
            .args(["link", "del", &self.our_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn sink(mut s: TcpStream) {
    let mut buf = [0u8; 65536];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}
