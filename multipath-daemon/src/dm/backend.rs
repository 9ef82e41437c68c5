//! What the daemon asks of device-mapper, as one small trait.
//!
//! [`DmBackend`] has two implementations: [`super::KernelDm`] on the devicemapper crate
//! (the only code that issues dm ioctls) and [`SimDm`], an in-memory device-mapper that
//! keeps tables and path states the way the kernel does, so that the planning and the
//! daemon's logic are tested without a kernel (stratisd's engine does the same).

use std::{collections::BTreeMap, fmt, sync::Mutex};

use super::{
    MultipathStatus, MultipathTable, ParseError, PathState, PathStatus, PgState, PgStatus,
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
    fn message(&self, name: &str, msg: &Message) -> Result<(), DmError>;
}

/// Whether two tables drive the kernel the same way, so that adopting a map whose live
/// table matches needs no reload. The kernel reads paths back as `MAJ:MIN` and may add
/// `retain_attached_hw_handler`, so both sides are normalised first.
pub fn tables_match(want: &MultipathTable, live: &MultipathTable) -> bool {
    normalise(want) == normalise(live)
}

fn normalise(t: &MultipathTable) -> MultipathTable {
    let mut t = t.clone();
    t.features
        .retain(|f| *f != super::Feature::RetainAttachedHwHandler);
    t.features.sort_by_key(|f| format!("{f:?}"));
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

fn check_table(name: &str, table: &MultipathTable) -> Result<(), DmError> {
    for dev in table.path_devs() {
        if dev.parse::<DevT>().is_err() {
            return Err(DmError::Invalid {
                name: name.to_string(),
                message: format!("path {dev:?} is not MAJ:MIN"),
            });
        }
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
