//! The sysfs readers (`mpathd::topology`) on a small sysfs tree made from the input, laid
//! out as the kernel lays out iSCSI disks (see multipath-daemon/tests/fixtures/sysfs):
//!
//! ```text
//! sys/block/sdX -> ../devices/platform/hostH/sessionS/targetH:0:0/H:C:T:L/block/sdX
//! sys/devices/platform/hostH/iscsi_host/hostH/ipaddress
//! sys/devices/platform/hostH/sessionS/iscsi_session/sessionS/{targetname,state,recovery_tmo}
//! sys/devices/platform/hostH/sessionS/connectionS:0/iscsi_connection/connectionS:0/{...}
//! .../H:C:T:L/{vendor,model,rev,state,wwid,access_state}
//! .../H:C:T:L/block/sdX/{dev,size,ro,device -> H:C:T:L}
//! ```
//!
//! Every attribute may be missing or hold any bytes; names and links may be odd. The
//! readers may return errors but must not panic, hang or escape the tree.
#![no_main]

use std::{
    fs,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mpathd::topology::{Sysfs, group_by_wwid, scsi_id_wwid};

/// An attribute file. `Real` writes what the lab's kernel writes there, so that inputs
/// reach the later readers before the fuzzer has learnt the layout.
#[derive(Arbitrary, Debug)]
enum Attr {
    Real,
    Missing,
    Number(u64),
    Signed(i64),
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    disks: Vec<Disk>,
    /// A `loop0` beside the disks: a block device without a SCSI device.
    loop_dev: Attr,
    /// Asked for by name as well (`mpathd scan sdX` style).
    extra_name: String,
    /// Fed to the WWID folding directly.
    wwid: String,
}

#[derive(Arbitrary, Debug)]
struct Disk {
    /// The kernel name: `sda`, `sdb`... when `None`; else `sd` and this (or this bare,
    /// when `raw_name`).
    name: Option<String>,
    raw_name: bool,
    /// The SCSI device's directory name, `H:0:0:0` when `None`.
    hctl: Option<String>,
    dev: Attr,
    size: Attr,
    ro: Attr,
    vendor: Attr,
    model: Attr,
    rev: Attr,
    state: Attr,
    wwid: Attr,
    access_state: Attr,
    device_link: Link,
    /// None: a SCSI disk on a plain host, not an iSCSI session.
    session: Option<Session>,
}

#[derive(Arbitrary, Debug)]
enum Link {
    ToScsiDevice,
    Dangling,
    ToItself,
    Missing,
}

#[derive(Arbitrary, Debug)]
struct Session {
    /// Appended to `session`; the kernel writes a number (`H + 1` when `None`).
    number: Option<String>,
    targetname: Attr,
    state: Attr,
    recovery_tmo: Attr,
    persistent_address: Attr,
    persistent_port: Attr,
    address: Attr,
    port: Attr,
    local_port: Attr,
    ipaddress: Attr,
}

/// At most this many disks per input: enough for grouping, cheap to lay out.
const MAX_DISKS: usize = 4;

/// One directory per process, on tmpfs when there is one, emptied for every input.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        base.join(format!("mpathd-fuzz-sysfs-{}", std::process::id()))
    })
}

/// A single path component from any string: no `/`, no NUL, not `.` or `..`, not empty,
/// at most 64 bytes.
fn component(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    let mut cut = out.len().min(64);
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    out.truncate(cut);
    if out.is_empty() || out == "." || out == ".." {
        out = "x".to_owned();
    }
    out
}

fn attr(dir: &Path, name: &str, value: &Attr, real: &str) {
    let bytes: Vec<u8> = match value {
        Attr::Real => format!("{real}\n").into_bytes(),
        Attr::Missing => return,
        Attr::Number(n) => format!("{n}\n").into_bytes(),
        Attr::Signed(n) => format!("{n}\n").into_bytes(),
        Attr::Text(t) => t.clone().into_bytes(),
        Attr::Bytes(b) => b.clone(),
    };
    let _ = fs::write(dir.join(name), bytes);
}

fn symlink(target: &Path, link: &Path) {
    let _ = std::os::unix::fs::symlink(target, link);
}

