//! [`DmBackend`] on the kernel's device-mapper, through the devicemapper crate: the only
//! code in mpathd that issues dm ioctls.
//!
//! # What the kernel reads back
//!
//! A table is not read back as it was loaded (6.1, `dm-mpath.c` and the selectors); see
//! [`super::tables_match`], which compares tables modulo these differences:
//! - round-robin, queue-length and service-time always print a repeat count of 1 (and
//!   service-time its relative throughput, default 1), and always print their full
//!   per-path argument count (1, 1 and 2), whatever was loaded;
//! - group-wide selector arguments read back as `0`;
//! - `queue_mode rq`/`mq` read back as nothing, `queue_mode bio` adds
//!   `retain_attached_hw_handler`;
//! - the initial group reads back as the group the next I/O goes to, so it follows
//!   `switch_group` and failovers;
//! - `queue_if_no_path` follows the `queue_if_no_path`/`fail_if_no_path` messages;
//! - paths read back as `MAJ:MIN` (tables are loaded with `MAJ:MIN` only).
//!
//! # /dev/mapper nodes
//!
//! The kernel makes `/dev/dm-<minor>` (devtmpfs) but never `/dev/mapper/<name>`: that is
//! udev's job (55-dm.rules links it on the change event of a resume) or, when udev does
//! not run, libdevmapper's "fallback" that makes the node itself. The devicemapper crate
//! has no fallback. When udevd runs (`/run/udev/control` exists) it takes part in udev's
//! cookie protocol: a resume or remove waits until udev's rules ran (95-dm-notify.rules).
//! - Without udevd, [`KernelDm`] makes a block node itself after a create, as
//!   libdevmapper does.
//! - With udevd, the link is udev's. A resume returns as soon as the kernel has the table
//!   live, and the crate's wait for udev goes on in a thread of its own (see
//!   `KernelDm::resume`), so the link appears shortly after a create returns.
//! - After a remove (which does wait for udev), [`KernelDm`] deletes whatever is left at
//!   `/dev/mapper/<name>` that still names the removed map.
//!
//! The lab scenario dm-kernel runs the tests both ways. Known hazard (the crate's, and
//! libdevmapper's): with udevd running but without device-mapper's udev rules, a remove
//! waits for a udev confirmation that never comes, and so does a resume's thread.

