//! What the daemon reads from sysfs and device-mapper, off the event loop: a full
//! [`Snapshot`] for a reconcile pass, a lighter [`Poll`] for the checker's interval.
//! Both are plain blocking functions run on a blocking thread; errors come back in the
//! result with their cause, never swallowed.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::{
    dm::{DmBackend, MultipathStatus},
    maps::LiveMap,
    topology::{Alua, IscsiPath, ScsiDisk, Sysfs},
};

/// Everything one reconcile pass plans from.
#[derive(Debug)]
pub struct Snapshot {
    /// The SCSI disks, or why they could not be read (the pass then keeps the last scan).
    pub disks: Result<Vec<ScsiDisk>, String>,
    /// The iSCSI session behind each disk, by disk name (only when asked for).
    pub iscsi: Option<BTreeMap<String, IscsiPath>>,
    /// Our multipath maps (uuid `mpath-`), or why device-mapper could not be listed.
    pub live: Result<Vec<LiveMap>, String>,
    /// Per map that could not be read: its name and the error (the map is left alone).
    pub unreadable: Vec<(String, String)>,
    pub scan: Duration,
    pub read_dm: Duration,
}

/// Reads the disks (and, with `iscsi`, their sessions) and our live maps.
pub fn snapshot<D: DmBackend + ?Sized>(sysfs: &Sysfs, dm: &D, iscsi: bool) -> Snapshot {
    let t0 = Instant::now();
    let disks = sysfs.scsi_disks().map_err(|e| e.to_string());
    let iscsi = match (&disks, iscsi) {
        (Ok(d), true) => Some(iscsi_of(sysfs, d.iter().map(|d| d.name.as_str()))),
        _ => None,
    };
    let scan = t0.elapsed();
    let t1 = Instant::now();
    let mut unreadable = Vec::new();
    let live = live_maps(dm, &mut unreadable);
    Snapshot {
        disks,
        iscsi,
        live,
        unreadable,
        scan,
        read_dm: t1.elapsed(),
    }
}

/// The iSCSI session behind each named disk that has one.
pub fn iscsi_of<'a>(
    sysfs: &Sysfs,
    names: impl Iterator<Item = &'a str>,
) -> BTreeMap<String, IscsiPath> {
    sysfs.iscsi_paths(names)
}

fn live_maps<D: DmBackend + ?Sized>(
    dm: &D,
    unreadable: &mut Vec<(String, String)>,
) -> Result<Vec<LiveMap>, String> {
    let mut out = Vec::new();
    for info in dm.list().map_err(|e| e.to_string())? {
        // Maps without our uuid prefix are someone else's: leave them alone.
        if info.wwid().is_none() {
            continue;
        }
        let table = match dm.table(&info.name) {
            Ok(t) => t,
            Err(e) => {
                unreadable.push((info.name.clone(), format!("reading its table: {e}")));
                continue;
            }
        };
        let status = match dm.status(&info.name) {
            Ok(s) => Some(s),
            Err(e) => {
                unreadable.push((info.name.clone(), format!("reading its status: {e}")));
                None
            }
        };
        out.push(LiveMap {
            info,
            table,
            status,
        });
    }
    Ok(out)
}

/// What the checker's interval reads: each managed map's status, and the iSCSI session
/// and ALUA state of each of its paths.
#[derive(Debug, Default)]
pub struct Poll {
    /// When the reads began (CLOCK_MONOTONIC ns): what mpathd changed after is newer.
    pub started_ns: u64,
    pub status: BTreeMap<String, Result<MultipathStatus, String>>,
    pub iscsi: BTreeMap<String, IscsiPath>,
    /// Each path's ALUA state, by disk name (a path gone meanwhile is left out): the
    /// target may move its optimized port at any time, and the TUR checker sees no
    /// difference between optimized and non-optimized.
    pub alua: BTreeMap<String, Alua>,
    pub took: Duration,
}

pub fn poll<D: DmBackend + ?Sized>(
    sysfs: &Sysfs,
    dm: &D,
    maps: &[String],
    paths: &[String],
) -> Poll {
    let t0 = Instant::now();
    let started_ns = crate::model::monotonic_ns();
    let status = maps
        .iter()
        .map(|m| (m.clone(), dm.status(m).map_err(|e| e.to_string())))
        .collect();
    let iscsi = iscsi_of(sysfs, paths.iter().map(String::as_str));
    let alua = paths
        .iter()
        .filter_map(|n| Some((n.clone(), sysfs.alua(n).ok()?)))
        .collect();
    Poll {
        started_ns,
        status,
        iscsi,
        alua,
        took: t0.elapsed(),
    }
}
