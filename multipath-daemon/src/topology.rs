//! What the host's storage is made of, read from sysfs: block devices and, for iSCSI
//! paths, the session, target and TCP connection behind each. The only module that reads
//! sysfs.
//!
//! Everything is read relative to a root directory (`/` on a host, a recorded tree in
//! tests), so the code is tested against real layouts without the hardware.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use crate::model::{Conn, DevT};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}: {text:?}")]
    Parse {
        path: PathBuf,
        what: String,
        text: String,
    },
    #[error("no block device named {0} (looked in {1})")]
    NoDevice(String, PathBuf),
}

/// A SCSI disk reached over iSCSI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IscsiPath {
    /// Kernel name, e.g. `sda`.
    pub name: String,
    pub dev: DevT,
    /// SCSI address host:channel:target:lun.
    pub hctl: String,
    /// `session3`
    pub session: String,
    pub target: String,
    /// The session's state (LOGGED_IN, FAILED, FREE).
    pub session_state: String,
    /// Seconds the session waits for a lost connection before failing IO.
    pub recovery_tmo: Option<u32>,
    /// The portal the session was logged in to (persistent across reconnects).
    pub portal: SocketAddr,
    /// The connection now, when the session has one: the initiator's address (its iSCSI
    /// host's `ipaddress`) and local port, and the portal's current address.
    pub conn: Option<Conn>,
}

/// A SCSI disk: one path to a LUN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiDisk {
    /// Kernel name, e.g. `sda`.
    pub name: String,
    pub dev: DevT,
    /// SCSI address host:channel:target:lun.
    pub hctl: String,
    pub vendor: String,
    pub model: String,
    pub rev: String,
    pub size_bytes: u64,
    /// The SCSI device's state (running, offline, transport-offline, blocked...).
    pub state: String,
    /// The LUN's identifier as `scsi_id -g -u` prints it (and multipath-tools keys maps
    /// by), from the kernel's `wwid` attribute; `None` when the LUN reports none.
    pub wwid: Option<String>,
    /// ALUA access state of this path's target port group (`active/optimized`,
    /// `active/non-optimized`, `standby`, `unavailable`, `lba-dependent`, `offline`,
    /// `transitioning`), when the ALUA device handler is attached; the `alua` prio
    /// source reads it.
    pub access_state: Option<String>,
    /// The target marks this path's port group preferred (the PREF bit of REPORT TARGET
    /// PORT GROUPS, the kernel's `preferred_path`).
    pub preferred: bool,
}

/// A path's ALUA state as the kernel's device handler last learned it (from REPORT
/// TARGET PORT GROUPS, re-sent when the target reports a state change).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alua {
    /// `None` when no ALUA handler is attached to the device.
    pub access_state: Option<String>,
    pub preferred: bool,
}

/// SCSI disks grouped by the LUN they reach (WWID), in WWID order; disks without a WWID
/// are left out (nothing can be grouped by identity without one).
pub fn group_by_wwid(disks: &[ScsiDisk]) -> Vec<(String, Vec<&ScsiDisk>)> {
    let mut groups: std::collections::BTreeMap<&str, Vec<&ScsiDisk>> = Default::default();
    for d in disks {
        if let Some(w) = d.wwid.as_deref() {
            groups.entry(w).or_default().push(d);
        }
    }
    groups
        .into_iter()
        .map(|(w, ds)| (w.to_owned(), ds))
        .collect()
}

/// Turns the kernel's `wwid` attribute (VPD page 0x83, `naa.`/`eui.`/`t10.` prefixed)
/// into the form `scsi_id -g -u` prints: the designator type as a digit, then the id,
/// whitespace runs folded into one `_` and trimmed.
pub fn scsi_id_wwid(sysfs_wwid: &str) -> Option<String> {
    let w = sysfs_wwid.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if w.is_empty() {
        return None;
    }
    let (digit, rest) = match w.split_at_checked(4) {
        Some(("naa.", r)) => ("3", r),
        Some(("eui.", r)) => ("2", r),
        Some(("t10.", r)) => ("1", r),
        _ => ("", w),
    };
    let mut out = String::from(digit);
    let mut gap = false;
    for c in rest.trim().chars() {
        if c.is_whitespace() {
            gap = true;
        } else {
            if gap {
                out.push('_');
                gap = false;
            }
            out.push(c);
        }
    }
    Some(out)
}