use std::{
    ffi::CString,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use devicemapper::{
    DM, DevId, DeviceInfo, DmFlags, DmName, DmOptions, DmUuid, errors as dm_errors,
};

use super::{
    DmBackend, DmError, MapInfo, Message, MultipathStatus, MultipathTable, backend::check_table,
};
use crate::model::DevT;

const CONTROL: &str = "/dev/mapper/control";
const MAPPER_DIR: &str = "/dev/mapper";
const UDEV_CONTROL: &str = "/run/udev/control";
/// Longest wait for the kernel to resume a map (it does not wait for I/O).
const RESUME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long remove() waits for a map's openers to go away before it says Busy.
const BUSY_GRACE: Duration = Duration::from_secs(1);
/// Group `disk`, as libdevmapper and udev give block devices.
const DISK_GID: u32 = 6;
const TARGET: &str = "multipath";

/// The kernel's device-mapper.
pub struct KernelDm {
    dm: DM,
}

impl KernelDm {
    /// Opens /dev/mapper/control.
    pub fn new() -> Result<Self, DmError> {
        let fail = |message: String| DmError::Kernel {
            name: "device-mapper".into(),
            op: "open /dev/mapper/control",
            message,
        };
        if !Path::new(CONTROL).exists() {
            return Err(fail(
                "no such device node: the kernel has no device-mapper (modprobe dm_mod), \
                 or /dev is not devtmpfs or udev-managed"
                    .into(),
            ));
        }
        let dm = DM::new().map_err(|e| fail(format!("{e} (mpathd needs root)")))?;
        // One harmless ioctl, so a control node that does not answer fails here.
        dm.version()
            .map_err(|e| fail(format!("the version ioctl failed: {}", describe(&e))))?;
        Ok(Self { dm })
    }

    fn kernel_err(name: &str, op: &'static str, message: String) -> DmError {
        DmError::Kernel {
            name: name.to_string(),
            op,
            message,
        }
    }

    /// Maps a crate error to ours: ENXIO (no such map) is [`DmError::NotFound`].
    fn map_err(name: &str, op: &'static str, e: &devicemapper::DmError) -> DmError {
        match errno(e) {
            Some(libc::ENXIO) => DmError::NotFound(name.to_string()),
            _ => Self::kernel_err(name, op, describe(e)),
        }
    }

    /// Whether a failed ioctl failed because the map is not there. The kernel also says
    /// ENXIO for a path device that does not exist, so the map is looked up to tell.
    fn map_missing(&self, name: &str, e: &devicemapper::DmError) -> bool {
        errno(e) == Some(libc::ENXIO)
            && DmName::new(name).is_ok_and(|n| {
                self.dm
                    .device_info(&DevId::Name(n))
                    .is_err_and(|e| errno(&e) == Some(libc::ENXIO))
            })
    }

    /// The live table's targets and the map's info (`None`: no such map).
    #[allow(clippy::type_complexity)]
    fn live(
        &self,
        name: &str,
        op: &'static str,
        flags: DmFlags,
    ) -> Result<Option<(DeviceInfo, Vec<(u64, u64, String, String)>)>, DmError> {
        let dname = dm_name(name)?;
        match self
            .dm
            .table_status(&DevId::Name(dname), DmOptions::default().set_flags(flags))
        {
            Ok(r) => Ok(Some(r)),
            Err(e) if errno(&e) == Some(libc::ENXIO) => Ok(None),
            Err(e) => Err(Self::kernel_err(name, op, describe(&e))),
        }
    }

    /// The params of the live table's single multipath target.
    fn multipath_params(
        &self,
        name: &str,
        op: &'static str,
        flags: DmFlags,
    ) -> Result<String, DmError> {
        let (_, targets) = self
            .live(name, op, flags)?
            .ok_or_else(|| DmError::NotFound(name.to_string()))?;
        match single_multipath(&targets) {
            Ok(params) => Ok(params.to_string()),
            Err(target) => Err(DmError::NotMultipath {
                name: name.to_string(),
                target,
            }),
        }
    }

    /// Loads `table` into `name`'s inactive slot.
    fn load(&self, name: &str, size: u64, table: &MultipathTable) -> Result<(), DmError> {
        let params = table.to_string();
        let targets = [(0, size, TARGET.to_string(), params.clone())];
        self.dm
            .table_load(&DevId::Name(dm_name(name)?), &targets, DmOptions::default())
            .map(|_| ())
            .map_err(|e| {
                if self.map_missing(name, &e) {
                    return DmError::NotFound(name.to_string());
                }
                let hint = self.load_hint(table);
                Self::kernel_err(
                    name,
                    "load table",
                    format!("{} for \"0 {size} {TARGET} {params}\"{hint}", describe(&e)),
                )
            })
    }

    /// What to check when the kernel refuses a table.
    fn load_hint(&self, table: &MultipathTable) -> String {
        let missing: Vec<&str> = table
            .path_devs()
            .filter(|d| !Path::new("/sys/dev/block").join(d).exists())
            .collect();
        if !missing.is_empty() {
            return format!(
                ": path device(s) {} do not exist (no /sys/dev/block/MAJ:MIN)",
                missing.join(", ")
            );
        }
        let have_target = self
            .dm
            .list_versions()
            .map(|v| v.iter().any(|(t, ..)| t == TARGET))
            .unwrap_or(true);
        if !have_target {
            return ": the kernel has no multipath target: is dm_multipath loaded? \
                    (modprobe dm_multipath)"
                .into();
        }
        let selectors: Vec<&str> = {
            let mut s: Vec<&str> = table
                .groups
                .iter()
                .map(|g| g.selector.name.as_str())
                .collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        let handler = table
            .hw_handler
            .as_ref()
            .map(|h| {
                format!(
                    ", hardware handler {} (scsi_dh_{}; SCSI paths only)",
                    h.name, h.name
                )
            })
            .unwrap_or_default();
        format!(
            ": the kernel log (dmesg) says why; check the path selector(s) {} \
             (modprobe dm_<selector>){handler}",
            selectors.join(", ")
        )
    }

    fn clear_inactive(&self, name: &str) -> Result<(), DmError> {
        let dname = dm_name(name)?;
        self.dm
            .table_clear(&DevId::Name(dname))
            .map(|_| ())
            .map_err(|e| Self::map_err(name, "clear the inactive table", &e))
    }

    /// Resumes a map and returns once the kernel has its table live.
    ///
    /// With udevd running, the crate's resume also waits until udev has run every rule
    /// for the map's change event (the /dev/mapper link, blkid, kpartx). That costs far
    /// more than the resume itself (0.5 to 2 s per map in the lab) and nothing here
    /// needs it, so the waiting resume runs on a thread of its own and this call only
    /// waits for the kernel: the map is usable as soon as it is resumed, and udev makes
    /// its link shortly after. The thread ends when udev is done.
    fn resume(&self, name: &str) -> Result<DeviceInfo, devicemapper::DmError> {
        let dname = DmName::new(name)?;
        if !udev_running() {
            return self
                .dm
                .device_suspend(&DevId::Name(dname), DmOptions::default());
        }
        let owned = name.to_string();
        let waiter = std::thread::Builder::new()
            .name(format!("dm-resume-{name}"))
            .stack_size(64 << 10)
            .spawn(move || {
                let dm = DM::new()?;
                let r = dm.device_suspend(&DevId::Name(DmName::new(&owned)?), DmOptions::default());
                if let Err(e) = &r {
                    tracing::debug!("{owned}: resume (udev-synchronised): {}", describe(e));
                }
                r
            })
            .map_err(|e| devicemapper::DmError::Core(dm_errors::Error::GeneralIo(e.to_string())))?;
        let end = Instant::now() + RESUME_TIMEOUT;
        // The resume is usually done within a millisecond; the wait grows from there so
        // that 128 creates at start-up do not poll the kernel 128,000 times a second.
        let mut nap = Duration::from_millis(1);
        loop {
            if waiter.is_finished() {
                return waiter.join().unwrap_or_else(|_| {
                    Err(devicemapper::DmError::Core(dm_errors::Error::GeneralIo(
                        "the resume thread panicked".into(),
                    )))
                });
            }
            let info = self.dm.device_info(&DevId::Name(dname))?;
            let f = info.flags();
            if f.contains(DmFlags::DM_ACTIVE_PRESENT)
                && !f.intersects(DmFlags::DM_SUSPEND | DmFlags::DM_INACTIVE_PRESENT)
            {
                return Ok(info);
            }
            if Instant::now() > end {
                return Err(devicemapper::DmError::Core(dm_errors::Error::GeneralIo(
                    format!("not resumed after {RESUME_TIMEOUT:?}"),
                )));
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(16));
        }
    }

    /// Removes a map we are creating, after a failed step; `err` is that step's error.
    fn undo_create(&self, name: &str, err: DmError) -> DmError {
        let Ok(dname) = DmName::new(name) else {
            return err;
        };
        match self
            .dm
            .device_remove(&DevId::Name(dname), DmOptions::default())
        {
            Ok(_) => err,
            Err(e) => Self::kernel_err(
                name,
                "create",
                format!(
                    "{err}; removing the half-made map failed too ({}): remove it with \
                     `dmsetup remove {name}`",
                    describe(&e)
                ),
            ),
        }
    }
}

/// The errno of a failed ioctl.
fn errno(e: &devicemapper::DmError) -> Option<i32> {
    match e {
        devicemapper::DmError::Core(dm_errors::Error::Ioctl(_, _, _, errno)) => {
            Some(**errno as i32)
        }
        _ => None,
    }
}

/// A short description of a crate error (its own Display dumps whole ioctl headers).
fn describe(e: &devicemapper::DmError) -> String {
    match errno(e) {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    }
}

fn invalid(name: &str, message: impl Into<String>) -> DmError {
    DmError::Invalid {
        name: name.to_string(),
        message: message.into(),
    }
}

/// A name the kernel and /dev/mapper accept.
fn dm_name(name: &str) -> Result<&DmName, DmError> {
    if name.contains('/') || name == "." || name == ".." || name == "control" {
        return Err(invalid(
            name,
            "not a usable map name (no '/', not \".\", \"..\" or \"control\")",
        ));
    }
    DmName::new(name).map_err(|e| invalid(name, format!("not a usable map name: {e}")))
}

/// The params of the only target if it is `multipath`, else what the table holds.
fn single_multipath(targets: &[(u64, u64, String, String)]) -> Result<&str, String> {
    match targets {
        [(_, _, t, params)] if t == TARGET => Ok(params),
        [(_, _, t, _)] => Err(t.clone()),
        [] => Err("none: no live table".into()),
        many => Err(format!(
            "{} targets: {}",
            many.len(),
            many.iter()
                .map(|t| t.2.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn map_info(name: &str, info: &DeviceInfo, targets: &[(u64, u64, String, String)]) -> MapInfo {
    let dev = info.device();
    MapInfo {
        name: name.to_string(),
        uuid: info.uuid().map(|u| u.to_string()).filter(|u| !u.is_empty()),
        dev: DevT::new(dev.major, dev.minor),
        open_count: u32::try_from(info.open_count()).unwrap_or(0),
        suspended: info.flags().contains(DmFlags::DM_SUSPEND),
        size_sectors: targets.iter().map(|t| t.1).sum(),
    }
}

/// Paths must be `MAJ:MIN`: the kernel reads them back so, and a `/dev` path could name
/// another device by the time the table loads.
fn node_path(name: &str) -> PathBuf {
    Path::new(MAPPER_DIR).join(name)
}

/// Whether `/dev/mapper/<name>` resolves to the block device `dev`.
fn node_is(path: &Path, dev: DevT) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device() && devt_of(&m) == dev)
}

fn devt_of(m: &std::fs::Metadata) -> DevT {
    let r = m.rdev();
    DevT::new(libc::major(r), libc::minor(r))
}

fn udev_running() -> bool {
    Path::new(UDEV_CONTROL).exists()
}

/// Makes sure `/dev/mapper/<name>` is the map's block device (see the module docs).
fn ensure_node(name: &str, dev: DevT) -> Result<(), String> {
    let path = node_path(name);
    if node_is(&path, dev) {
        return Ok(());
    }
    if udev_running() {
        // udev makes the link once it has run the map's rules (see `resume`); a node of
        // ours would only race with it.
        return Ok(());
    }
    // Made under a temporary name and renamed over whatever is there (a stale node or
    // a dangling link of an earlier map of this name), so the name never points at
    // the wrong device.
    let tmp = Path::new(MAPPER_DIR).join(format!(".mpathd-{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let ctmp = CString::new(tmp.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} has a NUL byte", tmp.display()))?;
    let mode = libc::S_IFBLK | 0o660;
    // SAFETY: a valid C string; mknod does not keep the pointer.
    let r = unsafe { libc::mknod(ctmp.as_ptr(), mode, libc::makedev(dev.major, dev.minor)) };
    if r != 0 {
        return Err(format!(
            "mknod {} (block {dev}): {}",
            tmp.display(),
            std::io::Error::last_os_error()
        ));
    }
    // mknod's mode went through the umask; group disk may read and write, as udev sets.
    // SAFETY: as above.
    let ok = unsafe {
        libc::chown(ctmp.as_ptr(), 0, DISK_GID) == 0 && libc::chmod(ctmp.as_ptr(), 0o660) == 0
    };
    let res = if ok {
        std::fs::rename(&tmp, &path).map_err(|e| format!("rename to {}: {e}", path.display()))
    } else {
        Err(format!(
            "chown/chmod {}: {}",
            tmp.display(),
            std::io::Error::last_os_error()
        ))
    };
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// After a remove: deletes `/dev/mapper/<name>` if it still names the removed map.
fn remove_node(name: &str, dev: DevT) -> Result<(), String> {
    let path = node_path(name);
    let Ok(m) = std::fs::symlink_metadata(&path) else {
        return Ok(());
    };
    let stale = if m.file_type().is_block_device() {
        devt_of(&m) == dev
    } else if m.file_type().is_symlink() {
        std::fs::read_link(&path)
            .is_ok_and(|t| t.file_name() == Some(format!("dm-{}", dev.minor).as_ref()))
    } else {
        false
    };
    if stale {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing {}: {e}", path.display())),
        }
    }
    Ok(())
}

impl DmBackend for KernelDm {
    fn list(&self) -> Result<Vec<MapInfo>, DmError> {
        let devs = self
            .dm
            .list_devices()
            .map_err(|e| Self::kernel_err("device-mapper", "list maps", describe(&e)))?;
        let mut out = Vec::new();
        for (name, _, _) in devs {
            let name = name.to_string();
            // A map removed since the listing is skipped (live gives None).
            let Some((info, targets)) = self.live(&name, "list", DmFlags::DM_STATUS_TABLE)? else {
                continue;
            };
            if single_multipath(&targets).is_ok() {
                out.push(map_info(&name, &info, &targets));
            }
        }
        Ok(out)
    }

    fn info(&self, name: &str) -> Result<Option<MapInfo>, DmError> {
        Ok(self
            .live(name, "info", DmFlags::DM_STATUS_TABLE)?
            .map(|(info, targets)| map_info(name, &info, &targets)))
    }

    fn table(&self, name: &str) -> Result<MultipathTable, DmError> {
        let params = self.multipath_params(name, "read table", DmFlags::DM_STATUS_TABLE)?;
        params.parse().map_err(|source| DmError::Parse {
            name: name.to_string(),
            what: "table",
            source: Box::new(source),
        })
    }

    fn status(&self, name: &str) -> Result<MultipathStatus, DmError> {
        let params = self.multipath_params(name, "read status", DmFlags::empty())?;
        params.parse().map_err(|source| DmError::Parse {
            name: name.to_string(),
            what: "status",
            source: Box::new(source),
        })
    }

    fn create(
        &self,
        name: &str,
        uuid: &str,
        size_sectors: u64,
        table: &MultipathTable,
    ) -> Result<MapInfo, DmError> {
        let dname = dm_name(name)?;
        let duuid = DmUuid::new(uuid).map_err(|e| invalid(name, format!("uuid {uuid:?}: {e}")))?;
        check_table(name, table)?;
        if size_sectors == 0 {
            return Err(invalid(name, "size 0: a map needs at least one sector"));
        }
        // The kernel refuses a name or uuid in use (EBUSY); which one is looked up only
        // then, so a create costs no lookups (128 maps at start-up).
        self.dm
            .device_create(dname, Some(duuid), DmOptions::default())
            .map_err(|e| match errno(&e) {
                Some(libc::EBUSY) | Some(libc::EEXIST) => {
                    if matches!(self.info(name), Ok(Some(_))) {
                        return DmError::Exists(name.to_string());
                    }
                    match self.dm.device_info(&DevId::Uuid(duuid)) {
                        Ok(other) => invalid(
                            name,
                            format!(
                                "uuid {uuid} is already used by map {:?}",
                                other.name().map(|n| n.to_string()).unwrap_or_default()
                            ),
                        ),
                        Err(_) => DmError::Exists(name.to_string()),
                    }
                }
                _ => Self::kernel_err(name, "create", describe(&e)),
            })?;
        if let Err(e) = self.load(name, size_sectors, table) {
            return Err(self.undo_create(name, e));
        }
        let info = match self.resume(name) {
            Ok(i) => i,
            Err(e) => {
                let err = Self::kernel_err(
                    name,
                    "activate (resume)",
                    format!("{}: the kernel log (dmesg) says why", describe(&e)),
                );
                return Err(self.undo_create(name, err));
            }
        };
        let dev = info.device();
        let dev = DevT::new(dev.major, dev.minor);
        if let Err(e) = ensure_node(name, dev) {
            let err = Self::kernel_err(
                name,
                "create /dev/mapper node",
                format!("{e}: is /dev writable?"),
            );
            return Err(self.undo_create(name, err));
        }
        // What the resume reported, rather than one more ioctl per map.
        Ok(MapInfo {
            name: name.to_string(),
            uuid: Some(uuid.to_string()),
            dev,
            open_count: u32::try_from(info.open_count()).unwrap_or(0),
            suspended: false,
            size_sectors,
        })
    }

    fn reload(&self, name: &str, size_sectors: u64, table: &MultipathTable) -> Result<(), DmError> {
        let dname = dm_name(name)?;
        check_table(name, table)?;
        if self.info(name)?.is_none() {
            return Err(DmError::NotFound(name.to_string()));
        }
        if let Err(e) = self.load(name, size_sectors, table) {
            // A failed load may leave an older inactive table behind: never let a later
            // resume activate it.
            return Err(match self.clear_inactive(name) {
                Ok(()) => e,
                Err(c) => Self::kernel_err(name, "load table", format!("{e}; and {c}")),
            });
        }
        // noflush: I/O queued in the map (queue_if_no_path) stays queued instead of
        // failing; skip_lockfs: no file system freeze, which would wait for that I/O.
        let suspend = DmOptions::default()
            .set_flags(DmFlags::DM_SUSPEND | DmFlags::DM_NOFLUSH | DmFlags::DM_SKIP_LOCKFS);
        if let Err(e) = self.dm.device_suspend(&DevId::Name(dname), suspend) {
            let err = Self::kernel_err(
                name,
                "suspend (noflush) for reload",
                format!("{}: the live table stays", describe(&e)),
            );
            return Err(match self.clear_inactive(name) {
                Ok(()) => err,
                Err(c) => Self::kernel_err(name, "reload", format!("{err}; and {c}")),
            });
        }
        if let Err(e) = self.resume(name) {
            // The kernel consumed the inactive table: a second resume brings back the
            // old live table if the swap is what failed.
            let first = describe(&e);
            return Err(match self.resume(name) {
                Ok(_) => Self::kernel_err(
                    name,
                    "resume with the new table",
                    format!("{first}: the old table is live again (see dmesg)"),
                ),
                Err(e2) => Self::kernel_err(
                    name,
                    "resume with the new table",
                    format!(
                        "{first}, then {}: the map is left SUSPENDED and its I/O waits; \
                         see dmesg, then `dmsetup resume {name}`",
                        describe(&e2)
                    ),
                ),
            });
        }
        // Best effort: a map adopted from a tool that made no node gets one.
        if let Some(info) = self.info(name)?
            && let Err(e) = ensure_node(name, info.dev)
        {
            tracing::warn!("{name}: reloaded, but /dev/mapper/{name} is missing: {e}");
        }
        Ok(())
    }

    fn rename(&self, name: &str, new_name: &str) -> Result<(), DmError> {
        let dname = dm_name(name)?;
        let new = dm_name(new_name)?;
        let info = self
            .info(name)?
            .ok_or_else(|| DmError::NotFound(name.to_string()))?;
        if self.info(new_name)?.is_some() {
            return Err(DmError::Exists(new_name.to_string()));
        }
        self.dm
            .device_rename(dname, &DevId::Name(new))
            .map_err(|e| Self::map_err(name, "rename", &e))?;
        // Without udevd the /dev/mapper node is ours (see the module docs); with it, the
        // change event of the rename moves udev's link.
        if let Err(e) = ensure_node(new_name, info.dev) {
            tracing::warn!("{new_name}: renamed, but /dev/mapper/{new_name} is missing: {e}");
        }
        if !udev_running()
            && let Err(e) = remove_node(name, info.dev)
        {
            tracing::warn!("{new_name}: renamed from {name}, but the old node stays: {e}");
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), DmError> {
        let dname = dm_name(name)?;
        let mut info = self
            .info(name)?
            .ok_or_else(|| DmError::NotFound(name.to_string()))?;
        // Openers that come and go (udev's blkid right after a create or reload) get a
        // moment to finish; a mount or a process holding the map does not go away.
        let end = Instant::now() + BUSY_GRACE;
        while info.open_count > 0 {
            if Instant::now() >= end {
                return Err(DmError::Busy {
                    name: name.to_string(),
                    open_count: info.open_count,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
            info = self
                .info(name)?
                .ok_or_else(|| DmError::NotFound(name.to_string()))?;
        }
        if let Err(e) = self
            .dm
            .device_remove(&DevId::Name(dname), DmOptions::default())
        {
            return Err(match errno(&e) {
                Some(libc::ENXIO) => DmError::NotFound(name.to_string()),
                Some(libc::EBUSY) => DmError::Busy {
                    name: name.to_string(),
                    open_count: self
                        .info(name)
                        .ok()
                        .flatten()
                        .map_or(0, |i| i.open_count.max(1)),
                },
                _ => Self::kernel_err(name, "remove", describe(&e)),
            });
        }
        remove_node(name, info.dev).map_err(|e| {
            Self::kernel_err(
                name,
                "remove /dev/mapper node",
                format!("the map is gone, but {e}"),
            )
        })
    }

    fn message(&self, name: &str, msg: &Message) -> Result<(), DmError> {
        let dname = dm_name(name)?;
        let text = msg.to_string();
        self.dm
            .target_msg(&DevId::Name(dname), Some(0), &text)
            .map(|_| ())
            .map_err(|e| {
                if self.map_missing(name, &e) {
                    return DmError::NotFound(name.to_string());
                }
                let why = match errno(&e) {
                    Some(libc::EINVAL | libc::ENXIO | libc::ENODEV) => {
                        ": does the map's table have that path or group? (dmesg says more)"
                    }
                    _ => "",
                };
                Self::kernel_err(
                    name,
                    "message",
                    format!("the kernel refused \"{text}\" ({}){why}", describe(&e)),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_break_dev_mapper_are_refused() {
        for bad in ["", "a/b", ".", "..", "control"] {
            assert!(
                matches!(dm_name(bad), Err(DmError::Invalid { .. })),
                "{bad:?}"
            );
        }
        assert!(dm_name(&"x".repeat(200)).is_err());
        assert!(dm_name("mpatha").is_ok());
    }

    #[test]
    fn only_single_multipath_targets_count() {
        let t = |ty: &str| (0u64, 8u64, ty.to_string(), "p".to_string());
        assert_eq!(single_multipath(&[t("multipath")]), Ok("p"));
        assert_eq!(single_multipath(&[t("linear")]), Err("linear".into()));
        assert!(single_multipath(&[]).unwrap_err().contains("no live table"));
        assert!(
            single_multipath(&[t("multipath"), t("linear")])
                .unwrap_err()
                .starts_with("2 targets")
        );
    }

    #[test]
    fn tables_need_device_numbers() {
        let t = MultipathTable::failover(["/dev/sda"]);
        let e = check_table("m", &t).unwrap_err().to_string();
        assert!(e.contains("not MAJ:MIN"), "{e}");
        assert!(check_table("m", &MultipathTable::failover(["8:0"])).is_ok());
    }
}
