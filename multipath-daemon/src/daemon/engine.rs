//! The daemon's state and what it does with it, without any I/O loop: rescan and
//! reconcile the maps, check failed paths, answer control requests. The async shell in
//! [`super::run`] only feeds it; tests drive it with [`crate::dm::SimDm`] and recorded
//! sysfs trees.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, info, warn};

use crate::{
    config::{
        Config, DeviceId, FindMultipaths, NoPathRetry, PrioSource, Verdict, WeightKey,
        bindings::{Bindings, WwidsFile},
    },
    control::{GroupView, IscsiView, MapSummary, MapView, PathView, Request, Response, Topology},
    dm::{DmBackend, MapInfo, Message, PathState, PgState, UUID_PREFIX},
    maps::{self, Candidate, LiveMap, MapPolicy, Rules, Step},
    model::DevT,
    topology::{IscsiPath, ScsiDisk, Sysfs},
};

/// What one reconcile pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub maps: usize,
    pub paths: usize,
    pub created: Vec<String>,
    pub reloaded: Vec<String>,
    pub errors: Vec<String>,
    /// Milliseconds spent scanning sysfs, reading device-mapper, and creating/reloading.
    pub scan_ms: u64,
    pub read_dm_ms: u64,
    pub apply_ms: u64,
}

pub struct Engine<D: DmBackend> {
    cfg: Config,
    sysfs: Sysfs,
    dm: D,
    bindings: Bindings,
    wwids: WwidsFile,
    /// The last scan.
    disks: Vec<ScsiDisk>,
    iscsi: BTreeMap<String, IscsiPath>,
    prio: BTreeMap<String, u32>,
    /// Paths left out of every map, with why (logged once each).
    skipped: BTreeMap<String, String>,
    /// Paths an admin failed: kept failed across reloads and never reinstated by the
    /// checker.
    admin_failed: BTreeSet<DevT>,
    /// WWIDs whose map an admin removed: not made again until reconfigure.
    removed: BTreeSet<String>,
    /// Per map: checker intervals spent with no usable path (for `no_path_retry N`).
    no_path_ticks: BTreeMap<String, u32>,
}

