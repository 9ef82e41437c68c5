//! What the daemon asks of device-mapper, as one small trait.
//!
//! [`DmBackend`] has two implementations: [`super::KernelDm`] on the devicemapper crate
//! (the only code that issues dm ioctls) and [`SimDm`], an in-memory device-mapper that
//! keeps tables and path states the way the kernel does, so that the planning and the
//! daemon's logic are tested without a kernel (stratisd's engine does the same).

use std::{collections::BTreeMap, fmt, sync::Mutex};

use super::{
    Feature, MultipathStatus, MultipathTable, ParseError, PathState, PathStatus, PgState, PgStatus,
    QueueMode,
};
use crate::model::DevT;

/// A multipath map as device-mapper reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapInfo {
    /// The dm name: `/dev/mapper/<name>`.
    pub name: String,
    /// The dm uuid; maps mpathd (and multipathd) made are `mpath-<wwid>`.
    pub uuid: Option<String>,
    /// The map's own device number (`dm-<minor>`).
    #[serde(serialize_with = "ser_display")]
    pub dev: DevT,
    /// Openers of the map (mounts, processes): a map in use is never removed.
    pub open_count: u32,
    pub suspended: bool,
    /// Size in 512-byte sectors of the live table.
    pub size_sectors: u64,
}

fn ser_display<S: serde::Serializer, T: fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl MapInfo {
    /// The WWID a map was made for, read from its `mpath-` uuid.
    pub fn wwid(&self) -> Option<&str> {
        self.uuid.as_deref()?.strip_prefix(UUID_PREFIX)
    }
}

/// dm uuid prefix of multipath maps; multipath-tools uses the same, so maps either tool
/// made are recognised by the other.
pub const UUID_PREFIX: &str = "mpath-";

/// A message to a live multipath map (`dmsetup message <map> 0 <msg>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    FailPath(DevT),
    ReinstatePath(DevT),
    /// 1-based group number, as in the table.
    SwitchGroup(u32),
    QueueIfNoPath,
    FailIfNoPath,
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::FailPath(d) => write!(f, "fail_path {d}"),
            Message::ReinstatePath(d) => write!(f, "reinstate_path {d}"),
            Message::SwitchGroup(n) => write!(f, "switch_group {n}"),
            Message::QueueIfNoPath => f.write_str("queue_if_no_path"),
            Message::FailIfNoPath => f.write_str("fail_if_no_path"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("no device-mapper map named {0:?}")]
    NotFound(String),
    #[error("map {name:?} is open ({open_count} opener(s)): unmount it or stop what uses it first")]
    Busy { name: String, open_count: u32 },
    #[error("map {0:?} already exists")]
    Exists(String),
    #[error("map {name:?} is not a multipath map (target {target:?})")]
    NotMultipath { name: String, target: String },
    #[error("{name}: the kernel's {what} does not parse: {source}")]
    Parse {
        name: String,
        what: &'static str,
        #[source]
        source: Box<ParseError>,
    },
    #[error("{name}: {op} failed: {message}")]
    Kernel {
        name: String,
        op: &'static str,
        message: String,
    },
    #[error("{name}: {message}")]
    Invalid { name: String, message: String },
}

/// Device-mapper, as far as multipath maps go. Every call is one or a few ioctls; none
/// blocks on I/O (reload suspends with `noflush`, so queued I/O is kept, not failed).
pub trait DmBackend: Send + Sync {
    /// Every map whose table is a single `multipath` target.
    fn list(&self) -> Result<Vec<MapInfo>, DmError>;
    fn info(&self, name: &str) -> Result<Option<MapInfo>, DmError>;
    /// The live table.
    fn table(&self, name: &str) -> Result<MultipathTable, DmError>;
    fn status(&self, name: &str) -> Result<MultipathStatus, DmError>;
    /// Creates `name` with `uuid` and loads and activates `table` of `size_sectors`.
    /// On failure nothing is left behind.
    fn create(
        &self,
        name: &str,
        uuid: &str,
        size_sectors: u64,
        table: &MultipathTable,
    ) -> Result<MapInfo, DmError>;
    /// Replaces the live table: load into the inactive slot, suspend without flushing
    /// (I/O queued in the map is kept), resume. If the load fails the live table stays.
    fn reload(&self, name: &str, size_sectors: u64, table: &MultipathTable) -> Result<(), DmError>;
    /// Removes the map; refuses with [`DmError::Busy`] while it is open.
    fn remove(&self, name: &str) -> Result<(), DmError>;
    /// Renames the map (allowed while it is open: no reload, no I/O interruption).
    fn rename(&self, name: &str, new_name: &str) -> Result<(), DmError>;
    fn message(&self, name: &str, msg: &Message) -> Result<(), DmError>;
}

