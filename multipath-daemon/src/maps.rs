//! From paths to maps: which multipath maps should exist, with which tables, and what to
//! do to the live ones to get there. Pure: paths, policies and device-mapper's current
//! state in, steps out, so every rule here is tested without a kernel.
//!
//! The rules a storage admin relies on:
//! - a map whose live table already matches is adopted as it is (a daemon restart never
//!   reloads a map that is right);
//! - a live map keeps its name, whatever the config says now (renaming a mounted map under
//!   a user is worse than a stale name);
//! - a map is never removed because its paths went away: it is reloaded without them, and
//!   with no path at all it keeps queueing (if it did) until paths come back or an admin
//!   removes it;
//! - a path whose size disagrees with its LUN's other paths is left out, not trusted.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    config::{self, GroupingPolicy, MapSettings, PathIdent, RrWeight, SelectorKind},
    dm::{
        Feature, HwHandler, MapInfo, MultipathStatus, MultipathTable, PathGroup, PathSpec,
        QueueMode, Selector, tables_match,
    },
    topology::ScsiDisk,
};

/// How a map's paths are put into priority groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    /// One path per group: active/passive, tried in priority order.
    Failover,
    /// All paths in one group: active/active.
    Multibus,
    /// One group per priority value, highest first.
    GroupByPrio,
}

/// The path selector of every group: the kernel's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorName {
    RoundRobin,
    QueueLength,
    ServiceTime,
}

impl SelectorName {
    pub fn dm_name(self) -> &'static str {
        match self {
            SelectorName::RoundRobin => "round-robin",
            SelectorName::QueueLength => "queue-length",
            SelectorName::ServiceTime => "service-time",
        }
    }

    /// Per-path args: the repeat count, and for service-time a relative throughput of
    /// one. The kernel reads every repeat count back as 1, so tables with the default
    /// count compare equal to the live ones as they are.
    fn path_args(self, repeat: u32) -> Vec<String> {
        match self {
            SelectorName::RoundRobin | SelectorName::QueueLength => vec![repeat.to_string()],
            SelectorName::ServiceTime => vec![repeat.to_string(), "1".into()],
        }
    }
}

/// The settings of one map that shape its table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapPolicy {
    pub grouping: Grouping,
    pub selector: SelectorName,
    pub queue_if_no_path: bool,
    /// Go back to the best group whenever the table is rebuilt (`failback immediate`);
    /// otherwise a reload keeps I/O on the group it is on.
    pub failback_immediate: bool,
    /// The SCSI device handler the table names (`hardware_handler`).
    pub hw_handler: Option<HwHandler>,
    /// The table's features besides `queue_if_no_path` (`pg_init_retries 50`, ...).
    pub features: Vec<Feature>,
    /// `rr_weight priorities`: a path's repeat count is its priority (1 when 0).
    pub repeat_by_prio: bool,
}

impl Default for MapPolicy {
    fn default() -> Self {
        Self {
            grouping: Grouping::Failover,
            selector: SelectorName::ServiceTime,
            queue_if_no_path: false,
            failback_immediate: false,
            hw_handler: None,
            features: Vec::new(),
            repeat_by_prio: false,
        }
    }
}

impl MapPolicy {
    /// What of a map's merged settings goes into its table.
    pub fn from_settings(s: &MapSettings) -> Self {
        let f = &s.features;
        let mut features = Vec::new();
        if let Some(n) = f.pg_init_retries {
            features.push(Feature::PgInitRetries(n));
        }
        if let Some(n) = f.pg_init_delay_msecs {
            features.push(Feature::PgInitDelayMsecs(n));
        }
        if f.retain_attached_hw_handler {
            features.push(Feature::RetainAttachedHwHandler);
        }
        if let Some(m) = f.queue_mode {
            features.push(Feature::QueueMode(match m {
                config::QueueMode::Bio => QueueMode::Bio,
                config::QueueMode::Rq => QueueMode::Rq,
                config::QueueMode::Mq => QueueMode::Mq,
            }));
        }
        Self {
            grouping: match s.path_grouping_policy {
                GroupingPolicy::Failover => Grouping::Failover,
                GroupingPolicy::Multibus => Grouping::Multibus,
                GroupingPolicy::GroupByPrio => Grouping::GroupByPrio,
            },
            selector: match s.path_selector {
                SelectorKind::RoundRobin => SelectorName::RoundRobin,
                SelectorKind::QueueLength => SelectorName::QueueLength,
                SelectorKind::ServiceTime => SelectorName::ServiceTime,
            },
            queue_if_no_path: s.queue_if_no_path,
            failback_immediate: s.failback == config::Failback::Immediate,
            hw_handler: s.hardware_handler.as_ref().map(|h| HwHandler {
                name: h.name.clone(),
                args: h.args.clone(),
            }),
            features,
            repeat_by_prio: s.rr_weight == RrWeight::Priorities,
        }
    }
}