impl<D: DmBackend> Engine<D> {
    /// Loads the bindings and wwids files the config names; a file that cannot be read
    /// is an error (allocating names without the bindings would rename maps).
    pub fn new(cfg: Config, sysfs: Sysfs, dm: D) -> anyhow::Result<Self> {
        let bindings = Bindings::load(&cfg.defaults.bindings_file)?;
        let wwids = WwidsFile::load(&cfg.defaults.wwids_file)?;
        Ok(Self {
            cfg,
            sysfs,
            dm,
            bindings,
            wwids,
            disks: Vec::new(),
            iscsi: BTreeMap::new(),
            prio: BTreeMap::new(),
            skipped: BTreeMap::new(),
            admin_failed: BTreeSet::new(),
            removed: BTreeSet::new(),
            no_path_ticks: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn dm(&self) -> &D {
        &self.dm
    }

    /// Swaps in a new config (already checked) and forgets admin removals.
    pub fn set_config(&mut self, cfg: Config) -> anyhow::Result<()> {
        self.bindings = Bindings::load(&cfg.defaults.bindings_file)?;
        self.wwids = WwidsFile::load(&cfg.defaults.wwids_file)?;
        self.cfg = cfg;
        self.removed.clear();
        self.skipped.clear();
        Ok(())
    }

    /// Rescans the paths and brings every map in line with them. A failure on one map
    /// is logged and reported; the others go ahead, and no live map is ever removed.
    pub fn reconcile(&mut self) -> Summary {
        let t0 = std::time::Instant::now();
        let mut sum = Summary::default();
        match self.sysfs.scsi_disks() {
            Ok(d) => self.disks = d,
            Err(e) => {
                // Keep the previous scan: better stale paths than dropping them all.
                warn!("scanning paths: {e}; keeping the previous scan");
                sum.errors.push(format!("scan: {e}"));
            }
        }
        // The iSCSI session behind each path is read here only when a prio needs its
        // portal: with hundreds of paths it is most of the scan. Views read it on demand.
        self.iscsi = if self.uses_portal_prio() {
            self.disks
                .iter()
                .filter_map(|d| Some((d.name.clone(), self.sysfs.iscsi_path(&d.name).ok()??)))
                .collect()
        } else {
            BTreeMap::new()
        };
        let scanned = t0.elapsed();
        let mut candidates = Vec::new();
        let mut skipped = BTreeMap::new();
        for d in &self.disks {
            let id = DeviceId {
                devnode: &d.name,
                wwid: d.wwid.as_deref(),
                vendor: &d.vendor,
                product: &d.model,
                properties: None,
            };
            if let Verdict::Blacklisted { reason } = self.cfg.filter(&id) {
                skipped.insert(d.name.clone(), format!("blacklisted: {reason}"));
                continue;
            }
            let prio = self.prio_of(d);
            candidates.push(Candidate {
                disk: d.clone(),
                prio,
            });
        }
        self.prio = candidates
            .iter()
            .map(|c| (c.disk.name.clone(), c.prio))
            .collect();
        let live = match self.live_maps() {
            Ok(l) => l,
            Err(e) => {
                warn!("reading device-mapper: {e}");
                sum.errors.push(format!("device-mapper: {e}"));
                return sum;
            }
        };
        let mut rules = EngineRules {
            cfg: &self.cfg,
            bindings: &mut self.bindings,
            wwids: &self.wwids,
            removed: &self.removed,
            live_names: live.iter().map(|m| m.info.name.clone()).collect(),
            new_binding: false,
        };
        let read_dm = t0.elapsed();
        let plan = maps::plan(&candidates, &live, &mut rules);
        let new_binding = rules.new_binding;
        for s in &plan.skipped {
            skipped.insert(s.path.clone(), s.why.clone());
        }
        for (path, why) in &skipped {
            if self.skipped.get(path) != Some(why) {
                info!(path = %path, "not multipathed: {why}");
            }
        }
        self.skipped = skipped;
        let mut new_wwids = false;
        let work: Vec<Step> = plan
            .steps
            .into_iter()
            .filter(|s| !matches!(s, Step::Keep(_)))
            .collect();
        for (step, result) in apply_parallel(&self.dm, work) {
            match (step, result) {
                (Step::Create(w), Ok(dev)) => {
                    info!(map = %w.name, wwid = %w.wwid, dev = %dev, paths = ?w.paths, "created map");
                    new_wwids |= self.wwids.add(&w.wwid);
                    sum.created.push(w.name.clone());
                    self.refail_admin(&w.name, &w.table);
                }
                (Step::Reload { want, why }, Ok(_)) => {
                    info!(map = %want.name, paths = ?want.paths, "reloaded map: {why}");
                    sum.reloaded.push(want.name.clone());
                    self.refail_admin(&want.name, &want.table);
                }
                (Step::Create(w), Err(e)) => {
                    warn!(map = %w.name, "creating map: {e}");
                    sum.errors.push(e.to_string());
                }
                (Step::Reload { want, why }, Err(e)) => {
                    warn!(map = %want.name, "reloading map ({why}): {e}; the live table stays");
                    sum.errors.push(e.to_string());
                }
                (Step::Keep(_), _) => {}
            }
        }
        if new_wwids && let Err(e) = self.wwids.save() {
            warn!("saving {}: {e}", self.cfg.defaults.wwids_file.display());
        }
        if new_binding && let Err(e) = self.bindings.save() {
            warn!("saving {}: {e}", self.cfg.defaults.bindings_file.display());
        }
        // Counted, not listed again: listing reads every map's table, which with many
        // maps costs as much as the pass itself.
        sum.maps = live.len() + sum.created.len();
        sum.paths = self.disks.len();
        sum.scan_ms = scanned.as_millis() as u64;
        sum.read_dm_ms = (read_dm - scanned).as_millis() as u64;
        sum.apply_ms = (t0.elapsed() - read_dm).as_millis() as u64;
        debug!(
            scan_ms = sum.scan_ms,
            read_dm_ms = sum.read_dm_ms,
            apply_ms = sum.apply_ms,
            "reconcile pass"
        );
        sum
    }

    /// A new table starts every path active: fail again what an admin failed.
    fn refail_admin(&self, map: &str, table: &crate::dm::MultipathTable) {
        for dev in table.path_devs() {
            if let Ok(d) = dev.parse::<DevT>()
                && self.admin_failed.contains(&d)
                && let Err(e) = self.dm.message(map, &Message::FailPath(d))
            {
                warn!(map, "failing admin-failed path {d} again: {e}");
            }
        }
    }

    fn live_maps(&self) -> Result<Vec<LiveMap>, crate::dm::DmError> {
        let mut out = Vec::new();
        for info in self.dm.list()? {
            // Maps without our uuid prefix are someone else's: leave them alone.
            if info.wwid().is_none() {
                continue;
            }
            let table = match self.dm.table(&info.name) {
                Ok(t) => t,
                Err(e) => {
                    warn!(map = %info.name, "reading table: {e}; leaving the map alone");
                    continue;
                }
            };
            let status = self.dm.status(&info.name).ok();
            out.push(LiveMap {
                info,
                table,
                status,
            });
        }
        Ok(out)
    }

    fn prio_of(&self, d: &ScsiDisk) -> u32 {
        match self.cfg.settings_for(&maps::path_ident(d)).prio {
            PrioSource::Const => 1,
            // multipath-tools' alua prio values, so group_by_prio orders the same.
            PrioSource::Alua => match d.access_state.as_deref() {
                Some("active/optimized") => 50,
                Some("active/non-optimized") => 10,
                Some("lba-dependent") => 5,
                Some("standby") => 1,
                _ => 0,
            },
            PrioSource::Weighted(ws) => {
                let portal = self.iscsi.get(&d.name).map(|i| i.portal.to_string());
                ws.iter()
                    .find(|w| w.matches(&d.name, &d.hctl, portal.as_deref()))
                    .map(|w| w.prio)
                    .unwrap_or(0)
            }
        }
    }

    /// The path checker's pass: reinstates paths the kernel failed once their device and
    /// session are up again, and ends queueing for maps whose `no_path_retry` count ran
    /// out. Until the health engine lands, this is what brings a path back.
    pub fn check(&mut self) {
        let Ok(maps) = self.dm.list() else { return };
        let disks: BTreeMap<DevT, &ScsiDisk> = self.disks.iter().map(|d| (d.dev, d)).collect();
        for info in maps {
            let Some(wwid) = info.wwid() else { continue };
            let Ok(st) = self.dm.status(&info.name) else {
                continue;
            };
            let mut reinstated = 0;
            for p in st.paths() {
                let Some(dev) = p.devt() else { continue };
                if p.state != PathState::Failed || self.admin_failed.contains(&dev) {
                    continue;
                }
                let Some(d) = disks.get(&dev) else { continue };
                let Ok(state) = self.sysfs_state(d) else {
                    continue;
                };
                if state {
                    match self.dm.message(&info.name, &Message::ReinstatePath(dev)) {
                        Ok(()) => {
                            reinstated += 1;
                            info!(map = %info.name, path = %d.name, "reinstated path: device running and session logged in")
                        }
                        Err(e) => warn!(map = %info.name, path = %d.name, "reinstating: {e}"),
                    }
                }
            }
            let paths = self
                .disks
                .iter()
                .filter(|d| d.wwid.as_deref() == Some(wwid));
            let id = maps::map_ident(wwid, paths);
            if let NoPathRetry::Retries(n) = self.cfg.settings_for(&id).no_path_retry {
                let usable = st.active_paths() + reinstated;
                let ticks = self.no_path_ticks.entry(info.name.clone()).or_default();
                if usable > 0 {
                    if *ticks > n {
                        let _ = self.dm.message(&info.name, &Message::QueueIfNoPath);
                        info!(map = %info.name, "a path is back: queueing if no path again");
                    }
                    *ticks = 0;
                } else {
                    *ticks += 1;
                    if *ticks == n + 1 {
                        warn!(map = %info.name, "no path for {n} checks: failing queued IO (no_path_retry {n})");
                        let _ = self.dm.message(&info.name, &Message::FailIfNoPath);
                    }
                }
            }
        }
    }

    /// Whether a path's device is running and its iSCSI session (if any) logged in,
    /// read fresh from sysfs.
    fn sysfs_state(&self, d: &ScsiDisk) -> Result<bool, crate::topology::TopologyError> {
        let state = self.sysfs.device_state(&d.name)?;
        let session_ok = match self.sysfs.iscsi_path(&d.name)? {
            Some(i) => i.session_state == "LOGGED_IN",
            None => true,
        };
        Ok(state == "running" && session_ok)
    }

    pub fn handle(&mut self, req: Request) -> Response {
        match self.try_handle(req) {
            Ok(r) => r,
            Err(message) => Response::Error { message },
        }
    }

    fn try_handle(&mut self, req: Request) -> Result<Response, String> {
        match req {
            Request::ShowTopology => Ok(Response::Topology(self.topology())),
            Request::ShowPaths => Ok(Response::Paths(self.paths_view())),
            Request::ShowMaps => Ok(Response::Maps(self.maps_view())),
            Request::Fail { path } => {
                let (map, dev, name) = self.find_path(&path)?;
                self.dm
                    .message(&map, &Message::FailPath(dev))
                    .map_err(|e| e.to_string())?;
                self.admin_failed.insert(dev);
                info!(map = %map, path = %name, "path failed by admin");
                Ok(Response::Ok {
                    message: format!(
                        "{name} ({dev}) failed in {map}; it stays failed until `mpathd reinstate {name}`"
                    ),
                })
            }
            Request::Reinstate { path } => {
                let (map, dev, name) = self.find_path(&path)?;
                self.dm
                    .message(&map, &Message::ReinstatePath(dev))
                    .map_err(|e| e.to_string())?;
                self.admin_failed.remove(&dev);
                info!(map = %map, path = %name, "path reinstated by admin");
                Ok(Response::Ok {
                    message: format!("{name} ({dev}) reinstated in {map}"),
                })
            }
            Request::SwitchGroup { map, group } => {
                let t = self.dm.table(&map).map_err(|e| e.to_string())?;
                if group == 0 || group as usize > t.groups.len() {
                    return Err(format!(
                        "{map} has {} path group(s): pick 1 to {}",
                        t.groups.len(),
                        t.groups.len()
                    ));
                }
                self.dm
                    .message(&map, &Message::SwitchGroup(group))
                    .map_err(|e| e.to_string())?;
                info!(map = %map, group, "switched path group by admin");
                Ok(Response::Ok {
                    message: format!("{map}: I/O now goes to path group {group}"),
                })
            }
            Request::Remove { map } => {
                let info = self
                    .dm
                    .info(&map)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("no map named {map}"))?;
                self.dm.remove(&map).map_err(|e| e.to_string())?;
                if let Some(w) = info.wwid() {
                    self.removed.insert(w.to_string());
                }
                info!(map = %map, "map removed by admin");
                Ok(Response::Ok {
                    message: format!(
                        "{map} removed; mpathd will not make it again until `mpathd reconfigure` or a restart"
                    ),
                })
            }
            Request::Reconfigure => Err("reconfigure is handled by the daemon loop".into()),
        }
    }

    /// The map holding a path given as `sda`, `/dev/sda` or `8:0`.
    fn find_path(&self, arg: &str) -> Result<(String, DevT, String), String> {
        let name = arg.strip_prefix("/dev/").unwrap_or(arg);
        let dev = match name.parse::<DevT>() {
            Ok(d) => d,
            Err(_) => self
                .disks
                .iter()
                .find(|d| d.name == name)
                .map(|d| d.dev)
                .ok_or_else(|| format!("no path named {arg} (see `mpathd show paths`)"))?,
        };
        let label = self
            .disks
            .iter()
            .find(|d| d.dev == dev)
            .map(|d| d.name.clone())
            .unwrap_or_else(|| dev.to_string());
        for info in self.dm.list().map_err(|e| e.to_string())? {
            if let Ok(t) = self.dm.table(&info.name)
                && t.path_devs().any(|p| p == dev.to_string())
            {
                return Ok((info.name, dev, label));
            }
        }
        Err(format!("{arg} is in no multipath map"))
    }

    /// Whether any map's prio weighs paths by their iSCSI portal.
    fn uses_portal_prio(&self) -> bool {
        let portal = |p: &PrioSource| matches!(p, PrioSource::Weighted(ws) if ws.iter().any(|w| w.key == WeightKey::Portal));
        self.cfg.prio_sources().any(portal)
    }

    fn path_view(&self, d: &ScsiDisk, map: Option<&str>, dm: Option<(PathState, u32)>) -> PathView {
        let fresh;
        let iscsi = match self.iscsi.get(&d.name) {
            Some(i) => Some(i),
            None => {
                fresh = self.sysfs.iscsi_path(&d.name).ok().flatten();
                fresh.as_ref()
            }
        };
        let health = if self.admin_failed.contains(&d.dev) {
            "admin-failed"
        } else if d.state != "running" || iscsi.is_some_and(|i| i.session_state != "LOGGED_IN") {
            "faulty"
        } else {
            "ready"
        };
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
                Some((PathState::Active, _)) => "active",
                Some((PathState::Failed, _)) => "failed",
                None => "-",
            }
            .into(),
            health: health.into(),
            device_state: d.state.clone(),
            fail_count: dm.map(|x| x.1).unwrap_or(0),
            prio: self.prio.get(&d.name).copied().unwrap_or(0),
            note: self.skipped.get(&d.name).cloned(),
            iscsi: iscsi.map(|i| IscsiView {
                session: i.session.clone(),
                target: i.target.clone(),
                portal: i.portal.to_string(),
                state: i.session_state.clone(),
            }),
        }
    }