/// sysfs under `root`.
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self::new("/")
    }
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// `/sys/block/<name>`; a name that is not a plain kernel name (a `/`, `.` or `..`)
    /// could reach outside the tree and is refused.
    fn block_dir(&self, name: &str) -> Result<PathBuf, TopologyError> {
        if name.is_empty()
            || name.contains('/')
            || name == "."
            || name == ".."
            || name.contains('\0')
        {
            return Err(TopologyError::NoDevice(name.into(), self.path("sys/block")));
        }
        Ok(self.path("sys/block").join(name))
    }

    /// The device number of a block device by kernel name.
    pub fn block_devt(&self, name: &str) -> Result<DevT, TopologyError> {
        let p = self.block_dir(name)?.join("dev");
        if !p.exists() {
            return Err(TopologyError::NoDevice(name.into(), self.path("sys/block")));
        }
        parse(&p, |t| t.parse::<DevT>())
    }

    /// A SCSI disk's device state now (`running`, `offline`, `transport-offline`...).
    pub fn device_state(&self, name: &str) -> Result<String, TopologyError> {
        read(&self.block_dir(name)?.join("device/state"))
    }

    /// A SCSI disk's ALUA state now: two small reads, cheap enough for every checker
    /// interval, so a port group the target moved is seen without a full scan.
    pub fn alua(&self, name: &str) -> Result<Alua, TopologyError> {
        let sdev = self.block_dir(name)?.join("device");
        if !sdev.exists() {
            return Err(TopologyError::NoDevice(name.into(), self.path("sys/block")));
        }
        Ok(Alua {
            // Absent without a handler; the kernel answers EINVAL when it has none.
            access_state: read(&sdev.join("access_state")).ok(),
            preferred: read(&sdev.join("preferred_path")).is_ok_and(|p| p == "1"),
        })
    }

    /// Whether a block device is read-only; `None` when that cannot be read.
    pub fn read_only(&self, name: &str) -> Option<bool> {
        match read(&self.block_dir(name).ok()?.join("ro")).ok()?.as_str() {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        }
    }

    /// The kernel name of the block device numbered `dev` (`sdb` for 8:16), if sysfs has
    /// one: `/sys/dev/block/MAJ:MIN` names it, else each device's `dev` is read.
    pub fn block_name(&self, dev: DevT) -> Option<String> {
        let link = self.path("sys/dev/block").join(dev.to_string());
        if let Ok(target) = std::fs::read_link(&link)
            && let Some(name) = target.file_name()
        {
            return Some(name.to_string_lossy().into_owned());
        }
        self.block_devices()
            .ok()?
            .into_iter()
            .find(|n| self.block_devt(n).is_ok_and(|d| d == dev))
    }

    /// Block devices, by kernel name, sorted.
    pub fn block_devices(&self) -> Result<Vec<String>, TopologyError> {
        let dir = self.path("sys/block");
        let mut out: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|source| TopologyError::Io {
                path: dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every SCSI disk (sd*), sorted by name. A disk that disappears while being read is
    /// skipped; one whose attributes cannot be read is an error naming the file.
    pub fn scsi_disks(&self) -> Result<Vec<ScsiDisk>, TopologyError> {
        let mut out = Vec::new();
        for name in self.block_devices()? {
            let sdev = self.path("sys/block").join(&name).join("device");
            if !name.starts_with("sd") || !sdev.join("vendor").exists() {
                continue;
            }
            let real = match std::fs::canonicalize(&sdev) {
                Ok(p) => p,
                Err(_) => continue, // removed meanwhile
            };
            let block = self.path("sys/block").join(&name);
            let disk = (|| {
                Ok(ScsiDisk {
                    dev: self.block_devt(&name)?,
                    hctl: name_of(&real),
                    vendor: read(&sdev.join("vendor"))?,
                    model: read(&sdev.join("model"))?,
                    rev: read(&sdev.join("rev")).unwrap_or_default(),
                    size_bytes: parse(&block.join("size"), |t| t.parse::<u64>())?
                        .saturating_mul(512),
                    state: read(&sdev.join("state"))?,
                    wwid: read(&sdev.join("wwid")).ok().and_then(|w| scsi_id_wwid(&w)),
                    access_state: read(&sdev.join("access_state")).ok(),
                    preferred: read(&sdev.join("preferred_path")).is_ok_and(|p| p == "1"),
                    name: name.clone(),
                })
            })();
            match disk {
                Ok(d) => out.push(d),
                // Removed while being read (a logout during the scan): not an error.
                Err(_) if !block.exists() => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The iSCSI session and connection behind a block device; `None` when the device is
    /// not a SCSI disk on an iSCSI session.
    pub fn iscsi_path(&self, name: &str) -> Result<Option<IscsiPath>, TopologyError> {
        self.iscsi_path_cached(name, &mut SessionCache::default())
    }

    /// [`Sysfs::iscsi_path`] of many devices: each session's and connection's attributes
    /// are read once, not once per LUN (a session carries every LUN of its target: 128
    /// LUNs made a poll read them 128 times). Devices that are not iSCSI paths, or that
    /// cannot be read, are left out.
    pub fn iscsi_paths<'a>(
        &self,
        names: impl Iterator<Item = &'a str>,
    ) -> std::collections::BTreeMap<String, IscsiPath> {
        let mut cache = SessionCache::default();
        names
            .filter_map(|n| Some((n.to_string(), self.iscsi_path_cached(n, &mut cache).ok()??)))
            .collect()
    }

    fn iscsi_path_cached(
        &self,
        name: &str,
        cache: &mut SessionCache,
    ) -> Result<Option<IscsiPath>, TopologyError> {
        let dev = self.block_devt(name)?;
        let link = self.block_dir(name)?.join("device");
        let Ok(sdev) = std::fs::canonicalize(&link) else {
            return Ok(None); // no device link: not SCSI (loop, dm, nvme-ns...)
        };
        // .../platform/host0/session1/target0:0:0/0:0:0:0
        let session_dir = sdev.ancestors().find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.strip_prefix("session").is_some_and(is_number))
        });
        let Some(session_dir) = session_dir else {
            return Ok(None);
        };
        let s = match cache.0.get(session_dir) {
            Some(s) => s.clone(),
            None => {
                let s = session_attrs(session_dir)?;
                cache.0.insert(session_dir.to_owned(), s.clone());
                s
            }
        };
        Ok(Some(IscsiPath {
            name: name.to_owned(),
            dev,
            hctl: name_of(&sdev),
            target: s.target,
            session_state: s.session_state,
            recovery_tmo: s.recovery_tmo,
            session: s.session,
            portal: s.portal,
            conn: s.conn,
        }))
    }
}

