//! The daemon's state and its decisions, with no I/O of its own: it plans maps from what
//! [`super::gather`] read, turns the health engine's decisions into device-mapper work,
//! and learns from each outcome. The async loop in [`super::serve`] runs the reads and
//! the work off the loop and feeds the results back; tests drive the same engine
//! synchronously with [`crate::dm::SimDm`] and recorded sysfs trees.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    time::Duration,
};

use tracing::{debug, info, warn};

use super::gather::{Poll, Snapshot};
use super::views::ViewCtx;
use crate::{
    actions::{DmDone, DmOp, Lane, fail_path, reinstate_path, rescue::Ledger},
    checker::CheckerKind,
    config::{
        Config, DeviceId, Failback, FindMultipaths, MapSettings, NoPathRetry, PrioSource, Verdict,
        WeightKey,
        bindings::{Bindings, WwidsFile},
    },
    control::Request,
    dm::{
        MapInfo, Message, MultipathStatus, MultipathTable, PathState as DmPathState, UUID_PREFIX,
    },
    health::{Action, Decision, Health, HealthConfig, Input, Ns, PathInfo, PathState, Rescue},
    maps::{self, Candidate, Grouping, LiveMap, MapPolicy, Rules, Step},
    model::{Conn, DevT},
    topology::{Alua, IscsiPath, ScsiDisk},
};

/// What one reconcile pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub maps: usize,
    pub paths: usize,
    pub created: Vec<String>,
    pub reloaded: Vec<String>,
    pub errors: Vec<String>,
    /// Maps left for the next pass because a table operation on them is still running.
    pub deferred: Vec<String>,
    /// Milliseconds spent scanning sysfs, reading device-mapper, and creating/reloading.
    pub scan_ms: u64,
    pub read_dm_ms: u64,
    pub apply_ms: u64,
}

/// Why a piece of device-mapper work was asked for: what to do with its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// A reconcile pass made or reloaded the map (`why` says what changed).
    Plan { paths: Vec<String>, why: String },
    /// The health engine decided it.
    Decision(Box<Decision>),
    /// An admin asked for it.
    Admin,
    /// A path held down, failed again around a reload.
    Refail(DevT),
    /// `no_path_retry`: queueing switched off or back on.
    NoPathRetry,
    /// I/O returns to the best path group.
    Failback,
    /// A demoted path's group was just moved back: I/O leaves it.
    Demotion,
}

/// Device-mapper work for the loop to run in a map's lane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Work {
    pub map: String,
    pub lane: Lane,
    pub op: DmOp,
    pub why: Why,
}

/// What the engine asks the loop to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Dm(Work),
    /// Hand the I/O stuck on this connection back to device-mapper.
    Rescue {
        rescue: Rescue,
        decision: Box<Decision>,
    },
    /// Write an iSCSI session's recovery timeout.
    SetRecoveryTmo {
        session: String,
        secs: u32,
    },
    /// Check these paths now.
    CheckNow(Vec<DevT>),
    /// Run a reconcile pass (a demotion or its end changes the tables).
    Replan,
    /// Re-evaluate the map's failback after this long (`failback N`).
    FailbackLater {
        map: String,
        after: Duration,
    },
    /// A decision that needs no action, to be logged and counted.
    Note(Box<Decision>),
    /// Read the maps' status now (a table was just loaded).
    Poll,
    /// Replace this file with `contents` (written whole and synced), off the loop: a
    /// sync per create at start-up would hold the loop 128 times.
    WriteFile {
        path: PathBuf,
        contents: String,
    },
}

/// What came of a piece of work, for the pass summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub created: Option<String>,
    pub reloaded: Option<String>,
    pub error: Option<String>,
    pub commands: Vec<Command>,
}

/// A map the daemon manages, as last loaded or read.
#[derive(Clone, Debug)]
pub struct MapState {
    pub wwid: String,
    pub table: MultipathTable,
    pub info: Option<MapInfo>,
    pub status: Option<MultipathStatus>,
    /// Checker intervals in a row with no usable path (`no_path_retry N`).
    pub no_path_ticks: u32,
    /// `no_path_retry N` ran out: the table's desired state has no queue_if_no_path.
    pub expired: bool,
}

/// What the checker's interval checks, per path, and how (its map's `path_checker` and
/// `checker_timeout`, unless the command line overrides them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckTarget {
    pub dev: DevT,
    pub node: PathBuf,
    pub kind: CheckerKind,
    pub timeout: Duration,
}

/// Options of the engine not in the config file.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// `reinstate_checks` comes from the config's `[defaults]`.
    pub health: HealthConfig,
    /// Overrides every map's `path_checker`.
    pub checker: Option<CheckerKind>,
    /// Overrides every map's `checker_timeout`.
    pub checker_timeout: Option<Duration>,
    /// The recovery timeout given to an iSCSI session whose maps all have another usable
    /// path (`None`: never change it).
    pub fast_recovery_tmo: Option<u32>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            health: HealthConfig::default(),
            checker: None,
            checker_timeout: None,
            fast_recovery_tmo: Some(0),
        }
    }
}

pub struct Engine {
    cfg: Config,
    opts: EngineOptions,
    bindings: Bindings,
    wwids: WwidsFile,
    /// The last scan.
    disks: Vec<ScsiDisk>,
    /// Where each disk is in `disks`, by device number: every map's paths are looked up
    /// in it, by several handlers of each loop turn.
    disk_at: HashMap<DevT, usize>,
    /// iSCSI sessions by disk name, as last read.
    iscsi: BTreeMap<String, IscsiPath>,
    prio: BTreeMap<String, u32>,
    /// Each path's priority from its map's prio source alone (before a demotion), by
    /// disk name: held while its ALUA state is in transition, and compared with at
    /// every checker interval to see a port group the target moved.
    base_prio: BTreeMap<String, u32>,
    /// Paths left out of every map, with why (logged once each).
    skipped: BTreeMap<String, String>,
    /// WWIDs whose map an admin removed: not made again until reconfigure.
    removed: BTreeSet<String>,
    maps: BTreeMap<String, MapState>,
    /// Table-lane operations queued or running, per map: its table is in flux.
    busy: BTreeMap<String, usize>,
    /// Maps whose reload waits until no usable path has I/O stuck on it.
    deferred: BTreeSet<String>,
    health: Health,
    ledger: Ledger,
    /// Recovery timeout writes asked for and not yet done, by session.
    tmo_asked: BTreeMap<String, u32>,
    /// Paths became usable since the recovery timeouts were last worked out: done at
    /// the next tick, once for a whole checker round (see [`Engine::apply`]).
    tmo_stale: bool,
    /// The last disk seen of each WWID: a map whose paths all left sysfs keeps the
    /// settings its vendor and product gave it (the device table still applies).
    last_disk: BTreeMap<String, ScsiDisk>,
    /// Each WWID's merged settings, until the config or the disks change: they are asked
    /// for per map at every poll and check interval, and each matches the built-in device
    /// table (seconds of the loop at 128 maps in a debug build under TCG).
    settings_cache: RefCell<HashMap<String, MapSettings>>,
    /// Maps to rename (live name -> new name): their alias or binding changed in a
    /// reconfigure. Names are changed only then, never at start-up: a restarted daemon
    /// adopts maps under the names they have.
    renames: BTreeMap<String, String>,
}

