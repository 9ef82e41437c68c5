//! `mpathd probe`: the eBPF probes on block devices named on the command line, each event
//! printed as it happens and every device's counters printed on exit.
//!
//! It composes [`topology`](crate::topology) (which device a name is, which iSCSI
//! connection its session uses now) and [`ebpf`](crate::ebpf) (the probes); the binary
//! only checks its arguments and turns them into [`resolve_all`]'s list and [`Options`].

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};

use crate::{
    ebpf::{
        ConnEvent, ConnEventKind, ConnThresholds, DevT, EbpfError, ErrorClass, PathEvent,
        PathEventKind, PathReading, PathThresholds, ProbeEvent, ProbeVariant, WatchSpec, Watcher,
        WatcherOptions, monotonic_ns,
    },
    model::Conn,
    topology::Sysfs,
};

/// The log lines keep the target they had when this code was in the binary, so filters
/// and greps written for `mpathd probe` still match.
const LOG: &str = "mpathd";

/// A device named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// As events and the summary name it: its kernel name (`sda`) when sysfs has the
    /// device, else the node's file name or the `MAJOR:MINOR` given.
    pub name: String,
    pub dev: DevT,
    /// Its iSCSI connection, when it is an iSCSI disk with one.
    pub conn: Option<Conn>,
}

/// What to watch for and how to print it.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// JSON lines instead of text.
    pub json: bool,
    pub path: PathThresholds,
    pub tcp: ConnThresholds,
    pub portal_port: u16,
    /// How often the probes look for stalls (above 0, at most 1 s).
    pub scan_interval: Duration,
    /// Watch the iSCSI disks' TCP connections, and follow them when a session reconnects.
    pub watch_tcp: bool,
    /// Stop after this long; `None`: at SIGINT or SIGTERM.
    pub duration: Option<Duration>,
}

/// A device path (`/dev/sda`) or `MAJOR:MINOR`, with the iSCSI connection `sysfs` shows
/// behind it now.
pub fn resolve(arg: &str, sysfs: &Sysfs) -> Result<Target> {
    let (given, dev) = if let Some((ma, mi)) = arg.split_once(':')
        && let (Ok(major), Ok(minor)) = (ma.parse(), mi.parse())
    {
        (arg.to_owned(), DevT::new(major, minor))
    } else {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = std::fs::metadata(arg)
            .with_context(|| format!("{arg}: not a device path or MAJOR:MINOR"))?;
        if !meta.file_type().is_block_device() {
            bail!("{arg} is not a block device");
        }
        let rdev = meta.rdev();
        let given = Path::new(arg)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| arg.to_owned());
        (given, DevT::new(libc::major(rdev), libc::minor(rdev)))
    };
    // By kernel name, so a MAJ:MIN or a by-path link gets its session's connection
    // watched (and followed) like its sdX would.
    let name = sysfs.block_name(dev).unwrap_or(given);
    let conn = sysfs.iscsi_path(&name).ok().flatten().and_then(|p| p.conn);
    Ok(Target { name, dev, conn })
}

/// Every device given, in order; the first error stops.
pub fn resolve_all(args: &[String], sysfs: &Sysfs) -> Result<Vec<Target>> {
    let mut targets: Vec<Target> = Vec::new();
    for arg in args {
        let t = resolve(arg, sysfs)?;
        // The same device twice (a path and its MAJ:MIN) is watched once.
        if !targets.iter().any(|x| x.dev == t.dev) {
            targets.push(t);
        }
    }
    Ok(targets)
}

/// A target whose session moved to another TCP connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnChange {
    pub name: String,
    pub old: Option<Conn>,
    pub new: Conn,
}