/// Whether two tables drive the kernel the same way, so that adopting a map whose live
/// table matches needs no reload.
///
/// The kernel (6.1) does not read a table back as it was loaded (strings in
/// tests/dm_kernel.rs), so both sides are normalised first:
/// - `retain_attached_hw_handler` is dropped (the kernel adds it, e.g. with
///   `queue_mode bio`), as are `queue_mode rq` and `mq` (the default, never printed);
///   features are compared as a set;
/// - hardware handler arguments are dropped (never printed); with
///   `retain_attached_hw_handler` on either side the handler itself is ignored, since the
///   kernel then prints the handler it found attached to the paths;
/// - the initial group is ignored: it reads back as the group the next I/O goes to, so
///   it follows `switch_group` and failovers;
/// - for `round-robin`, `queue-length` and `service-time`: no group-wide selector
///   arguments (printed as `0`), every path with the selector's full argument count, the
///   repeat count 1 (the kernel ignores any other) and `service-time`'s relative
///   throughput defaulting to 1.
///
/// Paths, groups, selectors and `queue_if_no_path` are compared as they are; paths are
/// `MAJ:MIN`, which is how tables are loaded and read back.
pub fn tables_match(want: &MultipathTable, live: &MultipathTable) -> bool {
    let retain = |t: &MultipathTable| t.features.contains(&Feature::RetainAttachedHwHandler);
    let (mut a, mut b) = (normalise(want), normalise(live));
    if retain(want) || retain(live) {
        a.hw_handler = None;
        b.hw_handler = None;
    }
    a == b
}

fn normalise(t: &MultipathTable) -> MultipathTable {
    let mut t = t.clone();
    t.features.retain(|f| {
        !matches!(
            f,
            Feature::RetainAttachedHwHandler | Feature::QueueMode(QueueMode::Rq | QueueMode::Mq)
        )
    });
    t.features.sort_by_key(|f| format!("{f:?}"));
    if let Some(h) = &mut t.hw_handler {
        h.args.clear();
    }
    t.initial_pg = 0;
    for g in &mut t.groups {
        // The kernel's per-path arguments with their defaults (`table_args` of the
        // selector); only the first, the repeat count, is always read back as 1.
        let defaults: &[&str] = match g.selector.name.as_str() {
            "round-robin" | "queue-length" => &["1"],
            "service-time" => &["1", "1"],
            _ => continue,
        };
        g.selector.args.clear();
        g.args_per_path = defaults.len() as u32;
        for p in &mut g.paths {
            let mut args: Vec<String> = defaults.iter().map(|s| s.to_string()).collect();
            for (i, a) in p.args.iter().enumerate().take(defaults.len()).skip(1) {
                args[i] = a.clone();
            }
            p.args = args;
        }
    }
    t
}

/// In-memory device-mapper for tests: maps, tables, path states and fail counts behave
/// as the kernel's do for the calls the daemon makes, and every call is logged.
#[derive(Default)]
pub struct SimDm {
    inner: Mutex<SimInner>,
}

#[derive(Default)]
struct SimInner {
    maps: BTreeMap<String, SimMap>,
    next_minor: u32,
    log: Vec<String>,
    opens: BTreeMap<String, u32>,
}

struct SimMap {
    uuid: String,
    dev: DevT,
    size: u64,
    table: MultipathTable,
    /// Per path dev: failed?, fail count.
    paths: BTreeMap<String, (bool, u32)>,
    active_pg: u32,
    queue_if_no_path: bool,
}

impl SimDm {
    pub fn new() -> Self {
        Self::default()
    }

    /// The calls made so far (`create NAME`, `reload NAME`, `message NAME MSG`...).
    pub fn log(&self) -> Vec<String> {
        self.inner.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.inner.lock().unwrap().log.clear();
    }

    /// Pretends `n` processes hold the map open.
    pub fn set_open(&self, name: &str, n: u32) {
        self.inner.lock().unwrap().opens.insert(name.to_string(), n);
    }

    /// Fails a path as the kernel does on an I/O error.
    pub fn kernel_fail_path(&self, name: &str, dev: &str) {
        let mut g = self.inner.lock().unwrap();
        if let Some(m) = g.maps.get_mut(name)
            && let Some(p) = m.paths.get_mut(dev)
            && !p.0
        {
            p.0 = true;
            p.1 += 1;
        }
    }

