//! What `mpathd show` answers, from the daemon's own state ([`ViewCtx`], a copy taken on
//! the loop): each map's table and status as last read or changed by the daemon (the
//! checker's interval reads every status; every message the daemon sends updates its
//! copy), each path's mpathd state, priority and why it is in no map. Nothing here waits
//! on device-mapper, so an answer never waits behind a map stuck in a suspend.

use std::collections::BTreeMap;

use crate::{
    control::{GroupView, IscsiView, MapSummary, MapView, PathView, Topology},
    dm::{MapInfo, MultipathStatus, MultipathTable, PathState as DmPathState, PgState},
    health::PathHealthView,
    model::DevT,
    topology::{IscsiPath, ScsiDisk, Sysfs},
};

/// The daemon's state a view needs, copied from the loop.
#[derive(Clone, Debug, Default)]
pub struct ViewCtx {
    pub disks: Vec<ScsiDisk>,
    /// iSCSI sessions by disk name, as last read (others are read on demand).
    pub iscsi: BTreeMap<String, IscsiPath>,
    pub prio: BTreeMap<String, u32>,
    /// Paths left out of every map, with why.
    pub skipped: BTreeMap<String, String>,
    pub health: BTreeMap<DevT, PathHealthView>,
    /// The managed maps, by name.
    pub maps: Vec<MapCopy>,
}

/// A managed map as the daemon last knew it.
#[derive(Clone, Debug)]
pub struct MapCopy {
    pub info: MapInfo,
    pub table: MultipathTable,
    pub status: Option<MultipathStatus>,
}

pub fn topology(sysfs: &Sysfs, ctx: &ViewCtx) -> Topology {
    let mut maps = Vec::new();
    let by_dev: BTreeMap<String, &ScsiDisk> =
        ctx.disks.iter().map(|d| (d.dev.to_string(), d)).collect();
    for m in &ctx.maps {
        let (info, t, st) = (m.info.clone(), &m.table, m.status.clone());
        let mut groups = Vec::new();
        for (gi, g) in t.groups.iter().enumerate() {
            let gst = st.as_ref().and_then(|s| s.groups.get(gi));
            let mut paths = Vec::new();
            for p in &g.paths {
                let ps = gst
                    .and_then(|g| g.paths.iter().find(|x| x.dev == p.dev))
                    .map(|x| (x.state, x.fail_count))
                    .unwrap_or((DmPathState::Active, 0));
                paths.push(match by_dev.get(&p.dev) {
                    Some(d) => path_view(sysfs, ctx, d, Some(&info.name), Some(ps)),
                    None => gone_path(&p.dev, &info.name, ps),
                });
            }
            let mut policy = g.selector.name.clone();
            policy.push_str(&format!(" {}", g.selector.args.len()));
            for a in &g.selector.args {
                policy.push_str(&format!(" {a}"));
            }
            groups.push(GroupView {
                number: gi as u32 + 1,
                policy,
                prio: paths.iter().map(|p| p.prio).max().unwrap_or(0),
                status: match gst.map(|g| g.state) {
                    Some(PgState::Active) => "active",
                    Some(PgState::Enabled) => "enabled",
                    Some(PgState::Disabled) => "disabled",
                    None => "undef",
                }
                .into(),
                paths,
            });
        }
        let first = groups
            .iter()
            .flat_map(|g| g.paths.iter())
            .find(|p| !p.vendor.is_empty());
        let (features, hw_handler) = feature_and_handler_words(t);
        let sysfs_name = format!("dm-{}", info.dev.minor);
        maps.push(MapView {
            wwid: info.wwid().unwrap_or("-").to_string(),
            write_protect: match sysfs.read_only(&sysfs_name) {
                Some(true) => "ro",
                Some(false) => "rw",
                None => "?",
            }
            .into(),
            sysfs_name,
            dev: info.dev.to_string(),
            vendor: first.map(|p| p.vendor.clone()).unwrap_or_default(),
            product: first.map(|p| p.product.clone()).unwrap_or_default(),
            size_bytes: info.size_sectors.saturating_mul(512),
            features,
            hw_handler,
            open_count: info.open_count,
            name: info.name,
            groups,
        });
    }
    Topology { maps }
}