/// What a path offers the config's lookup. `tpgs` is read from whether the kernel has
/// an ALUA access state for the path (its ALUA handler is attached) until topology
/// reports TPGS itself.
pub fn path_ident(d: &ScsiDisk) -> PathIdent<'_> {
    PathIdent {
        wwid: d.wwid.as_deref().unwrap_or(""),
        vendor: &d.vendor,
        product: &d.model,
        revision: &d.rev,
        tpgs: d.access_state.is_some(),
    }
}

/// What a map offers the config's lookup: its WWID, its first path's vendor, product
/// and revision, and TPGS only when every path reports it (multipath-tools loads the
/// ALUA handler only then). Without paths only the WWID is known.
pub fn map_ident<'a>(
    wwid: &'a str,
    paths: impl IntoIterator<Item = &'a ScsiDisk>,
) -> PathIdent<'a> {
    let mut paths = paths.into_iter().peekable();
    let mut id = match paths.peek() {
        Some(d) => path_ident(d),
        None => PathIdent {
            wwid,
            vendor: "",
            product: "",
            revision: "",
            tpgs: false,
        },
    };
    id.wwid = wwid;
    id.tpgs = id.tpgs && paths.all(|d| d.access_state.is_some());
    id
}

/// A path that may go into a map: a SCSI disk that passed the blacklist, with its
/// priority (higher is better) from the configured prio source.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub disk: ScsiDisk,
    pub prio: u32,
}

/// A live multipath map as read from device-mapper.
#[derive(Clone, Debug)]
pub struct LiveMap {
    pub info: MapInfo,
    pub table: MultipathTable,
    pub status: Option<MultipathStatus>,
}

/// A map as it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantMap {
    pub wwid: String,
    pub name: String,
    pub size_sectors: u64,
    pub table: MultipathTable,
    /// Kernel names of the paths in the table, in table order.
    pub paths: Vec<String>,
}

/// What to do to device-mapper for one LUN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Create(WantMap),
    Reload {
        want: WantMap,
        why: String,
    },
    /// The live map already has the table we want.
    Keep(WantMap),
}

/// A path left out of every map, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub why: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub skipped: Vec<Skipped>,
}

/// What the planner needs to know about one WWID beyond its paths.
pub trait Rules {
    /// The policy of the map of `wwid` with these paths (they tell the hardware; there
    /// may be none).
    fn policy(&self, wwid: &str, paths: &[&Candidate]) -> MapPolicy;
    /// Whether a LUN with `paths` paths and no map yet should get one
    /// (`find_multipaths`).
    fn wants_map(&self, wwid: &str, paths: usize) -> bool;
    /// Name for a new map.
    fn name_for(&mut self, wwid: &str) -> String;
}

/// Plans every map: `candidates` are all non-blacklisted disks, `live` the multipath
/// maps device-mapper has now.
pub fn plan(candidates: &[Candidate], live: &[LiveMap], rules: &mut dyn Rules) -> Plan {
    let mut out = Plan::default();
    let mut by_wwid: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates {
        match c.disk.wwid.as_deref() {
            Some(w) => by_wwid.entry(w).or_default().push(c),
            None => out.skipped.push(Skipped {
                path: c.disk.name.clone(),
                why: "reports no WWID (VPD page 0x83): cannot tell which LUN it reaches".into(),
            }),
        }
    }
    let live_by_wwid: BTreeMap<&str, &LiveMap> = live
        .iter()
        .filter_map(|m| Some((m.info.wwid()?, m)))
        .collect();
    let wwids: BTreeSet<&str> = by_wwid
        .keys()
        .copied()
        .chain(live_by_wwid.keys().copied())
        .collect();
    for wwid in wwids {
        let paths = by_wwid.get(wwid).cloned().unwrap_or_default();
        let live = live_by_wwid.get(wwid).copied();
        if live.is_none() && !rules.wants_map(wwid, paths.len()) {
            continue;
        }
        let (paths, size) = agree_on_size(paths, live, &mut out.skipped);
        let policy = rules.policy(wwid, &paths);
        let table = desired_table(&paths, &policy, live);
        let want = WantMap {
            wwid: wwid.to_string(),
            name: match live {
                Some(m) => m.info.name.clone(),
                None => rules.name_for(wwid),
            },
            size_sectors: size,
            paths: table_order(&table, &paths),
            table,
        };
        out.steps.push(match live {
            None => Step::Create(want),
            Some(m) => match why_reload(&want, m) {
                None => Step::Keep(want),
                Some(why) => Step::Reload { want, why },
            },
        });
    }
    out
}