    fn info_of(name: &str, m: &SimMap, opens: &BTreeMap<String, u32>) -> MapInfo {
        MapInfo {
            name: name.to_string(),
            uuid: Some(m.uuid.clone()),
            dev: m.dev,
            open_count: opens.get(name).copied().unwrap_or(0),
            suspended: false,
            size_sectors: m.size,
        }
    }
}

/// Tables are loaded with device numbers only: a path by name would be resolved by the
/// kernel at load time and could name another device by then.
pub(super) fn check_table(name: &str, table: &MultipathTable) -> Result<(), DmError> {
    if let Some(dev) = table.path_devs().find(|d| d.parse::<DevT>().is_err()) {
        return Err(DmError::Invalid {
            name: name.to_string(),
            message: format!("path {dev:?} is not MAJ:MIN (tables are loaded with device numbers)"),
        });
    }
    Ok(())
}

impl DmBackend for SimDm {
    fn list(&self) -> Result<Vec<MapInfo>, DmError> {
        let g = self.inner.lock().unwrap();
        Ok(g.maps
            .iter()
            .map(|(n, m)| Self::info_of(n, m, &g.opens))
            .collect())
    }

    fn info(&self, name: &str) -> Result<Option<MapInfo>, DmError> {
        let g = self.inner.lock().unwrap();
        Ok(g.maps.get(name).map(|m| Self::info_of(name, m, &g.opens)))
    }

    fn table(&self, name: &str) -> Result<MultipathTable, DmError> {
        let g = self.inner.lock().unwrap();
        let m = g
            .maps
            .get(name)
            .ok_or_else(|| DmError::NotFound(name.to_string()))?;
        let mut t = m.table.clone();
        t.set_queue_if_no_path(m.queue_if_no_path);
        Ok(t)
    }

    fn status(&self, name: &str) -> Result<MultipathStatus, DmError> {
        let g = self.inner.lock().unwrap();
        let m = g
            .maps
            .get(name)
            .ok_or_else(|| DmError::NotFound(name.to_string()))?;
        let groups = m
            .table
            .groups
            .iter()
            .enumerate()
            .map(|(i, grp)| {
                let paths: Vec<PathStatus> = grp
                    .paths
                    .iter()
                    .map(|p| {
                        let (failed, count) = m.paths.get(&p.dev).copied().unwrap_or_default();
                        PathStatus {
                            dev: p.dev.clone(),
                            state: if failed {
                                PathState::Failed
                            } else {
                                PathState::Active
                            },
                            fail_count: count,
                            selector_args: Vec::new(),
                        }
                    })
                    .collect();
                let any_ok = paths.iter().any(|p| p.is_active());
                PgStatus {
                    state: if i as u32 + 1 == m.active_pg {
                        PgState::Active
                    } else if any_ok {
                        PgState::Enabled
                    } else {
                        PgState::Disabled
                    },
                    selector_status: Vec::new(),
                    selector_args_per_path: 0,
                    paths,
                }
            })
            .collect();
        Ok(MultipathStatus {
            features: vec!["0".into(), "0".into()],
            hw_handler: Vec::new(),
            next_pg: m.active_pg,
            groups,
        })
    }

    fn create(
        &self,
        name: &str,
        uuid: &str,
        size_sectors: u64,
        table: &MultipathTable,
    ) -> Result<MapInfo, DmError> {
        check_table(name, table)?;
        let mut g = self.inner.lock().unwrap();
        if g.maps.contains_key(name) {
            return Err(DmError::Exists(name.to_string()));
        }
        let minor = g.next_minor;
        g.next_minor += 1;
        let m = SimMap {
            uuid: uuid.to_string(),
            dev: DevT::new(253, minor),
            size: size_sectors,
            paths: table
                .path_devs()
                .map(|d| (d.to_string(), (false, 0)))
                .collect(),
            active_pg: table.initial_pg,
            queue_if_no_path: table.queue_if_no_path(),
            table: table.clone(),
        };
        let info = Self::info_of(name, &m, &g.opens);
        g.maps.insert(name.to_string(), m);
        g.log.push(format!("create {name}"));
        Ok(info)
    }

    fn reload(&self, name: &str, size_sectors: u64, table: &MultipathTable) -> Result<(), DmError> {
        check_table(name, table)?;
        let mut g = self.inner.lock().unwrap();
        let m = g
            .maps
            .get_mut(name)
            .ok_or_else(|| DmError::NotFound(name.to_string()))?;
        // A new table starts every path active, as the kernel does.
        m.paths = table
            .path_devs()
            .map(|d| (d.to_string(), (false, 0)))
            .collect();
        m.table = table.clone();
        m.size = size_sectors;
        m.active_pg = table.initial_pg;
        m.queue_if_no_path = table.queue_if_no_path();
        g.log.push(format!("reload {name}"));
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), DmError> {
        let mut g = self.inner.lock().unwrap();
        if !g.maps.contains_key(name) {
            return Err(DmError::NotFound(name.to_string()));
        }
        let open_count = g.opens.get(name).copied().unwrap_or(0);
        if open_count > 0 {
            return Err(DmError::Busy {
                name: name.to_string(),
                open_count,
            });
        }
        g.maps.remove(name);
        g.log.push(format!("remove {name}"));
        Ok(())
    }