/// What a session and its connection say, shared by every LUN of the session.
#[derive(Clone)]
struct SessionAttrs {
    session: String,
    target: String,
    session_state: String,
    recovery_tmo: Option<u32>,
    portal: SocketAddr,
    conn: Option<Conn>,
}

/// Sessions already read in one [`Sysfs::iscsi_paths`] call, by their sysfs directory.
#[derive(Default)]
struct SessionCache(std::collections::HashMap<PathBuf, SessionAttrs>);

fn session_attrs(session_dir: &Path) -> Result<SessionAttrs, TopologyError> {
    let session = name_of(session_dir);
    let sid = &session["session".len()..];
    let host_dir = session_dir.parent().unwrap_or(session_dir);
    let host = name_of(host_dir);
    let sattr = session_dir.join("iscsi_session").join(&session);
    let cattr = session_dir
        .join(format!("connection{sid}:0"))
        .join("iscsi_connection")
        .join(format!("connection{sid}:0"));
    let portal = SocketAddr::new(
        parse(&cattr.join("persistent_address"), |t| t.parse::<IpAddr>())?,
        parse(&cattr.join("persistent_port"), |t| t.parse::<u16>())?,
    );
    // The live connection: absent or unparsable while the session is reconnecting.
    let conn = (|| {
        let local_ip = read(&host_dir.join("iscsi_host").join(&host).join("ipaddress"))
            .ok()?
            .parse::<IpAddr>()
            .ok()?;
        let local_port = read(&cattr.join("local_port")).ok()?.parse::<u16>().ok()?;
        let remote_ip = read(&cattr.join("address")).ok()?.parse::<IpAddr>().ok()?;
        let remote_port = read(&cattr.join("port")).ok()?.parse::<u16>().ok()?;
        Some(Conn {
            local: SocketAddr::new(local_ip, local_port),
            remote: SocketAddr::new(remote_ip, remote_port),
        })
    })();
    Ok(SessionAttrs {
        target: read(&sattr.join("targetname"))?,
        session_state: read(&sattr.join("state"))?,
        recovery_tmo: read(&sattr.join("recovery_tmo"))
            .ok()
            .and_then(|t| t.parse().ok()),
        session,
        portal,
        conn,
    })
}