/// Moves each target to the connection its session has now, as `sysfs` shows it, and
/// says which moved. A session without a connection (reconnecting) keeps its last one:
/// its reset and the summary's counters stay visible until the new one is there.
pub fn follow_conns(targets: &mut [Target], sysfs: &Sysfs) -> Vec<ConnChange> {
    // One read per session, however many of its LUNs are given.
    let fresh = sysfs.iscsi_paths(targets.iter().map(|t| t.name.as_str()));
    let mut changes = Vec::new();
    for t in targets.iter_mut() {
        let Some(now) = fresh.get(&t.name).and_then(|p| p.conn) else {
            continue;
        };
        if Some(now) != t.conn {
            changes.push(ConnChange {
                name: t.name.clone(),
                old: t.conn,
                new: now,
            });
            t.conn = Some(now);
        }
    }
    changes
}

/// Watches `targets` until SIGINT, SIGTERM or `opts.duration`, printing every event on
/// standard output, then each device's counters as one JSON line.
pub fn run(mut targets: Vec<Target>, sysfs: Sysfs, opts: Options) -> Result<()> {
    let specs = |targets: &[Target]| {
        let paths = targets.iter().map(|t| (t.dev, t.name.clone(), t.conn));
        WatchSpec::for_paths(paths, |_| (opts.path, opts.tcp))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let wopts = WatcherOptions {
            portal_port: opts.portal_port,
            scan_interval: opts.scan_interval,
            tcp: opts.watch_tcp,
            variant: ProbeVariant::Auto,
            // Sized for exactly the devices given: kernel memory grows with it.
            max_paths: targets.len() as u32,
        };
        let (watcher, mut events) = Watcher::start(wopts).context("loading the probes")?;
        let report = |failed: Vec<(DevT, EbpfError)>| -> Result<()> {
            for (dev, e) in failed {
                match e {
                    // The block device is watched; only its connection is not.
                    EbpfError::Conn { .. } => tracing::warn!(target: LOG, dev = %dev, "{e}"),
                    e => return Err(e).with_context(|| format!("watching {dev}")),
                }
            }
            Ok(())
        };
        report(watcher.set(specs(&targets)).await)?;
        // A session that reconnects gets a new TCP connection (a new local port); sysfs
        // says which, so it is re-read every second and the watch follows it.
        let mut relearn = tokio::time::interval(Duration::from_secs(1));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let stop = async {
            match opts.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ProbeEvent::Path(ev)) => println!("{}", event_line(&ev, &name_of(&targets, ev.dev), opts.json)),
                    Some(ProbeEvent::Conn(ev)) => println!("{}", conn_event_line(&ev, &conn_name(&targets, &ev.conn), opts.json)),
                    None => bail!("the probes stopped"),
                },
                _ = relearn.tick(), if opts.watch_tcp => {
                    let changes = follow_conns(&mut targets, &sysfs);
                    for c in &changes {
                        tracing::info!(target: LOG, device = %c.name, old = ?c.old.map(|c| c.to_string()), new = ?Some(c.new.to_string()), "iSCSI connection changed; watching the new one");
                    }
                    if !changes.is_empty() {
                        report(watcher.set(specs(&targets)).await)?;
                    }
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = &mut stop => break,
            }
        }
        for r in watcher.readings().await {
            println!("{}", summary(&name_of(&targets, r.dev), &r));
        }
        let st = watcher.stats();
        tracing::debug!(
            target: LOG,
            events = st.events,
            suppressed = st.suppressed,
            ring_full = st.ring_full,
            dropped = st.dropped,
            skipped_runs = st.recursion_misses,
            "probe statistics"
        );
        anyhow::Ok(())
    })
}

/// How events and the summary name a device: as given, or by number if not one of ours.
fn name_of(targets: &[Target], dev: DevT) -> String {
    targets
        .iter()
        .find(|t| t.dev == dev)
        .map_or_else(|| dev.to_string(), |t| t.name.clone())
}

/// Every device on a connection, comma-separated: several paths can share one (one
/// session, several LUNs).
fn conn_name(targets: &[Target], c: &Conn) -> String {
    let names: Vec<&str> = targets
        .iter()
        .filter(|t| t.conn.as_ref() == Some(c))
        .map(|t| t.name.as_str())
        .collect();
    if names.is_empty() {
        c.to_string()
    } else {
        names.join(",")
    }
}