    fn rename(&self, name: &str, new_name: &str) -> Result<(), DmError> {
        let mut g = self.inner.lock().unwrap();
        if g.maps.contains_key(new_name) {
            return Err(DmError::Exists(new_name.to_string()));
        }
        let m = g
            .maps
            .remove(name)
            .ok_or_else(|| DmError::NotFound(name.to_string()))?;
        g.maps.insert(new_name.to_string(), m);
        if let Some(o) = g.opens.remove(name) {
            g.opens.insert(new_name.to_string(), o);
        }
        g.log.push(format!("rename {name} {new_name}"));
        Ok(())
    }

    fn message(&self, name: &str, msg: &Message) -> Result<(), DmError> {
        let mut g = self.inner.lock().unwrap();
        let m = g
            .maps
            .get_mut(name)
            .ok_or_else(|| DmError::NotFound(name.to_string()))?;
        let bad = |message: String| DmError::Kernel {
            name: name.to_string(),
            op: "message",
            message,
        };
        match msg {
            Message::FailPath(d) | Message::ReinstatePath(d) => {
                let p = m
                    .paths
                    .get_mut(&d.to_string())
                    .ok_or_else(|| bad(format!("{msg}: no such path in the table")))?;
                let fail = matches!(msg, Message::FailPath(_));
                if fail && !p.0 {
                    p.1 += 1;
                }
                p.0 = fail;
            }
            Message::SwitchGroup(n) => {
                if *n == 0 || *n as usize > m.table.groups.len() {
                    return Err(bad(format!("{msg}: no such group")));
                }
                m.active_pg = *n;
            }
            Message::QueueIfNoPath => m.queue_if_no_path = true,
            Message::FailIfNoPath => m.queue_if_no_path = false,
        }
        g.log.push(format!("message {name} {msg}"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_keeps_tables_states_and_refuses_to_remove_open_maps() {
        let dm = SimDm::new();
        let t = MultipathTable::failover(["8:0", "8:16"]);
        let info = dm.create("mpatha", "mpath-36001", 2048, &t).unwrap();
        assert_eq!(info.wwid(), Some("36001"));
        assert!(tables_match(&t, &dm.table("mpatha").unwrap()));
        dm.message("mpatha", &Message::FailPath(DevT::new(8, 0)))
            .unwrap();
        let st = dm.status("mpatha").unwrap();
        assert_eq!(st.path("8:0").unwrap().state, PathState::Failed);
        assert_eq!(st.path("8:0").unwrap().fail_count, 1);
        assert_eq!(st.active_paths(), 1);
        assert!(
            dm.message("mpatha", &Message::FailPath(DevT::new(8, 32)))
                .is_err()
        );
        assert!(dm.message("mpatha", &Message::SwitchGroup(3)).is_err());
        dm.set_open("mpatha", 1);
        assert!(matches!(dm.remove("mpatha"), Err(DmError::Busy { .. })));
        dm.set_open("mpatha", 0);
        dm.remove("mpatha").unwrap();
        assert!(dm.list().unwrap().is_empty());
        assert!(
            dm.create("x", "mpath-1", 8, &MultipathTable::failover(["sda"]))
                .is_err()
        );
    }

    /// Tables as loaded and as Debian's 6.1 kernel read them back (lab: dm-kernel).
    #[test]
    fn tables_match_what_the_kernel_reads_back() {
        let rr2 = "0 0 1 1 round-robin 0 2 1 7:0 1 7:1 1";
        let pairs = [
            ("0 0 1 1 round-robin 0 2 1 7:0 100 7:1 7", rr2),
            ("0 0 1 1 round-robin 0 2 0 7:0 7:1", rr2),
            (
                "1 queue_if_no_path 0 1 1 queue-length 0 2 1 7:0 128 7:1 128",
                "1 queue_if_no_path 0 1 1 queue-length 0 2 1 7:0 1 7:1 1",
            ),
            (
                "0 0 1 1 queue-length 0 2 0 7:0 7:1",
                "0 0 1 1 queue-length 0 2 1 7:0 1 7:1 1",
            ),
            (
                "0 0 1 1 service-time 0 2 2 7:0 128 1 7:1 128 4",
                "0 0 1 1 service-time 0 2 2 7:0 1 1 7:1 1 4",
            ),
            (
                "0 0 1 1 service-time 0 2 0 7:0 7:1",
                "0 0 1 1 service-time 0 2 2 7:0 1 1 7:1 1 1",
            ),
            (
                "0 0 1 1 service-time 0 2 1 7:0 5 7:1 6",
                "0 0 1 1 service-time 0 2 2 7:0 1 1 7:1 1 1",
            ),
            (
                "0 0 1 1 round-robin 1 7 1 1 7:0 1",
                "0 0 1 1 round-robin 0 1 1 7:0 1",
            ),
            (
                "2 queue_mode bio 0 1 1 round-robin 0 1 1 7:0 1",
                "3 retain_attached_hw_handler queue_mode bio 0 1 1 round-robin 0 1 1 7:0 1",
            ),
            (
                "2 queue_mode mq 0 1 1 round-robin 0 1 1 7:0 1",
                "0 0 1 1 round-robin 0 1 1 7:0 1",
            ),
            (
                "2 queue_mode rq 0 1 1 round-robin 0 1 1 7:0 1",
                "0 0 1 1 round-robin 0 1 1 7:0 1",
            ),
            // After switch_group 2 the initial group reads back as 2.
            (
                "1 queue_if_no_path 0 2 1 round-robin 0 1 1 7:0 1 round-robin 0 1 1 7:1 1",
                "1 queue_if_no_path 0 2 2 round-robin 0 1 1 7:0 1 round-robin 0 1 1 7:1 1",
            ),
            // The kernel prints the attached handler, without its arguments.
            (
                "1 retain_attached_hw_handler 2 emc 1 1 1 round-robin 0 1 1 8:0 1",
                "1 retain_attached_hw_handler 1 alua 1 1 round-robin 0 1 1 8:0 1",
            ),
            (
                "0 2 alua x 1 1 round-robin 0 1 1 8:0 1",
                "0 1 alua 1 1 round-robin 0 1 1 8:0 1",
            ),
        ];
        for (want, live) in pairs {
            let (w, l): (MultipathTable, MultipathTable) =
                (want.parse().unwrap(), live.parse().unwrap());
            assert!(tables_match(&w, &l), "{want} vs {live}");
        }
        let differ = [
            // relative throughput
            (
                "0 0 1 1 service-time 0 2 2 7:0 1 1 7:1 1 4",
                "0 0 1 1 service-time 0 2 2 7:0 1 1 7:1 1 1",
            ),
            ("0 0 1 1 round-robin 0 2 1 7:0 1 7:2 1", rr2),
            ("0 0 1 1 round-robin 0 2 1 7:1 1 7:0 1", rr2),
            ("0 0 1 1 round-robin 0 3 1 7:0 1 7:1 1 7:2 1", rr2),
            ("0 0 1 1 queue-length 0 2 1 7:0 1 7:1 1", rr2),
            (
                "1 queue_if_no_path 0 1 1 round-robin 0 2 1 7:0 1 7:1 1",
                rr2,
            ),
            (
                "0 0 2 1 round-robin 0 1 1 7:0 1 round-robin 0 1 1 7:1 1",
                rr2,
            ),
            (
                "2 queue_mode bio 0 1 1 round-robin 0 1 1 7:0 1",
                "0 0 1 1 round-robin 0 1 1 7:0 1",
            ),
            (
                "0 1 alua 1 1 round-robin 0 1 1 8:0 1",
                "0 0 1 1 round-robin 0 1 1 8:0 1",
            ),
            (
                "2 pg_init_retries 5 0 1 1 round-robin 0 1 1 8:0 1",
                "0 0 1 1 round-robin 0 1 1 8:0 1",
            ),
        ];
        for (want, live) in differ {
            let (w, l): (MultipathTable, MultipathTable) =
                (want.parse().unwrap(), live.parse().unwrap());
            assert!(!tables_match(&w, &l), "{want} should not match {live}");
            assert!(!tables_match(&l, &w), "{live} should not match {want}");
        }
    }

    #[test]
    fn tables_match_ignores_what_the_kernel_adds() {
        let want = MultipathTable::failover(["8:0", "8:16"]).with_queue_if_no_path(true);
        let mut live = want.clone();
        live.features
            .push(super::super::Feature::RetainAttachedHwHandler);
        assert!(tables_match(&want, &live));
        let other = MultipathTable::multibus(["8:0", "8:16"]).with_queue_if_no_path(true);
        assert!(!tables_match(&want, &other));
    }
}
