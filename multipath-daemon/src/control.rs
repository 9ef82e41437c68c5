//! The control socket's protocol and what `mpathd show` prints.
//!
//! One JSON request per line, one JSON response per line, over a root-only unix socket.
//! The daemon answers with plain data ([`Topology`] and friends); the CLI formats it, so
//! `--json` output and the text come from the same values.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::health::PathState;

/// Where the daemon listens unless the config or `--socket` says otherwise.
pub use crate::config::DEFAULT_SOCKET;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    ShowTopology,
    ShowPaths,
    ShowMaps,
    /// Fail a path in its map and keep it failed until `reinstate`.
    Fail {
        path: String,
    },
    Reinstate {
        path: String,
    },
    /// 1-based group, as `show topology` numbers them.
    SwitchGroup {
        map: String,
        group: u32,
    },
    /// Remove a map (refused while it is open); the daemon does not make it again until
    /// `reconfigure` or a restart.
    Remove {
        map: String,
    },
    /// Re-read the config and rescan.
    Reconfigure,
    /// Each managed map's merged settings and where each came from.
    ShowConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok { message: String },
    Topology(Topology),
    Paths(Vec<PathView>),
    Maps(Vec<MapSummary>),
    Config(Vec<MapConfig>),
    Error { message: String },
}

/// One map's merged settings (`mpathd show config`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapConfig {
    pub map: String,
    pub wwid: String,
    pub vendor: String,
    pub product: String,
    pub settings: Vec<SettingRow>,
}

/// One setting: its value, where it came from (`file:line:col [level]`, `built-in:
/// ENTRY` or `default`) and why it differs from what that level wrote, if it does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SettingRow {
    pub setting: String,
    pub value: String,
    pub source: String,
    pub note: Option<String>,
}

/// `show config`: a block per map, the settings aligned as `format_explained` prints them.
pub fn format_config(maps: &[MapConfig]) -> String {
    let mut out = String::new();
    for (i, m) in maps.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "{} ({}) {},{}\n",
            m.map, m.wwid, m.vendor, m.product
        ));
        let w_set = m
            .settings
            .iter()
            .map(|r| r.setting.len())
            .max()
            .unwrap_or(0);
        let w_val = m
            .settings
            .iter()
            .map(|r| r.value.chars().count())
            .max()
            .unwrap_or(0);
        for r in &m.settings {
            let line = format!("  {:<w_set$}  {:<w_val$}  {}", r.setting, r.value, r.source);
            out.push_str(line.trim_end());
            out.push('\n');
            if let Some(n) = &r.note {
                out.push_str(&format!("  {:w_set$}  note: {n}\n", ""));
            }
        }
    }
    if maps.is_empty() {
        out.push_str("no maps managed\n");
    }
    out
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    pub maps: Vec<MapView>,
}

/// One map, as `multipath -ll` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapView {
    pub name: String,
    pub wwid: String,
    /// `dm-0`
    pub sysfs_name: String,
    /// `253:0`
    pub dev: String,
    pub vendor: String,
    pub product: String,
    pub size_bytes: u64,
    /// The table's feature words with their count: `1 queue_if_no_path`.
    pub features: String,
    /// `0`, or `1 alua`.
    pub hw_handler: String,
    /// `rw` or `ro`; `?` when unknown.
    pub write_protect: String,
    pub open_count: u32,
    pub groups: Vec<GroupView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupView {
    /// 1-based.
    pub number: u32,
    /// Selector with its args: `service-time 0`.
    pub policy: String,
    pub prio: u32,
    /// `active`, `enabled` or `disabled`.
    pub status: String,
    pub paths: Vec<PathView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathView {
    pub name: String,
    pub dev: String,
    pub hctl: String,
    pub wwid: Option<String>,
    pub vendor: String,
    pub product: String,
    pub size_bytes: u64,
    /// The map the path is in, if any.
    pub map: Option<String>,
    /// device-mapper's view: `active`, `failed`, or `-` when in no map.
    pub dm_state: String,
    /// mpathd's state of the path (see [`PathState`]); `None` when it is in no map
    /// mpathd manages.
    pub state: Option<PathState>,
    /// Why it is in that state (the last transition's reason).
    pub reason: Option<String>,
    /// The SCSI device's state: `running`, `offline`, `transport-offline`...
    pub device_state: String,
    pub fail_count: u32,
    pub prio: u32,
    /// Why the path is in no map, when it is not.
    pub note: Option<String>,
    pub iscsi: Option<IscsiView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IscsiView {
    pub session: String,
    pub target: String,
    pub portal: String,
    pub state: String,
}

/// One line of `show maps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapSummary {
    pub name: String,
    pub wwid: String,
    pub sysfs_name: String,
    pub paths: usize,
    pub active_paths: usize,
    pub queue_if_no_path: bool,
    pub open_count: u32,
    pub size_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach mpathd at {path} (is the daemon running? `systemctl status mpathd`, or start `mpathd daemon`)"
    )]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to mpathd at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mpathd at {path} sent a reply this mpathd does not understand: {message}")]
    Protocol { path: String, message: String },
}