/// One device's counters at exit, as the JSON line printed for it.
fn summary(name: &str, r: &PathReading) -> serde_json::Value {
    let s = &r.block;
    let class = |c| s.errors_by_class(c);
    serde_json::json!({
        "summary": name,
        "dev": r.dev.to_string(),
        "issues": s.stats.issues,
        "completions": s.stats.completions(),
        "errors": s.stats.errors(),
        "errors_by_class": {
            "path": class(ErrorClass::Path),
            "generic": class(ErrorClass::Generic),
            "lun": class(ErrorClass::Lun),
        },
        "bytes": s.stats.bytes(),
        "inflight": s.inflight(),
        "oldest_ms": s.oldest.map(|d| d.as_millis() as u64),
        "untimed": s.stats.untimed,
        "ewma_read_us": s.ewma[0].as_micros() as u64,
        "ewma_write_us": s.ewma[1].as_micros() as u64,
        "conn": r.conn.map(|(c, t)| serde_json::json!({
            "conn": c.to_string(), "retransmits": t.retransmits, "resets": t.resets,
            "srtt_us": t.srtt.as_micros() as u64,
        })),
    })
}

/// Wall-clock seconds of a CLOCK_MONOTONIC instant, so events line up with other logs.
fn wall_secs(mono_ns: u64) -> f64 {
    let now_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let age = monotonic_ns().saturating_sub(mono_ns) as f64 / 1e9;
    now_wall - age
}

fn conn_event_line(ev: &ConnEvent, name: &str, json: bool) -> String {
    let kind = match ev.kind {
        ConnEventKind::Reset { .. } => "tcp_reset",
        ConnEventKind::LeftEstablished { .. } => "tcp_left_established",
        ConnEventKind::Retransmits => "tcp_retransmits",
        ConnEventKind::SlowRtt => "tcp_slow_rtt",
    };
    let mut detail = serde_json::json!({
        "conn": ev.conn.to_string(),
        "srtt_us": ev.srtt.as_micros() as u64,
        "consecutive_retrans": ev.consecutive_retrans,
    });
    match ev.kind {
        ConnEventKind::Reset { state } => detail["state"] = state.into(),
        ConnEventKind::LeftEstablished { new_state } => detail["new_state"] = new_state.into(),
        _ => {}
    }
    let head = Head {
        mono_ns: ev.at_ns,
        name,
        dev: None,
        kind,
        suppressed: ev.suppressed,
    };
    head.line(detail, json)
}

fn event_line(ev: &PathEvent, name: &str, json: bool) -> String {
    let (kind, detail) = match &ev.kind {
        PathEventKind::IoError {
            errno,
            class,
            dir,
            sector,
            latency,
        } => (
            "io_error",
            serde_json::json!({"errno": errno, "error": std::io::Error::from_raw_os_error(-errno).to_string(),
                "class": class, "dir": dir, "sector": sector, "latency_us": latency.as_micros() as u64}),
        ),
        PathEventKind::Slow {
            latency,
            count,
            dir,
        } => (
            "slow",
            serde_json::json!({"latency_us": latency.as_micros() as u64, "count": count, "dir": dir}),
        ),
        PathEventKind::Stalled {
            inflight,
            oldest,
            since_completion,
        } => (
            "stalled",
            serde_json::json!({"inflight": inflight, "oldest_ms": oldest.as_millis() as u64,
                "since_completion_ms": since_completion.map(|d| d.as_millis() as u64)}),
        ),
    };
    let head = Head {
        mono_ns: ev.at_ns,
        name,
        dev: Some(ev.dev),
        kind,
        suppressed: ev.suppressed,
    };
    head.line(detail, json)
}

/// What every event line starts with, block or TCP.
struct Head<'a> {
    mono_ns: u64,
    name: &'a str,
    dev: Option<DevT>,
    kind: &'a str,
    suppressed: u32,
}