    /// A path the table names that sysfs no longer has (removed under the map).
    fn gone_path(dev: &str, map: &str, dm: (PathState, u32)) -> PathView {
        PathView {
            name: "#".into(),
            dev: dev.into(),
            hctl: "#:#:#:#".into(),
            wwid: None,
            vendor: String::new(),
            product: String::new(),
            size_bytes: 0,
            map: Some(map.into()),
            dm_state: if dm.0 == PathState::Active {
                "active"
            } else {
                "failed"
            }
            .into(),
            health: "gone".into(),
            device_state: "gone".into(),
            fail_count: dm.1,
            prio: 0,
            note: None,
            iscsi: None,
        }
    }

    pub fn topology(&self) -> Topology {
        let mut maps = Vec::new();
        let Ok(list) = self.dm.list() else {
            return Topology::default();
        };
        let by_dev: BTreeMap<String, &ScsiDisk> =
            self.disks.iter().map(|d| (d.dev.to_string(), d)).collect();
        for info in list {
            let (Ok(t), st) = (self.dm.table(&info.name), self.dm.status(&info.name)) else {
                continue;
            };
            let st = st.ok();
            let mut groups = Vec::new();
            for (gi, g) in t.groups.iter().enumerate() {
                let gst = st.as_ref().and_then(|s| s.groups.get(gi));
                let mut paths = Vec::new();
                for p in &g.paths {
                    let ps = gst
                        .and_then(|g| g.paths.iter().find(|x| x.dev == p.dev))
                        .map(|x| (x.state, x.fail_count))
                        .unwrap_or((PathState::Active, 0));
                    paths.push(match by_dev.get(&p.dev) {
                        Some(d) => self.path_view(d, Some(&info.name), Some(ps)),
                        None => Self::gone_path(&p.dev, &info.name, ps),
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
            let (features, hw_handler) = feature_and_handler_words(&t);
            let sysfs_name = format!("dm-{}", info.dev.minor);
            maps.push(MapView {
                wwid: info.wwid().unwrap_or("-").to_string(),
                write_protect: match self.sysfs.read_only(&sysfs_name) {
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

    fn paths_view(&self) -> Vec<PathView> {
        let topo = self.topology();
        let mut in_maps: BTreeMap<String, PathView> = BTreeMap::new();
        for m in topo.maps {
            for g in m.groups {
                for p in g.paths {
                    in_maps.insert(p.dev.clone(), p);
                }
            }
        }
        let mut out: Vec<PathView> = self
            .disks
            .iter()
            .map(|d| {
                in_maps
                    .remove(&d.dev.to_string())
                    .unwrap_or_else(|| self.path_view(d, None, None))
            })
            .collect();
        out.extend(in_maps.into_values());
        out
    }

    fn maps_view(&self) -> Vec<MapSummary> {
        let Ok(list) = self.dm.list() else {
            return Vec::new();
        };
        list.into_iter()
            .map(|info: MapInfo| {
                let t = self.dm.table(&info.name).ok();
                let st = self.dm.status(&info.name).ok();
                MapSummary {
                    wwid: info.wwid().unwrap_or("-").to_string(),
                    sysfs_name: format!("dm-{}", info.dev.minor),
                    paths: t.as_ref().map(|t| t.path_devs().count()).unwrap_or(0),
                    active_paths: st.as_ref().map(|s| s.active_paths()).unwrap_or(0),
                    queue_if_no_path: t.as_ref().is_some_and(|t| t.queue_if_no_path()),
                    open_count: info.open_count,
                    size_bytes: info.size_sectors.saturating_mul(512),
                    name: info.name,
                }
            })
            .collect()
    }
}

/// Most device-mapper operations in flight at once.
const DM_WORKERS: usize = 8;

/// Creates and reloads maps, several at a time: each create or reload waits for udev to
/// finish the map's rules (nodes, kpartx, blkid), which is slow and per map; the maps
/// are independent, so their waits overlap. Results come back in `steps` order.
fn apply_parallel<D: DmBackend>(
    dm: &D,
    steps: Vec<Step>,
) -> Vec<(Step, Result<DevT, crate::dm::DmError>)> {
    let run = |s: &Step| -> Result<DevT, crate::dm::DmError> {
        match s {
            Step::Create(w) => {
                let uuid = format!("{UUID_PREFIX}{}", w.wwid);
                dm.create(&w.name, &uuid, w.size_sectors, &w.table)
                    .map(|i| i.dev)
            }
            Step::Reload { want, .. } => dm
                .reload(&want.name, want.size_sectors, &want.table)
                .map(|()| DevT::new(0, 0)),
            Step::Keep(_) => Ok(DevT::new(0, 0)),
        }
    };
    if steps.len() <= 1 {
        return steps
            .into_iter()
            .map(|s| {
                let r = run(&s);
                (s, r)
            })
            .collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<DevT, crate::dm::DmError>>>> =
        steps.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|sc| {
        for _ in 0..DM_WORKERS.min(steps.len()) {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(s) = steps.get(i) else { break };
                    let r = run(s);
                    *results[i].lock().unwrap() = Some(r);
                }
            });
        }
    });
    steps
        .into_iter()
        .zip(results)
        .map(|(s, r)| {
            let r = r.into_inner().unwrap().expect("every step ran");
            (s, r)
        })
        .collect()
}

/// The table's feature list and hardware handler as `multipath -ll` shows them: each
/// with its count first (`1 queue_if_no_path`, `0`).
fn feature_and_handler_words(t: &crate::dm::MultipathTable) -> (String, String) {
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

/// The planner's questions, answered from the config, the bindings and the wwids file.
struct EngineRules<'a> {
    cfg: &'a Config,
    bindings: &'a mut Bindings,
    wwids: &'a WwidsFile,
    removed: &'a BTreeSet<String>,
    live_names: std::collections::HashSet<String>,
    new_binding: bool,
}

impl Rules for EngineRules<'_> {
    fn policy(&self, wwid: &str, paths: &[&Candidate]) -> MapPolicy {
        let id = maps::map_ident(wwid, paths.iter().map(|c| &c.disk));
        MapPolicy::from_settings(&self.cfg.settings_for(&id))
    }

    fn wants_map(&self, wwid: &str, paths: usize) -> bool {
        if self.removed.contains(wwid) {
            return false;
        }
        let known = self.cfg.entry_for(wwid).is_some() || self.wwids.contains(wwid);
        match self.cfg.defaults.find_multipaths {
            FindMultipaths::Strict => known,
            FindMultipaths::On | FindMultipaths::Smart => known || paths >= 2,
            FindMultipaths::Greedy => true,
        }
    }

    fn name_for(&mut self, wwid: &str) -> String {
        if let Some(alias) = self.cfg.entry_for(wwid).and_then(|e| e.alias.clone()) {
            if !self.live_names.contains(&alias) {
                self.live_names.insert(alias.clone());
                return alias;
            }
            warn!(wwid, alias = %alias, "alias is taken by another map: naming the map by its WWID");
        } else if self.cfg.defaults.user_friendly_names {
            let prefix = self.cfg.defaults.alias_prefix.clone();
            // Never hand out a name an entry's alias or a live map already has.
            let mut taken = self.live_names.clone();
            taken.extend(self.cfg.multipaths.iter().filter_map(|e| e.alias.clone()));
            let (name, new) = self.bindings.alias_for_avoiding(wwid, &prefix, &taken);
            self.new_binding |= new;
            if !self.live_names.contains(&name) {
                self.live_names.insert(name.clone());
                return name;
            }
            warn!(wwid, alias = %name, "bound name is taken by another map: naming the map by its WWID");
        }
        self.live_names.insert(wwid.to_string());
        wwid.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{control::format_topology, dm::SimDm};

    const WWID: &str = "360014056001405f00dcafe0123456789";

    /// The recorded lab tree (two iSCSI paths, sda and sdb, to one LUN) and a config
    /// whose state files live in a fresh temp dir.
    fn engine(extra_toml: &str) -> (Engine<SimDm>, PathBuf) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mpathd-engine-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let toml = format!(
            "[defaults]\nbindings_file = \"{0}/bindings\"\nwwids_file = \"{0}/wwids\"\n{extra_toml}",
            dir.display()
        );
        let cfg = Config::from_toml_str(&toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        let sysfs = Sysfs::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/sysfs/lab-2portals"
        ));
        (Engine::new(cfg, sysfs, SimDm::new()).unwrap(), dir)
    }

    use std::path::PathBuf;

    #[test]
    fn the_seed_alias_makes_one_map_of_both_paths_and_a_restart_adopts_it() {
        // [overrides]: the built-in LIO entry (group_by_prio) beats [defaults].
        let seed = format!(
            "\n[overrides]\npath_grouping_policy = \"failover\"\n\
             [[multipaths]]\nwwid = \"{WWID}\"\nalias = \"sanvol1\"\n"
        );
        let (mut e, dir) = engine(&seed);
        let s = e.reconcile();
        assert_eq!(s.created, ["sanvol1"], "{s:?}");
        assert!(s.errors.is_empty(), "{s:?}");
        let t = e.dm().table("sanvol1").unwrap();
        assert_eq!(t.path_devs().collect::<Vec<_>>(), ["8:0", "8:16"]);
        let text = format_topology(&e.topology());
        assert!(
            text.starts_with(&format!("sanvol1 ({WWID}) dm-0 LIO-ORG,FILEIO\nsize=256M ")),
            "{text}"
        );
        assert!(
            text.contains("| `- 0:0:0:0 sda 8:0 active ready running"),
            "{text}"
        );
        assert!(
            text.contains("  `- 1:0:0:0 sdb 8:16 active ready running"),
            "{text}"
        );
        // The WWID is remembered for find_multipaths strict.
        let wwids = std::fs::read_to_string(dir.join("wwids")).unwrap();
        assert!(wwids.contains(&format!("/{WWID}/")), "{wwids}");
        // A second pass, and a new daemon on the same dm: nothing to do.
        e.dm().clear_log();
        let s = e.reconcile();
        assert!(s.created.is_empty() && s.reloaded.is_empty(), "{s:?}");
        let dm = std::mem::take(&mut e.dm);
        let (mut e2, _) = engine(&seed);
        e2.dm = dm;
        let s = e2.reconcile();
        assert!(s.created.is_empty() && s.reloaded.is_empty(), "{s:?}");
        assert!(e2.dm().log().is_empty(), "{:?}", e2.dm().log());
    }

    #[test]
    fn strict_find_multipaths_leaves_unknown_luns_alone_and_greedy_names_them() {
        let (mut e, _) = engine("");
        let s = e.reconcile();
        assert!(s.created.is_empty(), "strict is the default: {s:?}");
        let (mut e, dir) = engine("find_multipaths = \"greedy\"\nuser_friendly_names = true\n");
        assert_eq!(e.reconcile().created, ["mpatha"]);
        let b = std::fs::read_to_string(dir.join("bindings")).unwrap();
        assert!(b.contains(&format!("mpatha {WWID}")), "{b}");
    }

    #[test]
    fn a_blacklisted_path_is_left_out_with_the_reason() {
        let (mut e, _) =
            engine("find_multipaths = \"greedy\"\n[blacklist]\ndevnode = [\"^sdb$\"]\n");
        let s = e.reconcile();
        assert_eq!(s.created, [WWID]);
        let t = e.dm().table(WWID).unwrap();
        assert_eq!(t.path_devs().collect::<Vec<_>>(), ["8:0"]);
        let Response::Paths(paths) = e.handle(Request::ShowPaths) else {
            panic!()
        };
        let sdb = paths.iter().find(|p| p.name == "sdb").unwrap();
        assert_eq!(sdb.map, None);
        assert!(
            sdb.note.as_deref().unwrap().contains("blacklisted"),
            "{sdb:?}"
        );
    }

    #[test]
    fn admin_fail_sticks_until_reinstate_and_the_checker_brings_back_kernel_failures() {
        let (mut e, _) = engine("find_multipaths = \"greedy\"\n");
        e.reconcile();
        let r = e.handle(Request::Fail {
            path: "/dev/sda".into(),
        });
        assert!(matches!(r, Response::Ok { .. }), "{r:?}");
        let st = e.dm().status(WWID).unwrap();
        assert_eq!(st.path("8:0").unwrap().state, PathState::Failed);
        // The checker does not undo an admin's fail...
        e.check();
        assert_eq!(
            e.dm().status(WWID).unwrap().path("8:0").unwrap().state,
            PathState::Failed
        );
        let Response::Topology(t) = e.handle(Request::ShowTopology) else {
            panic!()
        };
        let sda = &t.maps[0].groups[0].paths[0];
        assert_eq!(
            (sda.dm_state.as_str(), sda.health.as_str()),
            ("failed", "admin-failed")
        );
        // ...but reinstates what the kernel failed once the device is running.
        e.dm().kernel_fail_path(WWID, "8:16");
        e.check();
        assert_eq!(
            e.dm().status(WWID).unwrap().path("8:16").unwrap().state,
            PathState::Active
        );
        let r = e.handle(Request::Reinstate { path: "8:0".into() });
        assert!(matches!(r, Response::Ok { .. }), "{r:?}");
        assert_eq!(e.dm().status(WWID).unwrap().active_paths(), 2);
        let r = e.handle(Request::Fail { path: "sdz".into() });
        assert!(
            matches!(&r, Response::Error { message } if message.contains("no path named sdz")),
            "{r:?}"
        );
    }

    #[test]
    fn group_by_prio_with_weights_by_portal_puts_the_preferred_portal_first() {
        // sdb's session goes to portal 10.99.2.2 in the recorded tree.
        let (mut e, _) = engine(
            "find_multipaths = \"greedy\"\n[overrides]\npath_grouping_policy = \"group_by_prio\"\n\
             prio_weights = [{ portal = '10\\.99\\.2\\.2:3260', prio = 50 }, { portal = '.*', prio = 10 }]\n",
        );
        assert_eq!(e.reconcile().created, [WWID]);
        let t = e.dm().table(WWID).unwrap();
        assert_eq!(t.groups.len(), 2, "{t}");
        assert_eq!(t.groups[0].paths[0].dev, "8:16", "portal 2 first: {t}");
        let Response::Topology(topo) = e.handle(Request::ShowTopology) else {
            panic!()
        };
        let prios: Vec<u32> = topo.maps[0].groups.iter().map(|g| g.prio).collect();
        assert_eq!(prios, [50, 10]);
    }

    #[test]
    fn no_path_retry_n_stops_queueing_after_n_checks_and_resumes_when_a_path_is_back() {
        let (mut e, _) = engine("find_multipaths = \"greedy\"\n[overrides]\nno_path_retry = 2\n");
        e.reconcile();
        assert!(
            e.dm().table(WWID).unwrap().queue_if_no_path(),
            "queues at first"
        );
        // Admin-failed paths stay failed: the map has no usable path.
        for p in ["sda", "sdb"] {
            assert!(matches!(
                e.handle(Request::Fail { path: p.into() }),
                Response::Ok { .. }
            ));
        }
        e.check();
        e.check();
        assert!(
            e.dm().table(WWID).unwrap().queue_if_no_path(),
            "2 checks: still queueing"
        );
        e.check();
        assert!(
            !e.dm().table(WWID).unwrap().queue_if_no_path(),
            "3rd check: queued IO fails"
        );
        e.handle(Request::Reinstate { path: "sdb".into() });
        e.check();
        assert!(
            e.dm().table(WWID).unwrap().queue_if_no_path(),
            "a path is back: queueing again"
        );
    }

    #[test]
    fn parallel_apply_keeps_step_order_and_reports_each_failure() {
        use crate::{dm::MultipathTable, maps::WantMap};
        let dm = SimDm::new();
        let steps: Vec<Step> = (0..20)
            .map(|i| {
                // Map 7's path is not MAJ:MIN: the backend refuses that one only.
                let dev = if i == 7 {
                    "sdx".to_string()
                } else {
                    format!("8:{}", i * 16)
                };
                Step::Create(WantMap {
                    wwid: format!("w{i}"),
                    name: format!("m{i}"),
                    size_sectors: 8,
                    table: MultipathTable::failover([dev]),
                    paths: vec![],
                })
            })
            .collect();
        let out = apply_parallel(&dm, steps);
        assert_eq!(out.len(), 20);
        for (i, (step, r)) in out.iter().enumerate() {
            let Step::Create(w) = step else { panic!() };
            assert_eq!(w.name, format!("m{i}"));
            assert_eq!(r.is_err(), i == 7, "{i}: {r:?}");
        }
        assert_eq!(dm.list().unwrap().len(), 19);
    }

    #[test]
    fn switchgroup_checks_the_group_and_remove_refuses_an_open_map() {
        let (mut e, _) = engine(
            "find_multipaths = \"greedy\"\n[overrides]\npath_grouping_policy = \"failover\"\n",
        );
        e.reconcile();
        let r = e.handle(Request::SwitchGroup {
            map: WWID.into(),
            group: 3,
        });
        assert!(
            matches!(&r, Response::Error { message } if message.contains("pick 1 to 2")),
            "{r:?}"
        );
        let r = e.handle(Request::SwitchGroup {
            map: WWID.into(),
            group: 2,
        });
        assert!(matches!(r, Response::Ok { .. }), "{r:?}");
        assert_eq!(e.dm().status(WWID).unwrap().next_pg, 2);
        e.dm().set_open(WWID, 1);
        let r = e.handle(Request::Remove { map: WWID.into() });
        assert!(
            matches!(&r, Response::Error { message } if message.contains("open")),
            "{r:?}"
        );
        e.dm().set_open(WWID, 0);
        assert!(matches!(
            e.handle(Request::Remove { map: WWID.into() }),
            Response::Ok { .. }
        ));
        // Not made again behind the admin's back.
        assert!(e.reconcile().created.is_empty());
    }
}