/// Sends one request and waits for its answer.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(req).expect("requests serialize");
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).map_err(io)?;
    serde_json::from_str(&reply).map_err(|e| ClientError::Protocol {
        path: path.clone(),
        message: e.to_string(),
    })
}

/// `256M`, `1.5G`: binary units, as multipath -ll prints sizes.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["", "K", "M", "G", "T", "P"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{}{}", v as u64, UNITS[u])
    } else {
        format!("{:.1}{}", v, UNITS[u])
    }
}

/// The topology as `multipath -ll` prints it.
pub fn format_topology(t: &Topology) -> String {
    let mut out = String::new();
    for m in &t.maps {
        out.push_str(&format!(
            "{} ({}) {} {},{}\n",
            m.name, m.wwid, m.sysfs_name, m.vendor, m.product
        ));
        out.push_str(&format!(
            "size={} features='{}' hwhandler='{}' wp={}\n",
            human_size(m.size_bytes),
            m.features,
            m.hw_handler,
            m.write_protect
        ));
        for (gi, g) in m.groups.iter().enumerate() {
            let last_group = gi + 1 == m.groups.len();
            out.push_str(&format!(
                "{}-+- policy='{}' prio={} status={}\n",
                if last_group { '`' } else { '|' },
                g.policy,
                g.prio,
                g.status
            ));
            for (pi, p) in g.paths.iter().enumerate() {
                let last_path = pi + 1 == g.paths.len();
                out.push_str(&format!(
                    "{} {}- {} {} {} {} {} {}\n",
                    if last_group { ' ' } else { '|' },
                    if last_path { '`' } else { '|' },
                    p.hctl,
                    p.name,
                    p.dev,
                    p.dm_state,
                    checker_word(p.state),
                    p.device_state
                ));
            }
        }
    }
    out
}

/// The path's state in the words `multipath -ll` uses in that column, so the layout
/// reads as admins know it: ready, shaky (degraded), faulty, delayed (probation: up but
/// not yet reinstated); admin-failed is mpathd's own.
pub fn checker_word(state: Option<PathState>) -> &'static str {
    match state {
        Some(PathState::Active) => "ready",
        Some(PathState::Degraded) => "shaky",
        Some(PathState::Failed) => "faulty",
        Some(PathState::Probation) => "delayed",
        Some(PathState::AdminFailed) => "admin-failed",
        None => "undef",
    }
}