impl Head<'_> {
    fn line(&self, detail: serde_json::Value, json: bool) -> String {
        let Head {
            mono_ns,
            name,
            dev,
            kind,
            suppressed,
        } = *self;
        let wall = wall_secs(mono_ns);
        if json {
            // How long after the kernel saw it the daemon had it in hand.
            let lag_us = monotonic_ns().saturating_sub(mono_ns) / 1000;
            let mut v = serde_json::json!({
                "wall": wall, "mono_ns": mono_ns, "lag_us": lag_us, "device": name, "kind": kind,
                "suppressed": suppressed,
            });
            if let Some(d) = dev {
                v["dev"] = d.to_string().into();
            }
            if let (Some(o), Some(d)) = (v.as_object_mut(), detail.as_object()) {
                o.extend(d.clone());
            }
            v.to_string()
        } else {
            let dev = dev.map(|d| format!(" ({d})")).unwrap_or_default();
            let held = if suppressed > 0 {
                format!(" (+{suppressed} suppressed)")
            } else {
                String::new()
            };
            format!("{wall:.6} {name}{dev} {kind} {detail}{held}")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::ebpf::{ConnSnapshot, Dir, PathSnapshot};

    fn lab() -> Sysfs {
        crate::topology::lab_fixture()
    }

    /// A writable copy of the recorded tree, removed on drop.
    struct LabCopy(PathBuf);

    impl LabCopy {
        fn new(tag: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("mpathd-probe-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            crate::topology::copy_lab_fixture(&root);
            Self(root)
        }

        fn sysfs(&self) -> Sysfs {
            Sysfs::new(&self.0)
        }

        /// The attribute directory of session N's connection.
        fn conn_dir(&self, host: u32, session: u32) -> PathBuf {
            self.0.join(format!(
                "sys/devices/platform/host{host}/session{session}/connection{session}:0/iscsi_connection/connection{session}:0"
            ))
        }
    }

    impl Drop for LabCopy {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn conn(local: &str, remote: &str) -> Conn {
        Conn {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
        }
    }

    /// sda and sdb as recorded, and one device given by number.
    fn lab_targets() -> Vec<Target> {
        vec![
            Target {
                name: "sda".into(),
                dev: DevT::new(8, 0),
                conn: Some(conn("10.99.1.1:58324", "10.99.1.2:3260")),
            },
            Target {
                name: "sdb".into(),
                dev: DevT::new(8, 16),
                conn: Some(conn("10.99.2.1:52502", "10.99.2.2:3260")),
            },
            Target {
                name: "7:0".into(),
                dev: DevT::new(7, 0),
                conn: None,
            },
        ]
    }

    #[test]
    fn the_recorded_connections_are_the_ones_the_targets_start_with() {
        // Guards the fixture the other tests edit: if it changed, they would prove nothing.
        let s = lab();
        let mut targets = lab_targets();
        let before = targets.clone();
        assert_eq!(follow_conns(&mut targets, &s), []);
        assert_eq!(targets, before);
    }

    #[test]
    fn a_session_on_a_new_connection_moves_its_target_and_only_it() {
        let lab = LabCopy::new("reconnect");
        let s = lab.sysfs();
        let mut targets = lab_targets();
        // session1 logged in again: same portal, new local port.
        std::fs::write(lab.conn_dir(0, 1).join("local_port"), "40000\n").unwrap();
        let changes = follow_conns(&mut targets, &s);
        let new = conn("10.99.1.1:40000", "10.99.1.2:3260");
        assert_eq!(
            changes,
            [ConnChange {
                name: "sda".into(),
                old: Some(conn("10.99.1.1:58324", "10.99.1.2:3260")),
                new,
            }]
        );
        assert_eq!(targets[0].conn, Some(new));
        assert_eq!(targets[1..], lab_targets()[1..], "sdb and 7:0 untouched");
        // Read again with nothing new: already followed.
        assert_eq!(follow_conns(&mut targets, &s), []);
    }

    #[test]
    fn a_session_between_connections_keeps_its_last_one() {
        let lab = LabCopy::new("between");
        let s = lab.sysfs();
        let mut targets = lab_targets();
        // While session2 reconnects the kernel has no local port to show.
        std::fs::remove_file(lab.conn_dir(1, 2).join("local_port")).unwrap();
        assert_eq!(s.iscsi_path("sdb").unwrap().unwrap().conn, None);
        assert_eq!(follow_conns(&mut targets, &s), []);
        assert_eq!(targets, lab_targets());
        // Then it has one again, on another port: followed from the one it kept.
        std::fs::write(lab.conn_dir(1, 2).join("local_port"), "41000\n").unwrap();
        let changes = follow_conns(&mut targets, &s);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].name, "sdb");
        assert_eq!(changes[0].old, lab_targets()[1].conn);
        assert_eq!(changes[0].new.local, "10.99.2.1:41000".parse().unwrap());
    }

    #[test]
    fn a_target_found_without_a_connection_gets_one_when_its_session_has_it() {
        let s = lab();
        let mut targets = lab_targets();
        targets[1].conn = None;
        let changes = follow_conns(&mut targets, &s);
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].name.as_str(), changes[0].old), ("sdb", None));
        assert_eq!(targets, lab_targets());
    }

    #[test]
    fn major_minor_gets_its_kernel_name_and_its_sessions_connection() {
        let t = resolve("8:16", &lab()).unwrap();
        assert_eq!(t, lab_targets()[1]);
        // A number sysfs does not know is watched as given, with no connection.
        let t = resolve("8:160", &lab()).unwrap();
        assert_eq!(
            t,
            Target {
                name: "8:160".into(),
                dev: DevT::new(8, 160),
                conn: None
            }
        );
    }

    #[test]
    fn paths_that_are_not_block_devices_are_refused_by_name() {
        let e = resolve("/nonexistent/sdq", &lab()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/nonexistent/sdq: not a device path or MAJOR:MINOR"
        );
        let file = env!("CARGO_MANIFEST_DIR").to_string() + "/Cargo.toml";
        let e = resolve(&file, &lab()).unwrap_err();
        assert_eq!(e.to_string(), format!("{file} is not a block device"));
        // The first bad one stops the list.
        let args = ["8:0".to_string(), file.clone(), "/nonexistent".into()];
        let e = resolve_all(&args, &lab()).unwrap_err();
        assert_eq!(e.to_string(), format!("{file} is not a block device"));
    }

    /// A block device node named like a disk of the recorded tree (mknod needs root).
    #[test]
    fn sudo_a_device_node_gets_its_number_and_its_sessions_connection() {
        if !crate::test_root() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("mpathd-probe-nodes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let node = |name: &str, major, minor| {
            let p = dir.join(name);
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a NUL-terminated path we own; mknod reads nothing else.
            let rc = unsafe {
                libc::mknod(
                    c.as_ptr(),
                    libc::S_IFBLK | 0o600,
                    libc::makedev(major, minor),
                )
            };
            assert_eq!(
                rc,
                0,
                "mknod {}: {}",
                p.display(),
                std::io::Error::last_os_error()
            );
            p.to_string_lossy().into_owned()
        };
        let (sda, other) = (node("sda", 8, 0), node("vdz", 252, 7));
        let by_path = node("ip-10.99.2.2:3260-iscsi-iqn.2003-01.org.x:t-lun-0", 8, 16);
        let s = lab();
        let t = resolve(&sda, &s).unwrap();
        assert_eq!(
            t,
            lab_targets()[0],
            "named by the node, connection from sysfs"
        );
        // A link's name is not the kernel's: the device number finds it.
        assert_eq!(resolve(&by_path, &s).unwrap(), lab_targets()[1]);
        // Not in sysfs: watched as a plain block device.
        let t = resolve(&other, &s).unwrap();
        assert_eq!(
            (t.name.as_str(), t.dev, t.conn),
            ("vdz", DevT::new(252, 7), None)
        );
        // The node and its number are one device, watched once, as first given.
        let all = resolve_all(&[sda.clone(), "8:0".into(), other.clone()], &s).unwrap();
        let names: Vec<_> = all.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["sda", "vdz"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn events_name_the_device_given_and_a_connection_by_all_its_devices() {
        let mut targets = lab_targets();
        // A second LUN on sda's session: one connection, two devices.
        targets.push(Target {
            name: "sdc".into(),
            dev: DevT::new(8, 32),
            conn: targets[0].conn,
        });
        assert_eq!(name_of(&targets, DevT::new(7, 0)), "7:0");
        assert_eq!(name_of(&targets, DevT::new(8, 32)), "sdc");
        assert_eq!(
            name_of(&targets, DevT::new(9, 1)),
            "9:1",
            "not ours: its number"
        );
        let c = targets[0].conn.unwrap();
        assert_eq!(conn_name(&targets, &c), "sda,sdc");
        assert_eq!(conn_name(&targets, &targets[1].conn.unwrap()), "sdb");
        let stranger = conn("10.0.0.1:1", "10.0.0.2:3260");
        assert_eq!(
            conn_name(&targets, &stranger),
            "10.0.0.1:1 -> 10.0.0.2:3260"
        );
    }

    /// The wall time a line carries is the event's: now less its age.
    fn assert_wall_is_recent(wall: f64, age_s: f64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - age_s - wall).abs() < 1.0, "wall {wall}, now {now}");
    }

    #[test]
    fn a_block_event_as_text_and_as_json() {
        let at_ns = monotonic_ns().saturating_sub(2_000_000_000);
        let ev = PathEvent {
            dev: DevT::new(8, 0),
            at_ns,
            kind: PathEventKind::Slow {
                latency: Duration::from_millis(700),
                count: 3,
                dir: Dir::Read,
            },
            suppressed: 2,
        };
        let detail = json!({"latency_us": 700_000, "count": 3, "dir": "read"});

        let text = event_line(&ev, "sda", false);
        let (wall, rest) = text.split_once(' ').unwrap();
        assert_wall_is_recent(wall.parse().unwrap(), 2.0);
        assert_eq!(wall.split_once('.').unwrap().1.len(), 6, "{text}");
        let rest = rest.strip_prefix("sda (8:0) slow ").expect(&text);
        let rest = rest.strip_suffix(" (+2 suppressed)").expect(&text);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(rest).unwrap(),
            detail
        );

        let v: serde_json::Value = serde_json::from_str(&event_line(&ev, "sda", true)).unwrap();
        assert_wall_is_recent(v["wall"].as_f64().unwrap(), 2.0);
        assert_eq!(v["mono_ns"], at_ns);
        assert!(v["lag_us"].as_u64().unwrap() >= 2_000_000);
        let mut expect = json!({"device": "sda", "dev": "8:0", "kind": "slow", "suppressed": 2});
        expect
            .as_object_mut()
            .unwrap()
            .extend(detail.as_object().unwrap().clone());
        for k in ["wall", "mono_ns", "lag_us"] {
            expect[k] = v[k].clone();
        }
        assert_eq!(v, expect);
    }

    #[test]
    fn an_io_error_says_its_errno_class_and_where() {
        let ev = PathEvent {
            dev: DevT::new(8, 16),
            at_ns: monotonic_ns(),
            kind: PathEventKind::IoError {
                errno: -libc::EIO,
                class: ErrorClass::Generic,
                dir: Dir::Write,
                sector: 2048,
                latency: Duration::from_micros(1500),
            },
            suppressed: 0,
        };
        let v: serde_json::Value = serde_json::from_str(&event_line(&ev, "sdb", true)).unwrap();
        assert_eq!(v["kind"], "io_error");
        assert_eq!(v["errno"], -libc::EIO);
        assert_eq!(
            v["error"],
            std::io::Error::from_raw_os_error(libc::EIO).to_string()
        );
        assert_eq!(
            (&v["class"], &v["dir"], &v["sector"], &v["latency_us"]),
            (
                &json!("generic"),
                &json!("write"),
                &json!(2048),
                &json!(1500)
            )
        );
        let text = event_line(&ev, "sdb", false);
        assert!(!text.contains("suppressed"), "none held back: {text}");
        assert!(text.contains(" sdb (8:16) io_error {"), "{text}");
    }

    #[test]
    fn a_connection_event_has_no_device_number_and_its_states() {
        let c = conn("10.99.1.1:58324", "10.99.1.2:3260");
        let ev = ConnEvent {
            conn: c,
            at_ns: monotonic_ns(),
            kind: ConnEventKind::Reset { state: 1 },
            srtt: Duration::from_micros(350),
            consecutive_retrans: 0,
            suppressed: 0,
        };
        let v: serde_json::Value =
            serde_json::from_str(&conn_event_line(&ev, "sda,sdc", true)).unwrap();
        assert_eq!(v["device"], "sda,sdc");
        assert_eq!(v["kind"], "tcp_reset");
        assert_eq!(v["conn"], c.to_string());
        assert_eq!((&v["srtt_us"], &v["state"]), (&json!(350), &json!(1)));
        assert!(v.get("dev").is_none(), "{v}");
        let left = ConnEvent {
            kind: ConnEventKind::LeftEstablished { new_state: 8 },
            ..ev.clone()
        };
        let v: serde_json::Value =
            serde_json::from_str(&conn_event_line(&left, "sda", true)).unwrap();
        assert_eq!(
            (&v["kind"], &v["new_state"]),
            (&json!("tcp_left_established"), &json!(8))
        );
        assert!(v.get("state").is_none(), "{v}");
        let text = conn_event_line(&ev, "sda,sdc", false);
        assert!(text.contains(" sda,sdc tcp_reset {"), "{text}");
    }

    #[test]
    fn the_summary_has_each_devices_counters_and_its_connections() {
        let mut block = PathSnapshot::default();
        block.stats.issues = 10;
        block.stats.dir[Dir::Read as usize].completions = 6;
        block.stats.dir[Dir::Read as usize].bytes = 6 * 4096;
        block.stats.dir[Dir::Write as usize].completions = 3;
        block.stats.dir[Dir::Write as usize].errors = 1;
        block.stats.errors_by_class[ErrorClass::Path.index()] = 1;
        block.stats.untimed = 2;
        block.inflight = 1;
        block.oldest = Some(Duration::from_millis(1200));
        block.ewma = [Duration::from_micros(800), Duration::from_micros(1100)];
        let c = conn("10.99.1.1:58324", "10.99.1.2:3260");
        let tcp = ConnSnapshot {
            retransmits: 4,
            consecutive_retrans: 2,
            resets: 1,
            srtt: Duration::from_micros(420),
            last_state: 1,
            snd_una: 7,
            last_ack_ns: 0,
            last_rcv_ns: 0,
        };
        let r = PathReading {
            dev: DevT::new(8, 0),
            block,
            conn: Some((c, tcp)),
        };
        assert_eq!(
            summary("sda", &r),
            json!({
                "summary": "sda", "dev": "8:0", "issues": 10, "completions": 9, "errors": 1,
                "errors_by_class": {"path": 1, "generic": 0, "lun": 0},
                "bytes": 6 * 4096, "inflight": 1, "oldest_ms": 1200, "untimed": 2,
                "ewma_read_us": 800, "ewma_write_us": 1100,
                "conn": {"conn": c.to_string(), "retransmits": 4, "resets": 1, "srtt_us": 420},
            })
        );
        let plain = PathReading {
            dev: DevT::new(7, 0),
            block: PathSnapshot::default(),
            conn: None,
        };
        let v = summary("7:0", &plain);
        assert_eq!((&v["conn"], &v["oldest_ms"]), (&json!(null), &json!(null)));
    }
}