fn why_reload(want: &WantMap, live: &LiveMap) -> Option<String> {
    if want.size_sectors != live.info.size_sectors {
        return Some(format!(
            "size {} -> {} sectors",
            live.info.size_sectors, want.size_sectors
        ));
    }
    if tables_match(&want.table, &live.table) {
        return None;
    }
    let had: BTreeSet<&str> = live.table.path_devs().collect();
    let has: BTreeSet<&str> = want.table.path_devs().collect();
    let added: Vec<&str> = has.difference(&had).copied().collect();
    let gone: Vec<&str> = had.difference(&has).copied().collect();
    Some(match (added.is_empty(), gone.is_empty()) {
        (true, true) => "table differs from the policy".into(),
        _ => {
            let mut parts = Vec::new();
            if !added.is_empty() {
                parts.push(format!("paths added: {}", added.join(" ")));
            }
            if !gone.is_empty() {
                parts.push(format!("paths gone: {}", gone.join(" ")));
            }
            parts.join("; ")
        }
    })
}

/// Keeps the paths of one size: the live map's if any path has it, else the most common
/// (ties to the larger); the rest are skipped.
fn agree_on_size<'a>(
    paths: Vec<&'a Candidate>,
    live: Option<&LiveMap>,
    skipped: &mut Vec<Skipped>,
) -> (Vec<&'a Candidate>, u64) {
    let sectors = |c: &Candidate| c.disk.size_bytes / 512;
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for c in &paths {
        *counts.entry(sectors(c)).or_default() += 1;
    }
    let live_size = live.map(|m| m.info.size_sectors);
    let size = match live_size {
        Some(s) if counts.contains_key(&s) || paths.is_empty() => s,
        _ => counts
            .iter()
            .max_by_key(|(size, n)| (**n, **size))
            .map(|(s, _)| *s)
            .unwrap_or(0),
    };
    let (keep, drop): (Vec<_>, Vec<_>) = paths.into_iter().partition(|c| sectors(c) == size);
    for c in drop {
        skipped.push(Skipped {
            path: c.disk.name.clone(),
            why: format!(
                "size {} sectors differs from its LUN's other paths ({size}): left out",
                sectors(c)
            ),
        });
    }
    (keep, size)
}

/// The table `paths` should have under `policy`. With `live` and no immediate failback,
/// the group holding the live active path is loaded as the initial group, so a reload
/// (a path added elsewhere) does not move I/O. With `live` and no path at all, the live
/// features and handler are kept: nothing tells the hardware then, and a map that
/// queued keeps queueing.
pub fn desired_table(
    paths: &[&Candidate],
    policy: &MapPolicy,
    live: Option<&LiveMap>,
) -> MultipathTable {
    let mut sorted: Vec<&Candidate> = paths.to_vec();
    // Best first; the kernel name keeps the order stable between runs.
    sorted.sort_by(|a, b| {
        b.prio
            .cmp(&a.prio)
            .then_with(|| name_key(&a.disk.name).cmp(&name_key(&b.disk.name)))
    });
    let spec = |c: &Candidate| {
        let repeat = if policy.repeat_by_prio {
            c.prio.max(1)
        } else {
            1
        };
        PathSpec::new(c.disk.dev.to_string(), policy.selector.path_args(repeat))
    };
    let group = |cs: Vec<&Candidate>| {
        PathGroup::new(
            Selector::new(policy.selector.dm_name()),
            cs.into_iter().map(spec).collect(),
        )
    };
    let groups: Vec<PathGroup> = match policy.grouping {
        Grouping::Failover => sorted.iter().map(|c| group(vec![c])).collect(),
        Grouping::Multibus if sorted.is_empty() => Vec::new(),
        Grouping::Multibus => vec![group(sorted)],
        Grouping::GroupByPrio => {
            let mut by: Vec<(u32, Vec<&Candidate>)> = Vec::new();
            for c in sorted {
                match by.last_mut() {
                    Some((p, v)) if *p == c.prio => v.push(c),
                    _ => by.push((c.prio, vec![c])),
                }
            }
            by.into_iter().map(|(_, v)| group(v)).collect()
        }
    };
    let mut initial_pg = u32::from(!groups.is_empty());
    if !policy.failback_immediate
        && let Some(active) = live.and_then(live_active_dev)
        && let Some(i) = groups
            .iter()
            .position(|g| g.paths.iter().any(|p| p.dev == active))
    {
        initial_pg = i as u32 + 1;
    }
    if let Some(live) = live
        && paths.is_empty()
    {
        return MultipathTable {
            features: live.table.features.clone(),
            hw_handler: live.table.hw_handler.clone(),
            initial_pg,
            groups,
        };
    }
    MultipathTable {
        features: policy.features.clone(),
        hw_handler: policy.hw_handler.clone(),
        initial_pg,
        groups,
    }
    .with_queue_if_no_path(policy.queue_if_no_path)
}