/// `show paths`: one line per path, mapped or not.
pub fn format_paths(paths: &[PathView]) -> String {
    let mut rows = vec![
        [
            "hctl", "dev", "dev_t", "prio", "dm_st", "state", "dev_st", "map", "wwid", "why",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in paths {
        rows.push(vec![
            p.hctl.clone(),
            p.name.clone(),
            p.dev.clone(),
            p.prio.to_string(),
            p.dm_state.clone(),
            p.state.map_or("-", PathState::name).into(),
            p.device_state.clone(),
            p.map.clone().unwrap_or_else(|| "-".into()),
            p.wwid.clone().unwrap_or_else(|| "-".into()),
            p.reason
                .clone()
                .or_else(|| p.note.clone())
                .unwrap_or_default(),
        ]);
    }
    columns(&rows)
}

/// `show maps`.
pub fn format_maps(maps: &[MapSummary]) -> String {
    let mut rows = vec![
        [
            "name", "sysfs", "paths", "active", "queueing", "open", "size", "wwid",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for m in maps {
        rows.push(vec![
            m.name.clone(),
            m.sysfs_name.clone(),
            m.paths.to_string(),
            m.active_paths.to_string(),
            if m.queue_if_no_path { "yes" } else { "no" }.into(),
            m.open_count.to_string(),
            human_size(m.size_bytes),
            m.wwid.clone(),
        ]);
    }
    columns(&rows)
}

fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join(" ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str, dev: &str, hctl: &str, st: &str) -> PathView {
        PathView {
            name: name.into(),
            dev: dev.into(),
            hctl: hctl.into(),
            wwid: Some("36001".into()),
            vendor: "LIO-ORG".into(),
            product: "FILEIO".into(),
            size_bytes: 256 << 20,
            map: Some("sanvol1".into()),
            dm_state: st.into(),
            state: Some(PathState::Active),
            reason: None,
            device_state: "running".into(),
            fail_count: 0,
            prio: 1,
            note: None,
            iscsi: None,
        }
    }

    #[test]
    fn topology_prints_like_multipath_ll() {
        let t = Topology {
            maps: vec![MapView {
                name: "sanvol1".into(),
                wwid: "36001".into(),
                sysfs_name: "dm-0".into(),
                dev: "253:0".into(),
                vendor: "LIO-ORG".into(),
                product: "FILEIO".into(),
                size_bytes: 256 << 20,
                features: "1 queue_if_no_path".into(),
                hw_handler: "0".into(),
                write_protect: "rw".into(),
                open_count: 0,
                groups: vec![
                    GroupView {
                        number: 1,
                        policy: "service-time 0".into(),
                        prio: 1,
                        status: "active".into(),
                        paths: vec![path("sda", "8:0", "0:0:0:0", "active")],
                    },
                    GroupView {
                        number: 2,
                        policy: "service-time 0".into(),
                        prio: 1,
                        status: "enabled".into(),
                        paths: vec![path("sdb", "8:16", "1:0:0:0", "failed")],
                    },
                ],
            }],
        };
        assert_eq!(
            format_topology(&t),
            "sanvol1 (36001) dm-0 LIO-ORG,FILEIO\n\
             size=256M features='1 queue_if_no_path' hwhandler='0' wp=rw\n\
             |-+- policy='service-time 0' prio=1 status=active\n\
             | `- 0:0:0:0 sda 8:0 active ready running\n\
             `-+- policy='service-time 0' prio=1 status=enabled\n\
             \x20 `- 1:0:0:0 sdb 8:16 failed ready running\n"
        );
        let json = serde_json::to_string(&Response::Topology(t.clone())).unwrap();
        assert_eq!(
            serde_json::from_str::<Response>(&json).unwrap(),
            Response::Topology(t)
        );
    }

    #[test]
    fn requests_are_one_json_object_each() {
        let r = Request::SwitchGroup {
            map: "sanvol1".into(),
            group: 2,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"cmd":"switch_group","map":"sanvol1","group":2}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format_disk"}"#).is_err());
    }

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(human_size(256 << 20), "256M");
        assert_eq!(human_size(1536 << 20), "1.5G");
        assert_eq!(human_size(512), "512");
    }

    #[test]
    fn paths_table_lines_up() {
        let s = format_paths(&[path("sda", "8:0", "0:0:0:0", "active")]);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0].find("dev_t"),
            lines[1].find("8:0"),
            "columns align:\n{s}"
        );
    }
}