fn lay_out(root: &Path, input: &Input) {
    let block = root.join("sys/block");
    let _ = fs::create_dir_all(&block);
    for (i, d) in input.disks.iter().take(MAX_DISKS).enumerate() {
        let name = match &d.name {
            None => format!("sd{}", char::from(b'a' + i as u8)),
            Some(n) if d.raw_name => component(n),
            Some(n) => component(&format!("sd{n}")),
        };
        if block.join(&name).symlink_metadata().is_ok() {
            continue; // a second disk of that name
        }
        let host_dir = root.join(format!("sys/devices/platform/host{i}"));
        let parent = match &d.session {
            None => host_dir.clone(),
            Some(s) => {
                let sid = match &s.number {
                    None => (i + 1).to_string(),
                    Some(n) => component(n),
                };
                let session = format!("session{sid}");
                let sdir = host_dir.join(&session);
                let sattr = sdir.join("iscsi_session").join(&session);
                let _ = fs::create_dir_all(&sattr);
                attr(
                    &sattr,
                    "targetname",
                    &s.targetname,
                    "iqn.2003-01.org.mpathd.lab:tgt1",
                );
                attr(&sattr, "state", &s.state, "LOGGED_IN");
                attr(&sattr, "recovery_tmo", &s.recovery_tmo, "5");
                let conn = format!("connection{sid}:0");
                let cattr = sdir.join(&conn).join("iscsi_connection").join(&conn);
                let _ = fs::create_dir_all(&cattr);
                attr(
                    &cattr,
                    "persistent_address",
                    &s.persistent_address,
                    "10.99.1.2",
                );
                attr(&cattr, "persistent_port", &s.persistent_port, "3260");
                attr(&cattr, "address", &s.address, "10.99.1.2");
                attr(&cattr, "port", &s.port, "3260");
                attr(&cattr, "local_port", &s.local_port, "58324");
                let hattr = host_dir.join("iscsi_host").join(format!("host{i}"));
                let _ = fs::create_dir_all(&hattr);
                attr(&hattr, "ipaddress", &s.ipaddress, "10.99.1.1");
                sdir
            }
        };
        let scsi = parent.join(format!("target{i}:0:0")).join(match &d.hctl {
            None => format!("{i}:0:0:0"),
            Some(h) => component(h),
        });
        let bdir = scsi.join("block").join(&name);
        if fs::create_dir_all(&bdir).is_err() {
            continue;
        }
        attr(&scsi, "vendor", &d.vendor, "LIO-ORG");
        attr(&scsi, "model", &d.model, "FILEIO");
        attr(&scsi, "rev", &d.rev, "4.0");
        attr(&scsi, "state", &d.state, "running");
        attr(
            &scsi,
            "wwid",
            &d.wwid,
            "naa.60014056001405f00dcafe0123456789",
        );
        attr(&scsi, "access_state", &d.access_state, "active/optimized");
        attr(&bdir, "dev", &d.dev, &format!("8:{}", i * 16));
        attr(&bdir, "size", &d.size, "524288");
        attr(&bdir, "ro", &d.ro, "0");
        let device = bdir.join("device");
        match d.device_link {
            Link::ToScsiDevice => symlink(&scsi, &device),
            Link::Dangling => symlink(&root.join("gone"), &device),
            Link::ToItself => symlink(&device, &device),
            Link::Missing => {}
        }
        symlink(&bdir, &block.join(&name));
    }
    if !matches!(input.loop_dev, Attr::Missing) {
        let l = root.join("sys/devices/virtual/block/loop0");
        if fs::create_dir_all(&l).is_ok() {
            attr(&l, "dev", &input.loop_dev, "7:0");
            symlink(&l, &block.join("loop0"));
        }
    }
}

fn check_wwid(folded: Option<&str>) {
    if let Some(w) = folded {
        assert!(!w.is_empty(), "empty WWID");
        assert!(!w.chars().any(char::is_whitespace), "blank in WWID {w:?}");
    }
}

fuzz_target!(|input: Input| {
    check_wwid(scsi_id_wwid(&input.wwid).as_deref());

    let root = scratch();
    let _ = fs::remove_dir_all(root);
    lay_out(root, &input);

    let sysfs = Sysfs::new(root);
    if let Ok(disks) = sysfs.scsi_disks() {
        for d in &disks {
            check_wwid(d.wwid.as_deref());
        }
        let groups = group_by_wwid(&disks);
        let grouped: usize = groups.iter().map(|(_, ds)| ds.len()).sum();
        assert_eq!(grouped, disks.iter().filter(|d| d.wwid.is_some()).count());
    }
    if let Ok(names) = sysfs.block_devices() {
        for n in &names {
            let _ = sysfs.block_devt(n);
            let _ = sysfs.device_state(n);
            let _ = sysfs.read_only(n);
            let _ = sysfs.iscsi_path(n);
        }
    }
    let extra = component(&input.extra_name);
    let _ = sysfs.block_devt(&extra);
    let _ = sysfs.device_state(&extra);
    let _ = sysfs.iscsi_path(&extra);

    let _ = fs::remove_dir_all(root);
});
