//! The loop's part of a scrape: the managed maps and their paths, copied from the engine.

use std::collections::BTreeMap;

use super::{MapMetrics, PathMetrics, Snapshot, Stats};
use crate::{daemon::Engine, health::PathState};

/// A [`Snapshot`] of what the engine holds and what the loop counted, for a scrape (no
/// I/O: the engine's last scan, tables and status, and the health engine's states). The
/// probes' readings and the watcher's counters are added off the loop ([`super::start`]).
///
/// A path is listed when its map's table has it and the last scan saw it (a device gone
/// from sysfs has no name or portal to label it with; its map's counts leave it out too).
pub fn from_engine(engine: &Engine, stats: &Stats) -> Snapshot {
    let ctx = engine.view_ctx();
    let disks: BTreeMap<String, &crate::topology::ScsiDisk> =
        ctx.disks.iter().map(|d| (d.dev.to_string(), d)).collect();
    let mut paths = Vec::new();
    let mut maps = Vec::new();
    for (name, m) in engine.maps() {
        let status = m.status.as_ref();
        let mut usable = 0;
        for dev in m.table.path_devs() {
            let Some(d) = disks.get(dev) else { continue };
            let dm_failed = status
                .and_then(|s| s.path(dev))
                .is_some_and(|p| !p.is_active());
            let h = ctx.health.get(&d.dev);
            // A path the health engine has not seen yet follows device-mapper.
            let state = h.map(|h| h.state).unwrap_or(if dm_failed {
                PathState::Failed
            } else {
                PathState::Active
            });
            usable += usize::from(state.usable());
            paths.push(PathMetrics {
                map: name.clone(),
                wwid: m.wwid.clone(),
                path: d.name.clone(),
                dev: d.dev,
                portal: ctx.iscsi.get(&d.name).map(|i| i.portal.to_string()),
                state,
                dm_failed,
                flaps: h.map(|h| h.flaps).unwrap_or(0),
                lun_errors: h.map(|h| h.lun_errors).unwrap_or(0),
                latency_limit: h.map(|h| h.latency_limit).unwrap_or_default(),
                rtt_limit: h.map(|h| h.rtt_limit).unwrap_or_default(),
            });
        }
        let queue_if_no_path = m.table.queue_if_no_path();
        maps.push(MapMetrics {
            name: name.clone(),
            wwid: m.wwid.clone(),
            active_group: status.and_then(|s| s.active_group()).map(|g| g as u32 + 1),
            queue_if_no_path,
            no_path_retry_expired: m.expired,
            // Queueing with nowhere to send I/O: whatever is sent to the map waits.
            io_stalled: queue_if_no_path && usable == 0,
        });
    }
    Snapshot {
        paths,
        maps,
        stats: stats.clone(),
        ..Snapshot::default()
    }
}