pub fn paths(sysfs: &Sysfs, ctx: &ViewCtx) -> Vec<PathView> {
    let topo = topology(sysfs, ctx);
    let mut in_maps: BTreeMap<String, PathView> = BTreeMap::new();
    for m in topo.maps {
        for g in m.groups {
            for p in g.paths {
                in_maps.insert(p.dev.clone(), p);
            }
        }
    }
    let mut out: Vec<PathView> = ctx
        .disks
        .iter()
        .map(|d| {
            in_maps
                .remove(&d.dev.to_string())
                .unwrap_or_else(|| path_view(sysfs, ctx, d, None, None))
        })
        .collect();
    out.extend(in_maps.into_values());
    out
}

pub fn maps(ctx: &ViewCtx) -> Vec<MapSummary> {
    ctx.maps
        .iter()
        .map(|m| MapSummary {
            wwid: m.info.wwid().unwrap_or("-").to_string(),
            sysfs_name: format!("dm-{}", m.info.dev.minor),
            paths: m.table.path_devs().count(),
            active_paths: m.status.as_ref().map(|s| s.active_paths()).unwrap_or(0),
            queue_if_no_path: m.table.queue_if_no_path(),
            open_count: m.info.open_count,
            size_bytes: m.info.size_sectors.saturating_mul(512),
            name: m.info.name.clone(),
        })
        .collect()
}

fn path_view(
    sysfs: &Sysfs,
    ctx: &ViewCtx,
    d: &ScsiDisk,
    map: Option<&str>,
    dm: Option<(DmPathState, u32)>,
) -> PathView {
    let fresh;
    let iscsi = match ctx.iscsi.get(&d.name) {
        Some(i) => Some(i),
        None => {
            fresh = sysfs.iscsi_path(&d.name).ok().flatten();
            fresh.as_ref()
        }
    };
    let h = map.and(ctx.health.get(&d.dev));
    PathView {
        name: d.name.clone(),
        dev: d.dev.to_string(),
        hctl: d.hctl.clone(),
        wwid: d.wwid.clone(),
        vendor: d.vendor.clone(),
        product: d.model.clone(),
        size_bytes: d.size_bytes,
        map: map.map(String::from),
        dm_state: match dm {
            Some((DmPathState::Active, _)) => "active",
            Some((DmPathState::Failed, _)) => "failed",
            None => "-",
        }
        .into(),
        state: h.map(|h| h.state),
        reason: h.map(|h| h.reason.to_string()),
        device_state: d.state.clone(),
        fail_count: dm.map(|x| x.1).unwrap_or(0),
        prio: ctx.prio.get(&d.name).copied().unwrap_or(0),
        note: ctx.skipped.get(&d.name).cloned(),
        iscsi: iscsi.map(|i| IscsiView {
            session: i.session.clone(),
            target: i.target.clone(),
            portal: i.portal.to_string(),
            state: i.session_state.clone(),
        }),
    }
}

/// A path the table names that sysfs no longer has (removed under the map).
fn gone_path(dev: &str, map: &str, dm: (DmPathState, u32)) -> PathView {
    PathView {
        name: "#".into(),
        dev: dev.into(),
        hctl: "#:#:#:#".into(),
        wwid: None,
        vendor: String::new(),
        product: String::new(),
        size_bytes: 0,
        map: Some(map.into()),
        dm_state: if dm.0 == DmPathState::Active {
            "active"
        } else {
            "failed"
        }
        .into(),
        state: None,
        reason: Some("the device is gone from sysfs".into()),
        device_state: "gone".into(),
        fail_count: dm.1,
        prio: 0,
        note: None,
        iscsi: None,
    }
}

/// The table's feature list and hardware handler as `multipath -ll` shows them: each
/// with its count first (`1 queue_if_no_path`, `0`).
fn feature_and_handler_words(t: &MultipathTable) -> (String, String) {
    let line = t.to_string();
    let mut w = line.split_whitespace();
    let mut counted = || {
        let n: usize = w.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let mut s = n.to_string();
        for _ in 0..n {
            s.push(' ');
            s.push_str(w.next().unwrap_or("?"));
        }
        s
    };
    let features = counted();
    let handler = counted();
    (features, handler)
}