/// An active path of the live map's active group.
fn live_active_dev(live: &LiveMap) -> Option<String> {
    let st = live.status.as_ref()?;
    let g = &st.groups[st.active_group()?];
    g.paths
        .iter()
        .find(|p| p.is_active())
        .map(|p| p.dev.clone())
}

/// sda < sdb < sdz < sdaa, as the kernel allocates them.
fn name_key(name: &str) -> (usize, &str) {
    (name.len(), name)
}

fn table_order(table: &MultipathTable, paths: &[&Candidate]) -> Vec<String> {
    table
        .path_devs()
        .filter_map(|d| {
            paths
                .iter()
                .find(|c| c.disk.dev.to_string() == d)
                .map(|c| c.disk.name.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dm::{DmBackend, Message, SimDm},
        model::DevT,
    };

    fn disk(name: &str, minor: u32, wwid: Option<&str>, mb: u64) -> Candidate {
        Candidate {
            disk: ScsiDisk {
                name: name.into(),
                dev: DevT::new(8, minor),
                hctl: format!("{minor}:0:0:0"),
                vendor: "LIO-ORG".into(),
                model: "FILEIO".into(),
                rev: "4.0".into(),
                size_bytes: mb << 20,
                state: "running".into(),
                wwid: wwid.map(String::from),
                access_state: None,
                preferred: false,
            },
            prio: 1,
        }
    }

    struct R {
        policy: MapPolicy,
        min_paths: usize,
        next: u8,
    }

    impl Rules for R {
        fn policy(&self, _: &str, _: &[&Candidate]) -> MapPolicy {
            self.policy.clone()
        }
        fn wants_map(&self, _: &str, paths: usize) -> bool {
            paths >= self.min_paths
        }
        fn name_for(&mut self, _: &str) -> String {
            self.next += 1;
            format!("mpath{}", (b'a' + self.next - 1) as char)
        }
    }

    fn rules() -> R {
        R {
            policy: MapPolicy::default(),
            min_paths: 2,
            next: 0,
        }
    }

    fn live_of(dm: &SimDm) -> Vec<LiveMap> {
        dm.list()
            .unwrap()
            .into_iter()
            .map(|info| LiveMap {
                table: dm.table(&info.name).unwrap(),
                status: dm.status(&info.name).ok(),
                info,
            })
            .collect()
    }

    fn apply(dm: &SimDm, plan: &Plan) {
        for s in &plan.steps {
            match s {
                Step::Create(w) => {
                    dm.create(
                        &w.name,
                        &format!("mpath-{}", w.wwid),
                        w.size_sectors,
                        &w.table,
                    )
                    .unwrap();
                }
                Step::Reload { want, .. } => dm
                    .reload(&want.name, want.size_sectors, &want.table)
                    .unwrap(),
                Step::Keep(_) => {}
            }
        }
    }

    #[test]
    fn two_paths_to_one_lun_make_one_map_and_a_rerun_changes_nothing() {
        let dm = SimDm::new();
        let c = [
            disk("sda", 0, Some("36001"), 64),
            disk("sdb", 16, Some("36001"), 64),
            disk("sdc", 32, Some("36002"), 64), // one path: not multipathed (min 2)
            disk("sdd", 48, None, 64),
        ];
        let mut r = rules();
        let p = plan(&c, &[], &mut r);
        assert_eq!(p.steps.len(), 1, "{p:?}");
        let Step::Create(w) = &p.steps[0] else {
            panic!("{p:?}")
        };
        assert_eq!((w.name.as_str(), w.size_sectors), ("mpatha", 64 << 11));
        assert_eq!(w.paths, ["sda", "sdb"]);
        assert_eq!(w.table.groups.len(), 2, "failover: a group per path");
        assert_eq!(
            w.table.to_string().split_whitespace().nth(4),
            Some("service-time")
        );
        assert_eq!(p.skipped.len(), 1);
        assert!(p.skipped[0].why.contains("no WWID"));
        apply(&dm, &p);
        dm.clear_log();
        // Restart: the same paths, the live map: adopted as it is.
        let p2 = plan(&c, &live_of(&dm), &mut rules());
        assert!(
            matches!(&p2.steps[..], [Step::Keep(w)] if w.name == "mpatha"),
            "{p2:?}"
        );
    }

    #[test]
    fn a_path_added_or_removed_reloads_and_the_map_keeps_its_name() {
        let dm = SimDm::new();
        let mut c = vec![
            disk("sda", 0, Some("36001"), 64),
            disk("sdb", 16, Some("36001"), 64),
        ];
        let mut r = rules();
        apply(&dm, &plan(&c, &[], &mut r));
        c.push(disk("sdc", 32, Some("36001"), 64));
        r.policy.grouping = Grouping::Multibus; // config changed too: name must stay
        let p = plan(&c, &live_of(&dm), &mut r);
        let [Step::Reload { want, why }] = &p.steps[..] else {
            panic!("{p:?}")
        };
        assert_eq!(want.name, "mpatha");
        assert_eq!(want.paths, ["sda", "sdb", "sdc"]);
        assert!(why.contains("paths added: 8:32"), "{why}");
        apply(&dm, &p);
        // All paths gone: the map stays, reloaded empty, never removed.
        let p = plan(&[], &live_of(&dm), &mut r);
        let [Step::Reload { want, why }] = &p.steps[..] else {
            panic!("{p:?}")
        };
        assert!(want.table.groups.is_empty() && want.size_sectors == 64 << 11);
        assert!(why.contains("paths gone"), "{why}");
    }

    #[test]
    fn group_by_prio_orders_groups_best_first() {
        let mut c = vec![
            disk("sda", 0, Some("w"), 8),
            disk("sdb", 16, Some("w"), 8),
            disk("sdc", 32, Some("w"), 8),
        ];
        c[1].prio = 50;
        c[2].prio = 50;
        let mut r = rules();
        r.policy.grouping = Grouping::GroupByPrio;
        r.policy.selector = SelectorName::RoundRobin;
        r.policy.queue_if_no_path = true;
        let p = plan(&c, &[], &mut r);
        let Step::Create(w) = &p.steps[0] else {
            panic!()
        };
        assert_eq!(
            w.table.to_string(),
            "1 queue_if_no_path 0 2 1 round-robin 0 2 1 8:16 1 8:32 1 round-robin 0 1 1 8:0 1"
        );
    }

    #[test]
    fn a_path_of_another_size_is_left_out() {
        let c = [
            disk("sda", 0, Some("w"), 64),
            disk("sdb", 16, Some("w"), 64),
            disk("sdc", 32, Some("w"), 32),
        ];
        let p = plan(&c, &[], &mut rules());
        let Step::Create(w) = &p.steps[0] else {
            panic!()
        };
        assert_eq!(w.paths, ["sda", "sdb"]);
        assert_eq!(p.skipped[0].path, "sdc");
    }

    #[test]
    fn manual_failback_keeps_io_on_the_live_group_across_a_reload() {
        let dm = SimDm::new();
        let mut c = vec![disk("sda", 0, Some("w"), 8), disk("sdb", 16, Some("w"), 8)];
        let mut r = rules();
        apply(&dm, &plan(&c, &[], &mut r));
        dm.message("mpatha", &Message::SwitchGroup(2)).unwrap();
        c.push(disk("sdc", 32, Some("w"), 8));
        let p = plan(&c, &live_of(&dm), &mut r);
        let [Step::Reload { want, .. }] = &p.steps[..] else {
            panic!("{p:?}")
        };
        assert_eq!(want.table.initial_pg, 2, "stays on sdb's group");
        r.policy.failback_immediate = true;
        let p = plan(&c, &live_of(&dm), &mut r);
        let [Step::Reload { want, .. }] = &p.steps[..] else {
            panic!("{p:?}")
        };
        assert_eq!(want.table.initial_pg, 1);
    }

    #[test]
    fn merged_settings_reach_the_table() {
        use crate::config::{Config, PathIdent};
        // The built-in NetApp entry (features "2 pg_init_retries 50", no_path_retry
        // queue, group_by_prio) and the generic ALUA entry's handler, with the weights of
        // rr_weight priorities from [overrides].
        let cfg =
            Config::from_toml_str("[overrides]\nrr_weight = \"priorities\"\n", "t.toml").unwrap();
        let id = PathIdent {
            wwid: "w",
            vendor: "NETAPP",
            product: "LUN C-Mode",
            revision: "9111",
            tpgs: true,
        };
        let mut r = rules();
        r.policy = MapPolicy::from_settings(&cfg.settings_for(&id));
        assert_eq!(r.policy.grouping, Grouping::GroupByPrio);
        let mut c = vec![disk("sda", 0, Some("w"), 8), disk("sdb", 16, Some("w"), 8)];
        c[0].prio = 50;
        c[1].prio = 10;
        let p = plan(&c, &[], &mut r);
        let Step::Create(w) = &p.steps[0] else {
            panic!("{p:?}")
        };
        assert_eq!(
            w.table.to_string(),
            "3 queue_if_no_path pg_init_retries 50 1 alua 2 1 service-time 0 1 2 8:0 50 1 \
             service-time 0 1 2 8:16 10 1"
        );
        // The kernel reads the repeat counts back as 1: the live table still matches.
        let dm = SimDm::new();
        apply(&dm, &p);
        let p = plan(&c, &live_of(&dm), &mut r);
        assert!(matches!(&p.steps[..], [Step::Keep(_)]), "{p:?}");
        // Without TPGS on every path, no ALUA handler.
        let id = PathIdent { tpgs: false, ..id };
        assert_eq!(
            MapPolicy::from_settings(&cfg.settings_for(&id)).hw_handler,
            None
        );
    }

    #[test]
    fn with_no_path_left_the_live_features_and_handler_stay() {
        let dm = SimDm::new();
        let c = vec![disk("sda", 0, Some("w"), 8), disk("sdb", 16, Some("w"), 8)];
        let mut r = rules();
        r.policy.queue_if_no_path = true;
        r.policy.features = vec![Feature::PgInitRetries(50)];
        r.policy.hw_handler = Some(HwHandler {
            name: "alua".into(),
            args: vec![],
        });
        apply(&dm, &plan(&c, &[], &mut r));
        // Every path gone: nothing tells the hardware, so the policy is the defaults'
        // (as the daemon computes it without a path); the map keeps what it had.
        let mut bare = rules();
        let p = plan(&[], &live_of(&dm), &mut bare);
        let [Step::Reload { want, .. }] = &p.steps[..] else {
            panic!("{p:?}")
        };
        assert!(want.table.groups.is_empty());
        assert!(want.table.queue_if_no_path(), "still queueing");
        assert_eq!(want.table.pg_init_retries(), Some(50));
        assert_eq!(
            want.table.hw_handler.as_ref().map(|h| h.name.as_str()),
            Some("alua")
        );
    }

    #[test]
    fn map_ident_takes_tpgs_only_when_every_path_has_it() {
        let mut a = disk("sda", 0, Some("w"), 8).disk;
        let mut b = disk("sdb", 16, Some("w"), 8).disk;
        a.access_state = Some("active/optimized".into());
        let id = map_ident("w", [&a, &b]);
        assert_eq!(
            (id.vendor, id.product, id.revision),
            ("LIO-ORG", "FILEIO", "4.0")
        );
        assert!(!id.tpgs);
        b.access_state = Some("active/non-optimized".into());
        assert!(map_ident("w", [&a, &b]).tpgs);
        assert!(path_ident(&a).tpgs);
        let none = map_ident("w", []);
        assert_eq!((none.wwid, none.vendor, none.tpgs), ("w", "", false));
    }

    #[test]
    fn kernel_name_order_is_numeric_like() {
        let mut v = ["sdaa", "sdb", "sda", "sdz"];
        v.sort_by_key(|n| name_key(n));
        assert_eq!(v, ["sda", "sdb", "sdz", "sdaa"]);
    }
}