impl Engine {
    /// Loads the bindings and wwids files the config names; a file that cannot be read
    /// is an error (allocating names without the bindings would rename maps).
    pub fn new(cfg: Config, opts: EngineOptions, ledger: Ledger) -> anyhow::Result<Self> {
        let bindings = Bindings::load(&cfg.defaults.bindings_file)?;
        let wwids = WwidsFile::load(&cfg.defaults.wwids_file)?;
        let mut hcfg = opts.health.clone();
        hcfg.reinstate_checks = cfg.defaults.reinstate_checks;
        Ok(Self {
            cfg,
            health: Health::new(hcfg),
            opts,
            bindings,
            wwids,
            disks: Vec::new(),
            disk_at: HashMap::new(),
            iscsi: BTreeMap::new(),
            prio: BTreeMap::new(),
            base_prio: BTreeMap::new(),
            skipped: BTreeMap::new(),
            removed: BTreeSet::new(),
            maps: BTreeMap::new(),
            busy: BTreeMap::new(),
            deferred: BTreeSet::new(),
            ledger,
            tmo_asked: BTreeMap::new(),
            tmo_stale: false,
            last_disk: BTreeMap::new(),
            settings_cache: RefCell::default(),
            renames: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Whether [`Engine::tick`] has something to judge within milliseconds: a stall or
    /// error waiting for corroboration, a silent connection, or a reload deferred until
    /// stuck I/O drains. Otherwise a tick a second keeps the slower timers.
    pub fn wants_fast_ticks(&self) -> bool {
        self.health.wants_ticks() || !self.deferred.is_empty()
    }

    pub fn maps(&self) -> &BTreeMap<String, MapState> {
        &self.maps
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Swaps in a new config (already checked) and forgets admin removals. A map whose
    /// alias (or bound name) the change gives another name is renamed by the next pass.
    pub fn set_config(&mut self, cfg: Config) -> anyhow::Result<()> {
        let bindings = Bindings::load(&cfg.defaults.bindings_file)?;
        for (name, m) in &self.maps {
            let before = desired_name(&self.cfg, &self.bindings, &m.wwid);
            let after = desired_name(&cfg, &bindings, &m.wwid);
            if let Some(new) = after
                && before.as_deref() != Some(new.as_str())
                && &new != name
            {
                info!(map = %name, "renamed by the new config to {new}");
                self.renames.insert(name.clone(), new);
            }
        }
        self.bindings = bindings;
        let mut wwids = WwidsFile::load(&cfg.defaults.wwids_file)?;
        // The file is written off the loop, so a write of a WWID just added may not have
        // landed yet: the file alone would forget it, and the next write would drop it
        // from the file too. Every managed map's WWID is kept, as multipathd remembers
        // each map's WWID again when it reconfigures.
        if wwids.path() == self.wwids.path() {
            for m in self.maps.values().filter(|m| m.info.is_some()) {
                wwids.add(&m.wwid);
            }
        }
        self.wwids = wwids;
        let mut hcfg = self.health.config().clone();
        hcfg.reinstate_checks = cfg.defaults.reinstate_checks;
        self.health.set_config(hcfg);
        self.cfg = cfg;
        self.settings_cache.get_mut().clear();
        self.removed.clear();
        self.skipped.clear();
        Ok(())
    }

    /// Whether a pass's scan should read the iSCSI sessions. The first pass reads them
    /// only when a prio needs portals (with hundreds of paths they are most of the scan,
    /// and maps are made first); every later pass reads them.
    pub fn first_pass_needs_iscsi(&self) -> bool {
        self.uses_portal_prio()
    }

    /// Plans a reconcile pass from a snapshot: which maps to create or reload. Maps with
    /// a table operation still running are left for a later pass ([`Summary::deferred`]).
    pub fn plan(&mut self, snap: Snapshot, now: Ns) -> (Vec<Work>, Summary) {
        let mut sum = Summary {
            scan_ms: snap.scan.as_millis() as u64,
            read_dm_ms: snap.read_dm.as_millis() as u64,
            ..Summary::default()
        };
        match snap.disks {
            Ok(d) => {
                for disk in &d {
                    if let Some(w) = &disk.wwid {
                        self.last_disk.insert(w.clone(), disk.clone());
                    }
                }
                self.disk_at = d.iter().enumerate().map(|(i, d)| (d.dev, i)).collect();
                self.disks = d;
                self.settings_cache.get_mut().clear();
            }
            Err(e) => {
                // Keep the previous scan: better stale paths than dropping them all.
                warn!("scanning paths: {e}; keeping the previous scan");
                sum.errors.push(format!("scan: {e}"));
            }
        }
        if let Some(i) = snap.iscsi {
            self.iscsi = i;
        }
        for (map, e) in &snap.unreadable {
            warn!(map = %map, "{e}; leaving the map alone");
            sum.errors.push(format!("{map}: {e}"));
        }
        let live = match snap.live {
            Ok(l) => l,
            Err(e) => {
                warn!("reading device-mapper: {e}");
                sum.errors.push(format!("device-mapper: {e}"));
                return (Vec::new(), sum);
            }
        };
        self.adopt(&live);
        let demoted = self.health.demoted();
        let mut candidates = Vec::new();
        let mut skipped = BTreeMap::new();
        let mut demoted_wwids = BTreeSet::new();
        let mut base_prio = BTreeMap::new();
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
            let mut prio = self.prio_of(d);
            base_prio.insert(d.name.clone(), prio);
            if demoted.contains(&d.dev) {
                // Below every healthy path, in a group of its own.
                prio = 0;
                if let Some(w) = &d.wwid {
                    demoted_wwids.insert(w.clone());
                }
            }
            candidates.push(Candidate {
                disk: d.clone(),
                prio,
            });
        }
        for c in &mut candidates {
            if c.disk
                .wwid
                .as_ref()
                .is_some_and(|w| demoted_wwids.contains(w))
                && !demoted.contains(&c.disk.dev)
            {
                c.prio = c.prio.max(1);
            }
        }
        self.base_prio = base_prio;
        let old_prio = std::mem::replace(
            &mut self.prio,
            candidates
                .iter()
                .map(|c| (c.disk.name.clone(), c.prio))
                .collect(),
        );
        let expired: BTreeSet<String> = self
            .maps
            .values()
            .filter(|m| m.expired)
            .map(|m| m.wwid.clone())
            .collect();
        let mut rules = EngineRules {
            cfg: &self.cfg,
            bindings: &mut self.bindings,
            wwids: &self.wwids,
            removed: &self.removed,
            live_names: live.iter().map(|m| m.info.name.clone()).collect(),
            new_binding: false,
            expired: &expired,
            demoted: &demoted_wwids,
        };
        let plan = maps::plan(&candidates, &live, &mut rules);
        if rules.new_binding
            && let Err(e) = self.bindings.save()
        {
            warn!("saving {}: {e}", self.cfg.defaults.bindings_file.display());
            sum.errors.push(format!("bindings: {e}"));
        }
        for s in &plan.skipped {
            skipped.insert(s.path.clone(), s.why.clone());
        }
        for (path, why) in &skipped {
            if self.skipped.get(path) != Some(why) {
                info!(path = %path, "not multipathed: {why}");
            }
        }
        self.skipped = skipped;

        // The paths of every map, for the health engine.
        let dm_failed: BTreeSet<DevT> = live
            .iter()
            .filter_map(|m| m.status.as_ref())
            .flat_map(|s| s.paths())
            .filter(|p| p.state == DmPathState::Failed)
            .filter_map(|p| p.dev.parse().ok())
            .collect();
        let by_name: BTreeMap<&str, &ScsiDisk> =
            self.disks.iter().map(|d| (d.name.as_str(), d)).collect();
        let mut infos = Vec::new();
        let mut works = Vec::new();
        let live_names: BTreeSet<&str> = live.iter().map(|m| m.info.name.as_str()).collect();
        let mut renaming = BTreeSet::new();
        for (from, to) in std::mem::take(&mut self.renames) {
            if !live_names.contains(from.as_str()) {
                continue;
            }
            if live_names.contains(to.as_str()) {
                warn!(map = %from, "not renamed to {to}: a map of that name exists");
                continue;
            }
            if self.busy.get(&from).copied().unwrap_or(0) > 0 {
                // A table operation runs on it: next pass.
                self.renames.insert(from.clone(), to);
                sum.deferred.push(from);
                continue;
            }
            works.push(Work {
                map: from.clone(),
                lane: Lane::Table,
                op: DmOp::Rename(to),
                why: Why::Admin,
            });
            renaming.insert(from);
        }
        for step in plan.steps {
            let want = match &step {
                Step::Create(w) | Step::Keep(w) | Step::Reload { want: w, .. } => w,
            };
            // The live table's paths too: a path the scan missed for a moment (a disk
            // being re-read) is still in the map and keeps its state.
            let live_names: Vec<String> = self
                .maps
                .get(&want.name)
                .map(|m| {
                    m.table
                        .path_devts()
                        .filter_map(|d| self.disk(d).map(|x| x.name.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let mut names: Vec<&String> = want.paths.iter().chain(live_names.iter()).collect();
            names.sort();
            names.dedup();
            for p in names {
                if let Some(d) = by_name.get(p.as_str()) {
                    let i = self.iscsi.get(p);
                    infos.push(PathInfo {
                        dev: d.dev,
                        name: p.clone(),
                        map: want.name.clone(),
                        session: i.map(|i| i.session.clone()),
                        conn: i.and_then(|i| i.conn),
                        dm_failed: dm_failed.contains(&d.dev),
                    });
                }
            }
            if matches!(step, Step::Keep(_)) {
                continue;
            }
            // Renamed first; the pass after it handles the table.
            if renaming.contains(&want.name) {
                sum.deferred.push(want.name.clone());
                continue;
            }
            if self.busy.get(&want.name).copied().unwrap_or(0) > 0 {
                sum.deferred.push(want.name.clone());
                continue;
            }
            match step {
                Step::Create(w) => {
                    works.push(Work {
                        map: w.name.clone(),
                        lane: Lane::Table,
                        op: DmOp::Create {
                            uuid: format!("{UUID_PREFIX}{}", w.wwid),
                            size_sectors: w.size_sectors,
                            table: w.table.clone(),
                        },
                        why: Why::Plan {
                            paths: w.paths,
                            why: format!("new map for {}", w.wwid),
                        },
                    });
                    self.maps.insert(
                        w.name.clone(),
                        MapState {
                            wwid: w.wwid,
                            table: w.table,
                            info: None,
                            status: None,
                            no_path_ticks: 0,
                            expired: false,
                        },
                    );
                }
                Step::Reload { want, mut why } => {
                    // Say so when priorities moved the paths (the target moved its
                    // optimized port): the group order is what changed.
                    let moved: Vec<String> = want
                        .paths
                        .iter()
                        .filter_map(|p| {
                            let (old, new) = (old_prio.get(p)?, self.prio.get(p)?);
                            (old != new).then(|| format!("{p} {old} -> {new}"))
                        })
                        .collect();
                    if !moved.is_empty() {
                        why = format!("{why}; path priorities changed: {}", moved.join(", "));
                    }
                    // A suspend waits for the I/O in flight, and I/O stuck on a path that
                    // is not failed yet may not come back for the transport's timeout:
                    // wait until that path fails (its I/O is handed back) or recovers.
                    let stuck = self.health.io_stuck(&want.name);
                    if !stuck.is_empty() {
                        if self.deferred.insert(want.name.clone()) {
                            info!(map = %want.name, stuck = ?stuck.iter().map(|d| d.to_string()).collect::<Vec<_>>(), "reload deferred while I/O is stuck on a path: {why}");
                        }
                        continue;
                    }
                    self.deferred.remove(&want.name);
                    // A suspend waits for the I/O in flight: fail the paths known down
                    // first, so nothing new goes their way while the reload waits.
                    let in_table: BTreeSet<String> =
                        want.table.path_devs().map(String::from).collect();
                    for dev in self.health.held_down(&want.name) {
                        if in_table.contains(&dev.to_string()) {
                            works.push(Work {
                                map: want.name.clone(),
                                lane: Lane::Table,
                                op: fail_path(dev),
                                why: Why::Refail(dev),
                            });
                        }
                    }
                    works.push(Work {
                        map: want.name.clone(),
                        lane: Lane::Table,
                        op: DmOp::Reload {
                            size_sectors: want.size_sectors,
                            table: want.table.clone(),
                        },
                        why: Why::Plan {
                            paths: want.paths,
                            why,
                        },
                    });
                }
                Step::Keep(_) => unreachable!("skipped above"),
            }
        }
        for w in &works {
            if w.lane == Lane::Table {
                *self.busy.entry(w.map.clone()).or_default() += 1;
            }
        }
        self.health.set_paths(infos, now);
        sum.maps = self.maps.len();
        sum.paths = self.disks.len();
        (works, sum)
    }

    /// Takes the live maps as they are: tables, status, and a `no_path_retry` count that
    /// ran out before a restart (the live table lost queue_if_no_path with no usable path).
    fn adopt(&mut self, live: &[LiveMap]) {
        let names: BTreeSet<&str> = live.iter().map(|m| m.info.name.as_str()).collect();
        // Maps removed behind our back (or by us) are forgotten, unless a create of
        // ours is still on its way.
        self.maps.retain(|n, _| {
            names.contains(n.as_str()) || self.busy.get(n).copied().unwrap_or(0) > 0
        });
        for m in live {
            let Some(wwid) = m.info.wwid() else { continue };
            let known = self.maps.contains_key(&m.info.name);
            let expired_at_start = !known
                && matches!(self.settings(wwid).no_path_retry, NoPathRetry::Retries(_))
                && !m.table.queue_if_no_path()
                && m.status.as_ref().is_some_and(|s| s.active_paths() == 0);
            let e = self
                .maps
                .entry(m.info.name.clone())
                .or_insert_with(|| MapState {
                    wwid: wwid.to_string(),
                    table: m.table.clone(),
                    info: None,
                    status: None,
                    no_path_ticks: 0,
                    expired: false,
                });
            if expired_at_start {
                info!(map = %m.info.name, "adopted with no usable path and queueing off: no_path_retry had run out");
                e.expired = true;
            }
            e.table = m.table.clone();
            e.info = Some(m.info.clone());
            e.status = m.status.clone();
        }
    }

    /// Learns from a finished piece of work; returns what follows from it.
    pub fn done(&mut self, d: &DmDone, why: &Why) -> Outcome {
        let mut out = Outcome::default();
        if d.lane == Lane::Table
            && let Some(n) = self.busy.get_mut(&d.map)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.busy.remove(&d.map);
            }
        }
        match (&d.op, &d.result) {
            (DmOp::Create { table, .. }, Ok(info)) => {
                let wwid = self.maps.get(&d.map).map(|m| m.wwid.clone());
                if let Why::Plan { paths, .. } = why {
                    info!(map = %d.map, wwid = ?wwid, dev = ?info.as_ref().map(|i| i.dev.to_string()), paths = ?paths, took_ms = d.took.as_millis() as u64, "created map");
                }
                if let Some(m) = self.maps.get_mut(&d.map) {
                    m.table = table.clone();
                    m.info = info.clone();
                    m.status = None;
                }
                out.commands.push(Command::Poll);
                if let Some(w) = wwid
                    && self.wwids.add(&w)
                {
                    out.commands.push(Command::WriteFile {
                        path: self.cfg.defaults.wwids_file.clone(),
                        contents: self.wwids.to_text(),
                    });
                }
                out.created = Some(d.map.clone());
                out.commands.extend(self.refail(&d.map, table));
            }
            (DmOp::Reload { table, .. }, Ok(_)) => {
                if let Why::Plan { paths, why } = why {
                    info!(map = %d.map, paths = ?paths, took_ms = d.took.as_millis() as u64, queued_ms = d.queued.as_millis() as u64, "reloaded map: {why}");
                }
                if let Some(m) = self.maps.get_mut(&d.map) {
                    m.table = table.clone();
                    m.status = None;
                }
                out.commands.push(Command::Poll);
                out.reloaded = Some(d.map.clone());
                out.commands.extend(self.refail(&d.map, table));
                // A demoted path's group moved last: send I/O to the best group now.
                let demoted = self.health.demoted();
                if table
                    .path_devs()
                    .any(|p| p.parse::<DevT>().is_ok_and(|d| demoted.contains(&d)))
                    && table.groups.len() > 1
                {
                    out.commands.push(Command::Dm(Work {
                        map: d.map.clone(),
                        lane: Lane::Message,
                        op: DmOp::Message(Message::SwitchGroup(1)),
                        why: Why::Demotion,
                    }));
                }
            }
            (DmOp::Rename(to), Ok(_)) => {
                if let Some(m) = self.maps.remove(&d.map) {
                    self.maps.insert(to.clone(), m);
                }
                self.health.rename_map(&d.map, to);
                info!(map = %to, "map renamed from {} (no reload, I/O goes on)", d.map);
                out.commands.push(Command::Replan);
            }
            (DmOp::Remove, Ok(_)) => {
                if let Some(m) = self.maps.remove(&d.map) {
                    self.removed.insert(m.wwid);
                }
                info!(map = %d.map, "map removed by admin");
            }
            (DmOp::Message(msg), Ok(_)) => {
                self.note_message(&d.map, msg);
                if let Message::ReinstatePath(dev) = msg {
                    out.commands
                        .extend(self.failback_after_reinstate(&d.map, *dev));
                }
            }
            (op, Err(e)) => {
                let what = op.kind();
                match op {
                    DmOp::Reload { .. } => {
                        warn!(map = %d.map, took_ms = d.took.as_millis() as u64, "reloading map: {e}; the live table stays")
                    }
                    DmOp::Create { .. } => {
                        // Nothing was left behind: forget the map so a later pass retries.
                        self.maps.remove(&d.map);
                        warn!(map = %d.map, "creating map: {e}")
                    }
                    _ => warn!(map = %d.map, "{what}: {e}"),
                }
                out.error = Some(format!("{}: {what}: {e}", d.map));
            }
        }
        out
    }

    /// Keeps the copy of a map's status and table in step with a message the kernel
    /// took, so `show` reflects it before the next poll.
    fn note_message(&mut self, map: &str, msg: &Message) {
        let Some(m) = self.maps.get_mut(map) else {
            return;
        };
        match msg {
            Message::FailPath(dev) | Message::ReinstatePath(dev) => {
                let fail = matches!(msg, Message::FailPath(_));
                let dev = dev.to_string();
                if let Some(st) = &mut m.status {
                    for g in &mut st.groups {
                        for p in g.paths.iter_mut().filter(|p| p.dev == dev) {
                            if fail && p.state == DmPathState::Active {
                                p.fail_count += 1;
                            }
                            p.state = if fail {
                                DmPathState::Failed
                            } else {
                                DmPathState::Active
                            };
                        }
                    }
                }
            }
            Message::SwitchGroup(n) => {
                if let Some(st) = &mut m.status {
                    st.next_pg = *n;
                }
            }
            Message::QueueIfNoPath => m.table.set_queue_if_no_path(true),
            Message::FailIfNoPath => m.table.set_queue_if_no_path(false),
        }
    }

    /// A new table starts every path active: fail again what the daemon holds down.
    fn refail(&self, map: &str, table: &MultipathTable) -> Vec<Command> {
        let in_table: BTreeSet<&str> = table.path_devs().collect();
        self.health
            .held_down(map)
            .into_iter()
            .filter(|d| in_table.contains(d.to_string().as_str()))
            .map(|dev| {
                Command::Dm(Work {
                    map: map.to_string(),
                    lane: Lane::Table,
                    op: fail_path(dev),
                    why: Why::Refail(dev),
                })
            })
            .collect()
    }

    /// After a path came back: return I/O to its group if it is the best group with a
    /// usable path and the map's failback policy says so.
    fn failback_after_reinstate(&self, map: &str, dev: DevT) -> Vec<Command> {
        let Some(m) = self.maps.get(map) else {
            return Vec::new();
        };
        let policy = self.settings(&m.wwid).failback;
        let Some(best) = self.best_usable_group(m) else {
            return Vec::new();
        };
        let g = &m.table.groups[best];
        if !g.paths.iter().any(|p| p.dev == dev.to_string()) {
            return Vec::new();
        }
        let usable_in_group = g
            .paths
            .iter()
            .filter_map(|p| p.dev.parse::<DevT>().ok())
            .filter(|d| self.health.state(*d).is_some_and(PathState::usable))
            .count();
        match policy {
            Failback::Manual => Vec::new(),
            // Only when the first path of the group comes back: another node may have
            // moved I/O on purpose.
            Failback::Followover if usable_in_group > 1 => Vec::new(),
            Failback::Immediate | Failback::Followover => vec![Command::Dm(Work {
                map: map.to_string(),
                lane: Lane::Message,
                op: DmOp::Message(Message::SwitchGroup(best as u32 + 1)),
                why: Why::Failback,
            })],
            Failback::After(d) => vec![Command::FailbackLater {
                map: map.to_string(),
                after: d,
            }],
        }
    }

    /// `failback N` timer: return I/O to the best group with a usable path.
    pub fn failback_due(&self, map: &str) -> Vec<Command> {
        let Some(m) = self.maps.get(map) else {
            return Vec::new();
        };
        match self.best_usable_group(m) {
            Some(best) => vec![Command::Dm(Work {
                map: map.to_string(),
                lane: Lane::Message,
                op: DmOp::Message(Message::SwitchGroup(best as u32 + 1)),
                why: Why::Failback,
            })],
            None => Vec::new(),
        }
    }

    fn best_usable_group(&self, m: &MapState) -> Option<usize> {
        m.table.groups.iter().position(|g| {
            g.paths.iter().any(|p| {
                p.dev
                    .parse::<DevT>()
                    .is_ok_and(|d| self.health.state(d) == Some(PathState::Active))
            })
        })
    }

    /// Feeds the health engine; returns what its decisions need.
    pub fn input(&mut self, now: Ns, input: Input) -> Vec<Command> {
        let out = self.health.handle(now, input);
        self.commands(out)
    }

    /// A batch of the probes' readings (see [`Health::handle_readings`]).
    pub fn readings(
        &mut self,
        now: Ns,
        readings: impl IntoIterator<Item = (DevT, crate::health::Reading)>,
    ) -> Vec<Command> {
        let out = self.health.handle_readings(now, readings);
        self.commands(out)
    }

    /// The health engine's timers.
    pub fn tick(&mut self, now: Ns) -> Vec<Command> {
        let out = self.health.tick(now);
        let mut cmds = self.commands(out);
        if std::mem::take(&mut self.tmo_stale) {
            cmds.extend(self.recovery_tmo_commands());
        }
        cmds
    }

    /// What the health engine's output asks of the daemon: its decisions applied, the
    /// checks it wants now, and the reloads no longer held back by stuck I/O.
    fn commands(&mut self, out: crate::health::Output) -> Vec<Command> {
        for note in &out.notes {
            debug!("{note}");
        }
        let mut cmds = self.apply(out.decisions);
        if !out.check_now.is_empty() {
            cmds.push(Command::CheckNow(out.check_now));
        }
        cmds.extend(self.deferred_due());
        cmds
    }

    /// A replan once a deferred reload's map has no stuck I/O left.
    fn deferred_due(&mut self) -> Vec<Command> {
        let due: Vec<String> = self
            .deferred
            .iter()
            .filter(|m| self.health.io_stuck(m).is_empty())
            .cloned()
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        for m in &due {
            self.deferred.remove(m);
        }
        vec![Command::Replan]
    }

    fn apply(&mut self, decisions: Vec<Decision>) -> Vec<Command> {
        if decisions.is_empty() {
            return Vec::new();
        }
        let mut cmds = Vec::new();
        let mut replan = false;
        let mut rescued: BTreeSet<Conn> = BTreeSet::new();
        let lost_usable = decisions.iter().any(|d| d.from.usable() && !d.to.usable());
        let gained_usable = decisions.iter().any(|d| !d.from.usable() && d.to.usable());
        for d in decisions {
            let d = Box::new(d);
            match &d.action {
                Action::None => cmds.push(Command::Note(d)),
                Action::Fail { rescue } => {
                    if let Some(r) = rescue
                        && rescued.insert(r.conn)
                    {
                        cmds.push(Command::Rescue {
                            rescue: r.clone(),
                            decision: d.clone(),
                        });
                    }
                    cmds.push(Command::Dm(Work {
                        map: d.map.clone(),
                        lane: Lane::Message,
                        op: fail_path(d.dev),
                        why: Why::Decision(d),
                    }));
                }
                Action::Reinstate => cmds.push(Command::Dm(Work {
                    map: d.map.clone(),
                    lane: Lane::Message,
                    op: reinstate_path(d.dev),
                    why: Why::Decision(d),
                })),
                Action::Demote | Action::Restore => {
                    // A demoted path alone in its group: steer I/O away at once with a
                    // message; the reload that moves its group last may have to wait.
                    if d.action == Action::Demote
                        && let Some(m) = self.maps.get(&d.map)
                        && let Some(best) = self.best_usable_group(m)
                        && !m.table.groups[best]
                            .paths
                            .iter()
                            .any(|p| p.dev == d.dev.to_string())
                    {
                        cmds.push(Command::Dm(Work {
                            map: d.map.clone(),
                            lane: Lane::Message,
                            op: DmOp::Message(Message::SwitchGroup(best as u32 + 1)),
                            why: Why::Demotion,
                        }));
                    }
                    replan = true;
                    cmds.push(Command::Note(d));
                }
            }
        }
        if replan {
            cmds.push(Command::Replan);
        }
        // A path lost may leave a map one session: its original timeout goes back at once.
        // A path back only allows the fast value, which can wait for the next tick: the
        // checker reinstates a portal's paths one result at a time, and at 128 LUNs
        // working it out after each one held the loop for seconds under TCG.
        if lost_usable {
            self.tmo_stale = false;
            cmds.extend(self.recovery_tmo_commands());
        } else if gained_usable {
            self.tmo_stale = true;
        }
        cmds
    }

    /// What the checker's interval reads: the managed maps and the paths in them.
    pub fn poll_targets(&self) -> (Vec<String>, Vec<String>) {
        // Only maps the kernel has: one still being created is read after its create
        // (which asks for a poll), and reading it before says only "no such map".
        let maps = self
            .maps
            .iter()
            .filter(|(_, m)| m.info.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        let paths = self
            .maps
            .values()
            .flat_map(|m| m.table.path_devts())
            .filter_map(|d| self.disk(d).map(|x| x.name.clone()))
            .collect();
        (maps, paths)
    }

    /// Learns from the checker interval's reads: paths the kernel failed, sessions not
    /// logged in, `no_path_retry`, and the recovery timeouts to keep.
    pub fn poll(&mut self, p: Poll, now: Ns) -> Vec<Command> {
        let mut cmds = Vec::new();
        for (name, i) in p.iscsi {
            self.iscsi.insert(name, i);
        }
        let by_name: BTreeMap<&str, DevT> = self
            .disks
            .iter()
            .map(|d| (d.name.as_str(), d.dev))
            .collect();
        // Each batch is judged as one: at 128 maps, input by input held the loop seconds.
        let sessions: Vec<Input> = self
            .iscsi
            .iter()
            .filter_map(|(n, i)| {
                Some(Input::Session {
                    dev: *by_name.get(n.as_str())?,
                    logged_in: i.session_state == "LOGGED_IN",
                })
            })
            .collect();
        let out = self.health.handle_batch(now, sessions);
        cmds.extend(self.commands(out));
        // Paths and their connection now: a session that logged in again has a new one.
        let infos: Vec<PathInfo> = self
            .maps
            .iter()
            .flat_map(|(name, m)| m.table.path_devts().map(move |d| (name, d)))
            .filter_map(|(map, d)| {
                let disk = self.disk(d)?;
                let i = self.iscsi.get(&disk.name);
                Some(PathInfo {
                    dev: disk.dev,
                    name: disk.name.clone(),
                    map: map.clone(),
                    session: i.map(|i| i.session.clone()),
                    conn: i.and_then(|i| i.conn),
                    dm_failed: false,
                })
            })
            .collect();
        self.health.set_paths(infos, now);
        if self.alua_moved(p.alua) {
            cmds.push(Command::Replan);
        }
        let mut dm_states = Vec::new();
        let mut statuses = Vec::new();
        for (map, st) in p.status {
            let st = match st {
                Ok(s) => s,
                // Being made or changed right now: its status is read after.
                Err(e) if self.busy.contains_key(&map) => {
                    debug!(map = %map, "reading status: {e}");
                    continue;
                }
                Err(e) => {
                    warn!(map = %map, "reading status: {e}");
                    continue;
                }
            };
            dm_states.extend(st.paths().filter_map(|ps| {
                Some(Input::DmState {
                    dev: ps.devt()?,
                    failed: ps.state == DmPathState::Failed,
                    read_ns: p.started_ns,
                })
            }));
            statuses.push((map, st));
        }
        let out = self.health.handle_batch(now, dm_states);
        cmds.extend(self.commands(out));
        for (map, st) in statuses {
            cmds.extend(self.no_path_retry(&map, &st));
            if let Some(m) = self.maps.get_mut(&map) {
                m.status = Some(st);
            }
        }
        cmds.extend(self.recovery_tmo_commands());
        cmds
    }

    /// `no_path_retry N`: after N intervals with no usable path, queued I/O fails
    /// (`fail_if_no_path`), and the expiry is part of the desired table until a path is
    /// back, so no reload turns queueing on again behind the count's back.
    fn no_path_retry(&mut self, map: &str, st: &MultipathStatus) -> Vec<Command> {
        let Some(wwid) = self.maps.get(map).map(|m| m.wwid.clone()) else {
            return Vec::new();
        };
        let retry = self.settings(&wwid).no_path_retry;
        let m = self.maps.get_mut(map).expect("looked up above");
        let NoPathRetry::Retries(n) = retry else {
            m.no_path_ticks = 0;
            m.expired = false;
            return Vec::new();
        };
        let msg = |op: Message| {
            vec![Command::Dm(Work {
                map: map.to_string(),
                lane: Lane::Message,
                op: DmOp::Message(op),
                why: Why::NoPathRetry,
            })]
        };
        if st.active_paths() > 0 {
            m.no_path_ticks = 0;
            if m.expired {
                m.expired = false;
                info!(map = %map, "a path is back: queueing if no path again");
                return msg(Message::QueueIfNoPath);
            }
            return Vec::new();
        }
        m.no_path_ticks += 1;
        if m.no_path_ticks > n && !m.expired {
            m.expired = true;
            warn!(map = %map, "no path for {n} checks: failing queued I/O (no_path_retry {n})");
            return msg(Message::FailIfNoPath);
        }
        Vec::new()
    }

    /// Recovery timeouts to write: 0 (or the configured fast value) on a logged-in
    /// session whose every map has a usable path on another session, so its I/O comes
    /// back at once when its connection dies; the original value, from the ledger, on a
    /// session carrying a map's last usable path, so that path rides out a short outage.
    fn recovery_tmo_commands(&mut self) -> Vec<Command> {
        let Some(fast) = self.opts.fast_recovery_tmo else {
            return Vec::new();
        };
        if !self.opts.health.rescue {
            return Vec::new();
        }
        // Runs at every path lost and every poll: one walk of the maps with borrowed keys.
        // Building string maps of every path, as it first did, cost ~100 us at 256 paths
        // natively and 20-80 ms of the loop under TCG.
        // Per session: whether every map it carries has a usable path on another session,
        // and the session as last read (its state and recovery timeout).
        let mut sessions: BTreeMap<&str, (bool, &IscsiPath)> = BTreeMap::new();
        // One map's sessions, each with whether it has a usable path of the map.
        let mut mine: Vec<(&str, bool)> = Vec::new();
        for m in self.maps.values() {
            mine.clear();
            for dev in m.table.path_devts() {
                let Some(i) = self.disk(dev).and_then(|d| self.iscsi.get(&d.name)) else {
                    continue;
                };
                let usable = self.health.state(dev).is_some_and(PathState::usable);
                match mine.iter_mut().find(|(s, _)| *s == i.session) {
                    Some((_, u)) => *u |= usable,
                    None => mine.push((i.session.as_str(), usable)),
                }
                sessions.entry(i.session.as_str()).or_insert((true, i));
            }
            for (s, _) in &mine {
                let elsewhere = mine.iter().any(|(x, u)| x != s && *u);
                if let Some(e) = sessions.get_mut(s) {
                    e.0 &= elsewhere;
                }
            }
        }
        let wanted: Vec<(String, Option<u32>, bool)> = sessions
            .into_iter()
            .filter(|(_, (_, i))| i.session_state == "LOGGED_IN")
            .map(|(s, (elsewhere, i))| (s.to_string(), i.recovery_tmo, elsewhere))
            .collect();
        let mut cmds = Vec::new();
        for (session, current, others_everywhere) in wanted {
            let want = if others_everywhere {
                fast
            } else {
                match self.ledger.original(&session) {
                    Some(o) => o,
                    None => continue,
                }
            };
            if current == Some(want) {
                if !others_everywhere && self.ledger.forget(&session) {
                    save_ledger(&self.ledger);
                }
                continue;
            }
            if self.tmo_asked.get(&session) == Some(&want) {
                continue;
            }
            if others_everywhere
                && let Some(c) = current
                && self.ledger.remember(&session, c)
            {
                save_ledger(&self.ledger);
            }
            self.tmo_asked.insert(session.clone(), want);
            cmds.push(Command::SetRecoveryTmo {
                session,
                secs: want,
            });
        }
        cmds
    }

    /// A recovery timeout write finished: remember the value the session has now.
    pub fn recovery_tmo_written(&mut self, session: &str, secs: u32, result: &std::io::Result<()>) {
        if self.tmo_asked.get(session) == Some(&secs) {
            self.tmo_asked.remove(session);
        }
        match result {
            Ok(()) => {
                for i in self.iscsi.values_mut().filter(|i| i.session == session) {
                    i.recovery_tmo = Some(secs);
                }
                if self.ledger.original(session) == Some(secs) && self.ledger.forget(session) {
                    save_ledger(&self.ledger);
                }
            }
            // EBUSY: the session left LOGGED_IN meanwhile; the next poll tries again.
            Err(e) => debug!(session, secs, "recovery_tmo not written: {e}"),
        }
    }

    /// For a rescue on `session`: the recovery timeout to write first (the fast value)
    /// when the session does not have it yet, its original kept in the ledger.
    pub fn fast_tmo_for_rescue(&mut self, session: &str) -> Option<u32> {
        let fast = self.opts.fast_recovery_tmo?;
        let current = self
            .iscsi
            .values()
            .find(|i| i.session == session)
            .and_then(|i| i.recovery_tmo);
        if current == Some(fast) || self.tmo_asked.get(session) == Some(&fast) {
            return None;
        }
        self.tmo_asked.insert(session.to_string(), fast);
        if let Some(c) = current
            && self.ledger.remember(session, c)
        {
            save_ledger(&self.ledger);
        }
        Some(fast)
    }

    /// Every session's original recovery timeout, to put back on exit.
    pub fn recovery_tmo_originals(&self) -> Vec<(String, u32)> {
        self.ledger
            .sessions()
            .map(|(s, v)| (s.to_string(), v))
            .collect()
    }

    pub fn ledger_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// The disk of the last scan with this device number.
    fn disk(&self, dev: DevT) -> Option<&ScsiDisk> {
        self.disks.get(*self.disk_at.get(&dev)?)
    }

    /// What the checker checks now: every path of every managed map but admin-failed ones.
    pub fn check_targets(&self) -> Vec<CheckTarget> {
        let mut out = Vec::new();
        for m in self.maps.values() {
            let s = self.settings(&m.wwid);
            let kind = self.opts.checker.unwrap_or(s.path_checker);
            let timeout = self.opts.checker_timeout.unwrap_or(s.checker_timeout);
            for d in m.table.path_devts().filter_map(|d| self.disk(d)) {
                if self.health.state(d.dev) != Some(PathState::AdminFailed) {
                    out.push(CheckTarget {
                        dev: d.dev,
                        node: PathBuf::from("/dev").join(&d.name),
                        kind,
                        timeout,
                    });
                }
            }
        }
        out
    }

    /// The failed paths of maps left with no usable path: checked every second, so the
    /// first path back carries the map's I/O again at once.
    pub fn pathless_check_targets(&self) -> Vec<CheckTarget> {
        let pathless = self.health.pathless();
        if pathless.is_empty() {
            return Vec::new();
        }
        pathless
            .into_iter()
            .filter_map(|dev| self.check_target(dev))
            .collect()
    }

    /// How to check one path now (a sibling's answer may corroborate a stall).
    /// Only that path's map is looked at: this runs for each sibling of every stall, and
    /// building every path's target for it (a map's settings match the built-in device
    /// table) cost ~250 ms of the loop per stall at 128 maps in a debug build under TCG.
    pub fn check_target(&self, dev: DevT) -> Option<CheckTarget> {
        if self.health.state(dev) == Some(PathState::AdminFailed) {
            return None;
        }
        let disk = self.disk(dev)?;
        let m = self
            .maps
            .values()
            .find(|m| m.table.path_devts().any(|d| d == dev))?;
        let s = self.settings(&m.wwid);
        Some(CheckTarget {
            dev,
            node: PathBuf::from("/dev").join(&disk.name),
            kind: self.opts.checker.unwrap_or(s.path_checker),
            timeout: self.opts.checker_timeout.unwrap_or(s.checker_timeout),
        })
    }

    /// An admin request that changes something. Returns the work to run and the message
    /// to answer once it succeeded.
    pub fn admin(&mut self, req: &Request, now: Ns) -> Result<(Vec<Command>, String), String> {
        match req {
            Request::Fail { path } => {
                let (map, dev, name) = self.find_path(path)?;
                let cmds = self.input(now, Input::AdminFail { dev });
                if !cmds.iter().any(|c| matches!(c, Command::Dm(_))) {
                    return Err(format!(
                        "{name} ({dev}) is already failed by an admin in {map}"
                    ));
                }
                info!(map = %map, path = %name, "path failed by admin");
                Ok((
                    cmds,
                    format!(
                        "{name} ({dev}) failed in {map}; it stays failed until `mpathd reinstate {name}`"
                    ),
                ))
            }
            Request::Reinstate { path } => {
                let (map, dev, name) = self.find_path(path)?;
                let cmds = self.input(now, Input::AdminReinstate { dev });
                info!(map = %map, path = %name, "path reinstated by admin");
                Ok((cmds, format!("{name} ({dev}) reinstated in {map}")))
            }
            Request::SwitchGroup { map, group } => {
                let m = self
                    .maps
                    .get(map)
                    .ok_or_else(|| format!("no map named {map} (see `mpathd show maps`)"))?;
                let n = m.table.groups.len();
                if *group == 0 || *group as usize > n {
                    return Err(format!("{map} has {n} path group(s): pick 1 to {n}"));
                }
                info!(map = %map, group, "switched path group by admin");
                Ok((
                    vec![Command::Dm(Work {
                        map: map.clone(),
                        lane: Lane::Message,
                        op: DmOp::Message(Message::SwitchGroup(*group)),
                        why: Why::Admin,
                    })],
                    format!("{map}: I/O now goes to path group {group}"),
                ))
            }
            Request::Remove { map } => {
                if !self.maps.contains_key(map) {
                    return Err(format!("no map named {map} (see `mpathd show maps`)"));
                }
                *self.busy.entry(map.clone()).or_default() += 1;
                Ok((
                    vec![Command::Dm(Work {
                        map: map.clone(),
                        lane: Lane::Table,
                        op: DmOp::Remove,
                        why: Why::Admin,
                    })],
                    format!(
                        "{map} removed; mpathd will not make it again until `mpathd reconfigure` or a restart"
                    ),
                ))
            }
            other => Err(format!("{other:?} is not an admin command")),
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
        self.maps
            .iter()
            .find(|(_, m)| m.table.path_devs().any(|p| p == dev.to_string()))
            .map(|(n, _)| (n.clone(), dev, label))
            .ok_or_else(|| format!("{arg} is in no multipath map"))
    }

    /// Each managed map's merged settings and where each came from (`show config`).
    pub fn config_view(&self) -> Vec<crate::control::MapConfig> {
        self.maps
            .iter()
            .map(|(name, m)| {
                let paths: Vec<&ScsiDisk> = self
                    .disks
                    .iter()
                    .filter(|d| d.wwid.as_deref() == Some(m.wwid.as_str()))
                    .collect();
                let paths: Vec<&ScsiDisk> = if paths.is_empty() {
                    self.last_disk.get(&m.wwid).into_iter().collect()
                } else {
                    paths
                };
                let id = maps::map_ident(&m.wwid, paths.iter().copied());
                crate::control::MapConfig {
                    map: name.clone(),
                    wwid: m.wwid.clone(),
                    vendor: id.vendor.to_string(),
                    product: id.product.to_string(),
                    settings: self
                        .cfg
                        .explain(&id)
                        .into_iter()
                        .map(|e| crate::control::SettingRow {
                            setting: e.setting.to_string(),
                            value: e.value,
                            source: e.source.to_string(),
                            note: e.note,
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// A copy of what `show` commands need.
    pub fn view_ctx(&self) -> ViewCtx {
        ViewCtx {
            maps: self
                .maps
                .values()
                .filter_map(|m| {
                    Some(super::views::MapCopy {
                        info: m.info.clone()?,
                        table: m.table.clone(),
                        status: m.status.clone(),
                    })
                })
                .collect(),
            disks: self.disks.clone(),
            iscsi: self.iscsi.clone(),
            prio: self.prio.clone(),
            skipped: self.skipped.clone(),
            health: self
                .disks
                .iter()
                .filter_map(|d| Some((d.dev, self.health.view(d.dev)?)))
                .collect(),
        }
    }

    /// The managed paths with their connection and learned limits (for the probes).
    pub fn watched_paths(&self) -> Vec<(DevT, String, Option<Conn>)> {
        let mut out: Vec<(DevT, String, Option<Conn>)> = self
            .maps
            .values()
            .flat_map(|m| m.table.path_devts())
            .filter_map(|d| self.disk(d))
            .map(|d| {
                (
                    d.dev,
                    d.name.clone(),
                    self.iscsi.get(&d.name).and_then(|i| i.conn),
                )
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether any map's prio weighs paths by their iSCSI portal.
    fn uses_portal_prio(&self) -> bool {
        let portal = |p: &PrioSource| matches!(p, PrioSource::Weighted(ws) if ws.iter().any(|w| w.key == WeightKey::Portal));
        self.cfg.prio_sources().any(portal)
    }

    /// A map's merged settings, from its WWID and what its paths report (vendor,
    /// product, ALUA support).
    pub fn settings(&self, wwid: &str) -> MapSettings {
        if let Some(s) = self.settings_cache.borrow().get(wwid) {
            return s.clone();
        }
        let s = self.settings_uncached(wwid);
        self.settings_cache
            .borrow_mut()
            .insert(wwid.to_string(), s.clone());
        s
    }

    fn settings_uncached(&self, wwid: &str) -> MapSettings {
        let mut paths = self
            .disks
            .iter()
            .filter(|d| d.wwid.as_deref() == Some(wwid))
            .peekable();
        if paths.peek().is_none() {
            let last = self.last_disk.get(wwid);
            return self.cfg.settings_for(&maps::map_ident(wwid, last));
        }
        self.cfg.settings_for(&maps::map_ident(wwid, paths))
    }

    /// Learns the paths' ALUA states read at the checker interval. True when a path's
    /// priority changed (or its ALUA handler came or went, which changes the map's
    /// settings): the maps must be regrouped, as a reconcile pass does.
    fn alua_moved(&mut self, alua: BTreeMap<String, Alua>) -> bool {
        let mut moved = false;
        for (name, a) in alua {
            let Some(d) = self.disks.iter_mut().find(|d| d.name == name) else {
                continue;
            };
            if d.access_state == a.access_state && d.preferred == a.preferred {
                continue;
            }
            let before = alua_words(d.access_state.as_deref(), d.preferred);
            let handler_changed = d.access_state.is_some() != a.access_state.is_some();
            d.access_state = a.access_state;
            d.preferred = a.preferred;
            let d = d.clone();
            self.settings_cache.get_mut().clear();
            let new = self.prio_of(&d);
            let old = self.base_prio.get(&name).copied();
            let map = self
                .maps
                .iter()
                .find(|(_, m)| m.table.path_devs().any(|p| p == d.dev.to_string()))
                .map(|(n, _)| n.as_str())
                .unwrap_or("-");
            let after = alua_words(d.access_state.as_deref(), d.preferred);
            if old == Some(new) && !handler_changed {
                debug!(path = %name, map = %map, "ALUA state {before} -> {after}; prio stays {new}");
                continue;
            }
            info!(path = %name, map = %map, "ALUA state {before} -> {after}; prio {} -> {new}: regrouping",
                old.map_or("-".to_string(), |o| o.to_string()));
            moved = true;
        }
        moved
    }

    /// The path's priority from its map's prio source.
    fn prio_of(&self, d: &ScsiDisk) -> u32 {
        match self.cfg.settings_for(&maps::path_ident(d)).prio {
            PrioSource::Const => 1,
            PrioSource::Alua => alua_prio(d.access_state.as_deref(), d.preferred)
                // In transition: keep the last priority until the kernel learns the new
                // state (it asks again until the transition ends), so a map is not
                // regrouped twice for one move.
                .unwrap_or_else(|| self.base_prio.get(&d.name).copied().unwrap_or(0)),
            PrioSource::Weighted(ws) => {
                let portal = self.iscsi.get(&d.name).map(|i| i.portal.to_string());
                ws.iter()
                    .find(|w| w.matches(&d.name, &d.hctl, portal.as_deref()))
                    .map(|w| w.prio)
                    .unwrap_or(0)
            }
        }
    }
}

/// multipath-tools' `alua` and `sysfs` prioritizers' values, so group_by_prio orders the
/// paths as multipathd does: optimized 50, non-optimized 10, LBA-dependent 5, standby 1,
/// anything else (unavailable, offline, no handler) 0; a preferred port group adds 80
/// unless it is optimized already (their default, without `exclusive_pref_bit`). `None`
/// while the port group is in transition: the state is not known yet.
fn alua_prio(access_state: Option<&str>, preferred: bool) -> Option<u32> {
    let base = match access_state {
        Some("transitioning") => return None,
        Some("active/optimized") => 50,
        Some("active/non-optimized") => 10,
        Some("lba-dependent") => 5,
        Some("standby") => 1,
        _ => 0,
    };
    Some(if preferred && base != 50 {
        base + 80
    } else {
        base
    })
}

/// `active/optimized`, `standby (preferred)`, `no ALUA handler`: for the log.
fn alua_words(access_state: Option<&str>, preferred: bool) -> String {
    match (access_state, preferred) {
        (None, _) => "no ALUA handler".into(),
        (Some(s), false) => s.into(),
        (Some(s), true) => format!("{s} (preferred)"),
    }
}

fn save_ledger(l: &Ledger) {
    if let Err(e) = l.save() {
        warn!(
            "saving {}: {e}; the sessions' original recovery timeouts may not be restored after a crash",
            l.path().display()
        );
    }
}

/// The name the config gives a map: its `[[multipaths]]` alias, else (with
/// user_friendly_names) its bound name; `None` when neither names it (it keeps its name).
fn desired_name(cfg: &Config, bindings: &Bindings, wwid: &str) -> Option<String> {
    if let Some(a) = cfg.entry_for(wwid).and_then(|e| e.alias.clone()) {
        return Some(a);
    }
    if cfg.defaults.user_friendly_names {
        return bindings.lookup(wwid).map(String::from);
    }
    None
}

/// The planner's questions, answered from the config, the bindings and the wwids file.
struct EngineRules<'a> {
    cfg: &'a Config,
    bindings: &'a mut Bindings,
    wwids: &'a WwidsFile,
    removed: &'a BTreeSet<String>,
    live_names: std::collections::HashSet<String>,
    new_binding: bool,
    /// WWIDs whose `no_path_retry` count ran out: their tables do not queue.
    expired: &'a BTreeSet<String>,
    /// WWIDs with a demoted path: one group per priority, so the path can sit apart.
    demoted: &'a BTreeSet<String>,
}

impl Rules for EngineRules<'_> {
    fn policy(&self, wwid: &str, paths: &[&Candidate]) -> MapPolicy {
        let id = maps::map_ident(wwid, paths.iter().map(|c| &c.disk));
        let mut p = MapPolicy::from_settings(&self.cfg.settings_for(&id));
        if self.demoted.contains(wwid) && p.grouping == Grouping::Multibus {
            p.grouping = Grouping::GroupByPrio;
        }
        if self.expired.contains(wwid) {
            p.queue_if_no_path = false;
        }
        p
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
mod tests;