/// The sysfs tree recorded in the lab guest (Debian 6.1, LIO target on two portals).
#[cfg(test)]
pub(crate) const LAB_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sysfs/lab-2portals"
);

/// The recorded tree, read in place.
#[cfg(test)]
pub(crate) fn lab_fixture() -> Sysfs {
    Sysfs::new(LAB_FIXTURE)
}

/// Copies the recorded tree to `to`, for tests that write into it.
#[cfg(test)]
pub(crate) fn copy_lab_fixture(to: &Path) {
    let ok = std::process::Command::new("cp")
        .args(["-a", LAB_FIXTURE])
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "copying the recorded sysfs tree");
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A sysfs attribute, trimmed.
fn read(p: &Path) -> Result<String, TopologyError> {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_owned())
        .map_err(|source| TopologyError::Io {
            path: p.to_owned(),
            source,
        })
}

fn parse<T, E: std::fmt::Display>(
    p: &Path,
    f: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, TopologyError> {
    let text = read(p)?;
    f(&text).map_err(|e| TopologyError::Parse {
        path: p.to_owned(),
        what: e.to_string(),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Sysfs {
        lab_fixture()
    }

    #[test]
    fn finds_the_session_and_connection_behind_each_disk() {
        let s = lab();
        let a = s.iscsi_path("sda").unwrap().expect("sda is iSCSI");
        assert_eq!(a.dev, DevT::new(8, 0));
        assert_eq!(a.hctl, "0:0:0:0");
        assert_eq!(a.session, "session1");
        assert_eq!(a.target, "iqn.2003-01.org.mpathd.lab:tgt1");
        assert_eq!(a.session_state, "LOGGED_IN");
        assert_eq!(a.recovery_tmo, Some(5));
        assert_eq!(a.portal, "10.99.1.2:3260".parse().unwrap());
        assert_eq!(
            a.conn,
            Some(Conn {
                local: "10.99.1.1:58324".parse().unwrap(),
                remote: "10.99.1.2:3260".parse().unwrap(),
            })
        );
        let b = s.iscsi_path("sdb").unwrap().unwrap();
        assert_eq!((b.session.as_str(), b.dev), ("session2", DevT::new(8, 16)));
        assert_eq!(b.conn.unwrap().local.port(), 52502);
    }

    #[test]
    fn scsi_disks_with_their_lun_identity() {
        let disks = lab().scsi_disks().unwrap();
        let names: Vec<_> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["sda", "sdb"], "loop0 is not a SCSI disk");
        let a = &disks[0];
        assert_eq!((a.vendor.as_str(), a.model.as_str()), ("LIO-ORG", "FILEIO"));
        assert_eq!((a.hctl.as_str(), a.state.as_str()), ("0:0:0:0", "running"));
        assert_eq!(a.size_bytes, 256 << 20);
        // Both paths lead to one LUN: the identifier a map is keyed by.
        assert_eq!(a.wwid.as_deref(), Some("360014056001405f00dcafe0123456789"));
        assert_eq!(disks[1].wwid, a.wwid);
        let groups = group_by_wwid(&disks);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].1.len(), 2);
    }

    /// A writable copy of the recorded tree, for attributes the recording lacks.
    fn lab_copy(tag: &str) -> (Sysfs, PathBuf) {
        let root = std::env::temp_dir().join(format!("mpathd-topo-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        copy_lab_fixture(&root);
        (Sysfs::new(&root), root)
    }

    #[test]
    fn alua_state_and_preference_come_from_the_device_handler() {
        let (s, root) = lab_copy("alua");
        // The recording has no ALUA handler attached: no state, not preferred.
        assert_eq!(s.alua("sda").unwrap(), Alua::default());
        assert_eq!(s.scsi_disks().unwrap()[0].access_state, None);
        // As the kernel shows them once scsi_dh_alua is attached.
        let dev = |n: &str| root.join("sys/block").join(n).join("device");
        std::fs::write(dev("sda").join("access_state"), "active/optimized\n").unwrap();
        std::fs::write(dev("sda").join("preferred_path"), "0\n").unwrap();
        std::fs::write(dev("sdb").join("access_state"), "active/non-optimized\n").unwrap();
        std::fs::write(dev("sdb").join("preferred_path"), "1\n").unwrap();
        let disks = s.scsi_disks().unwrap();
        assert_eq!(
            (disks[0].access_state.as_deref(), disks[0].preferred),
            (Some("active/optimized"), false)
        );
        assert_eq!(
            (disks[1].access_state.as_deref(), disks[1].preferred),
            (Some("active/non-optimized"), true)
        );
        assert_eq!(
            s.alua("sdb").unwrap(),
            Alua {
                access_state: Some("active/non-optimized".into()),
                preferred: true
            }
        );
        // The target moved its optimized port: the light read sees it.
        std::fs::write(dev("sda").join("access_state"), "active/non-optimized\n").unwrap();
        assert_eq!(
            s.alua("sda").unwrap().access_state.as_deref(),
            Some("active/non-optimized")
        );
        // loop0 is no SCSI disk; sdz does not exist.
        assert!(matches!(s.alua("loop0"), Err(TopologyError::NoDevice(..))));
        assert!(matches!(s.alua("sdz"), Err(TopologyError::NoDevice(..))));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn wwids_print_as_scsi_id_does() {
        assert_eq!(
            scsi_id_wwid("naa.60014056001405f00dcafe0123456789\n").as_deref(),
            Some("360014056001405f00dcafe0123456789")
        );
        assert_eq!(
            scsi_id_wwid("eui.0025385b71b07e2f").as_deref(),
            Some("20025385b71b07e2f")
        );
        // The seed's IET LUN: `scsi_id -g -u` prints 1IET_00010001.
        assert_eq!(
            scsi_id_wwid("t10.IET     00010001  ").as_deref(),
            Some("1IET_00010001")
        );
        assert_eq!(scsi_id_wwid("  \0"), None);
        assert_eq!(scsi_id_wwid("weird").as_deref(), Some("weird"));
    }

    #[test]
    fn non_scsi_devices_are_not_iscsi_paths() {
        let s = lab();
        assert_eq!(s.iscsi_path("loop0").unwrap(), None);
        assert_eq!(s.block_devices().unwrap(), ["loop0", "sda", "sdb"]);
    }

    #[test]
    fn many_paths_read_at_once_are_the_paths_read_one_by_one() {
        let s = lab();
        let all = s.iscsi_paths(["sda", "loop0", "sdb", "sdz"].into_iter());
        // Not iSCSI, or not there: left out.
        assert_eq!(all.keys().collect::<Vec<_>>(), ["sda", "sdb"]);
        for n in ["sda", "sdb"] {
            assert_eq!(all[n], s.iscsi_path(n).unwrap().unwrap(), "{n}");
        }
        // Two LUNs of one session: its attributes are read once and both get them.
        let one = s.iscsi_paths(["sda", "sda"].into_iter());
        assert_eq!(one.len(), 1);
        assert_eq!(one["sda"].session, all["sda"].session);
    }

    #[test]
    fn names_that_leave_the_tree_are_refused() {
        let s = lab();
        for bad in ["../block/sda", "/sda", "..", "", "sda/../sdb"] {
            assert!(s.block_devt(bad).is_err(), "{bad:?}");
            assert!(s.iscsi_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_device_is_named_in_the_error() {
        let e = lab().iscsi_path("sdz").unwrap_err().to_string();
        assert!(e.starts_with("no block device named sdz"), "{e}");
    }
}
