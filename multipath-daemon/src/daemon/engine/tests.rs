//! The engine driven synchronously, as the loop drives it, on an in-memory device-mapper
//! and the sysfs tree recorded in the lab (two iSCSI paths, sda and sdb, to one LUN).

use std::{collections::VecDeque, path::PathBuf, time::Duration};

use super::*;
use crate::{
    actions::{DmDone, rescue::Ledger},
    control::{Response, format_topology},
    daemon::{gather, views},
    dm::{DmBackend, PathState as DmPathState, SimDm},
    health::{BlockSignal, CheckVerdict, ConnSignal, Input},
    topology::Sysfs,
};

const WWID: &str = "360014056001405f00dcafe0123456789";
const MS: Ns = 1_000_000;
const S: Ns = 1_000 * MS;
const SDA: DevT = DevT { major: 8, minor: 0 };
const SDB: DevT = DevT {
    major: 8,
    minor: 16,
};

/// The engine with what the loop would do, done at once.
struct Driver {
    e: Engine,
    dm: SimDm,
    sysfs: Sysfs,
    sysfs_root: PathBuf,
    dir: PathBuf,
    now: Ns,
    /// Commands other than device-mapper work, in order.
    other: Vec<Command>,
    /// When set, file writes are kept here instead of done (a write still on its way).
    held_writes: Option<Vec<(PathBuf, String)>>,
}

fn tmpdir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mpathd-engine-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of the recorded tree (its relative links kept), so that what the daemon
/// writes (recovery timeouts) reads back as on a host.
fn lab_sysfs(dir: &std::path::Path) -> (Sysfs, PathBuf) {
    let root = dir.join("sysfs");
    crate::topology::copy_lab_fixture(&root);
    // The class links a host has (the recording kept only the device tree).
    let class = root.join("sys/class/iscsi_session");
    std::fs::create_dir_all(&class).unwrap();
    for (host, s) in [("host0", "session1"), ("host1", "session2")] {
        std::os::unix::fs::symlink(
            format!("../../devices/platform/{host}/{s}/iscsi_session/{s}"),
            class.join(s),
        )
        .unwrap();
    }
    (Sysfs::new(&root), root)
}

impl Driver {
    fn new(extra_toml: &str) -> Self {
        Self::on(extra_toml, SimDm::new(), tmpdir())
    }

    /// A daemon (a restart) on an existing device-mapper and state dir.
    fn on(extra_toml: &str, dm: SimDm, dir: PathBuf) -> Self {
        let toml = format!(
            "[defaults]\nbindings_file = \"{0}/bindings\"\nwwids_file = \"{0}/wwids\"\n{extra_toml}",
            dir.display()
        );
        let cfg = Config::from_toml_str(&toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        let ledger = Ledger::load(&dir.join("recovery_tmo.json")).unwrap();
        let (sysfs, sysfs_root) = lab_sysfs(&dir);
        Self {
            e: Engine::new(cfg, EngineOptions::default(), ledger).unwrap(),
            dm,
            sysfs,
            sysfs_root,
            dir,
            now: 1000 * S,
            other: Vec::new(),
            held_writes: None,
        }
    }

    fn reconcile(&mut self) -> Summary {
        let snap = gather::snapshot(&self.sysfs, &self.dm, true);
        let (works, mut sum) = self.e.plan(snap, self.now);
        self.run(works.into_iter().map(Command::Dm).collect(), Some(&mut sum));
        sum
    }

    fn run(&mut self, cmds: Vec<Command>, mut sum: Option<&mut Summary>) -> Vec<String> {
        let mut errors = Vec::new();
        let mut q: VecDeque<Command> = cmds.into();
        while let Some(c) = q.pop_front() {
            match c {
                Command::Dm(w) => {
                    let result = crate::actions::run(&self.dm, &w.map, &w.op);
                    let done = DmDone {
                        id: 0,
                        map: w.map.clone(),
                        lane: w.lane,
                        op: w.op.clone(),
                        result,
                        queued: Duration::ZERO,
                        took: Duration::ZERO,
                        ran: Duration::ZERO,
                    };
                    let o = self.e.done(&done, &w.why);
                    if let Some(s) = sum.as_deref_mut() {
                        s.created.extend(o.created.clone());
                        s.reloaded.extend(o.reloaded.clone());
                        s.errors.extend(o.error.clone());
                    }
                    errors.extend(o.error);
                    q.extend(o.commands);
                }
                Command::WriteFile { path, contents } => match &mut self.held_writes {
                    Some(held) => held.push((path, contents)),
                    None => crate::config::bindings::write_atomic(&path, &contents).unwrap(),
                },
                Command::Poll => {
                    let (maps, paths) = self.e.poll_targets();
                    let p = gather::poll(&self.sysfs, &self.dm, &maps, &paths);
                    q.extend(self.e.poll(p, self.now));
                }
                Command::Replan => {
                    self.other.push(Command::Replan);
                    let snap = gather::snapshot(&self.sysfs, &self.dm, true);
                    let (works, _) = self.e.plan(snap, self.now);
                    q.extend(works.into_iter().map(Command::Dm));
                }
                Command::SetRecoveryTmo { session, secs } => {
                    let r =
                        crate::actions::rescue::set_recovery_tmo(&self.sysfs_root, &session, secs);
                    self.e.recovery_tmo_written(&session, secs, &r);
                    self.other.push(Command::SetRecoveryTmo { session, secs });
                }
                other => self.other.push(other),
            }
        }
        errors
    }

    fn tmo(&self, session: &str) -> String {
        std::fs::read_to_string(crate::actions::rescue::recovery_tmo_path(
            &self.sysfs_root,
            session,
        ))
        .unwrap()
        .trim()
        .to_string()
    }

    fn poll(&mut self) {
        let (maps, paths) = self.e.poll_targets();
        let p = gather::poll(&self.sysfs, &self.dm, &maps, &paths);
        let cmds = self.e.poll(p, self.now);
        self.run(cmds, None);
    }

    fn input(&mut self, i: Input) {
        let cmds = self.e.input(self.now, i);
        self.run(cmds, None);
    }

    fn tick(&mut self) {
        let cmds = self.e.tick(self.now);
        self.run(cmds, None);
    }

    fn up(&mut self, dev: DevT) {
        self.input(Input::Check {
            dev,
            verdict: CheckVerdict::Up {
                took: Duration::from_millis(2),
            },
        });
    }

    fn request(&mut self, req: Request) -> Response {
        let ctx = self.e.view_ctx();
        match req {
            Request::ShowTopology => Response::Topology(views::topology(&self.sysfs, &ctx)),
            Request::ShowPaths => Response::Paths(views::paths(&self.sysfs, &ctx)),
            Request::ShowMaps => Response::Maps(views::maps(&ctx)),
            other => match self.e.admin(&other, self.now) {
                Ok((cmds, message)) => {
                    let errors = self.run(cmds, None);
                    match errors.first() {
                        None => Response::Ok { message },
                        Some(e) => Response::Error { message: e.clone() },
                    }
                }
                Err(message) => Response::Error { message },
            },
        }
    }

    fn dm_state(&self, map: &str, dev: &str) -> DmPathState {
        self.dm.status(map).unwrap().path(dev).unwrap().state
    }
}

#[test]
fn the_seed_alias_makes_one_map_of_both_paths_and_a_restart_adopts_it() {
    // [overrides]: the built-in LIO entry (group_by_prio) beats [defaults].
    let seed = format!(
        "\n[overrides]\npath_grouping_policy = \"failover\"\n\
         [[multipaths]]\nwwid = \"{WWID}\"\nalias = \"sanvol1\"\n"
    );
    let mut d = Driver::new(&seed);
    let s = d.reconcile();
    assert_eq!(s.created, ["sanvol1"], "{s:?}");
    assert!(s.errors.is_empty(), "{s:?}");
    let t = d.dm.table("sanvol1").unwrap();
    assert_eq!(t.path_devs().collect::<Vec<_>>(), ["8:0", "8:16"]);
    let Response::Topology(topo) = d.request(Request::ShowTopology) else {
        panic!()
    };
    let text = format_topology(&topo);
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
    let wwids = std::fs::read_to_string(d.dir.join("wwids")).unwrap();
    assert!(wwids.contains(&format!("/{WWID}/")), "{wwids}");
    // A second pass, and a new daemon on the same dm: nothing to do.
    d.dm.clear_log();
    let s = d.reconcile();
    assert!(s.created.is_empty() && s.reloaded.is_empty(), "{s:?}");
    let dm = std::mem::take(&mut d.dm);
    let mut d2 = Driver::on(&seed, dm, tmpdir());
    let s = d2.reconcile();
    assert!(s.created.is_empty() && s.reloaded.is_empty(), "{s:?}");
    assert!(d2.dm.log().is_empty(), "{:?}", d2.dm.log());
}

/// A poll reads only maps the kernel has: one planned but not created yet would read
/// as "no such map" (at start-up, 128 warnings of it).
#[test]
fn a_map_is_polled_once_its_create_is_done_not_before() {
    let seed = format!("\n[[multipaths]]\nwwid = \"{WWID}\"\nalias = \"sanvol1\"\n");
    let mut d = Driver::new(&seed);
    let snap = gather::snapshot(&d.sysfs, &d.dm, true);
    let (works, _) = d.e.plan(snap, d.now);
    assert_eq!(works.len(), 1);
    let (maps, paths) = d.e.poll_targets();
    assert!(maps.is_empty(), "{maps:?}");
    // Its paths' sessions and ALUA states are read meanwhile.
    assert_eq!(paths, ["sda", "sdb"]);
    d.run(works.into_iter().map(Command::Dm).collect(), None);
    assert_eq!(d.e.poll_targets().0, ["sanvol1"]);
}

#[test]
fn strict_find_multipaths_leaves_unknown_luns_alone_and_greedy_names_them() {
    let mut d = Driver::new("");
    let s = d.reconcile();
    assert!(s.created.is_empty(), "strict is the default: {s:?}");
    let mut d = Driver::new("find_multipaths = \"greedy\"\nuser_friendly_names = true\n");
    assert_eq!(d.reconcile().created, ["mpatha"]);
    let b = std::fs::read_to_string(d.dir.join("bindings")).unwrap();
    assert!(b.contains(&format!("mpatha {WWID}")), "{b}");
}

#[test]
fn a_blacklisted_path_is_left_out_with_the_reason() {
    let mut d = Driver::new("find_multipaths = \"greedy\"\n[blacklist]\ndevnode = [\"^sdb$\"]\n");
    let s = d.reconcile();
    assert_eq!(s.created, [WWID]);
    let t = d.dm.table(WWID).unwrap();
    assert_eq!(t.path_devs().collect::<Vec<_>>(), ["8:0"]);
    let Response::Paths(paths) = d.request(Request::ShowPaths) else {
        panic!()
    };
    let sdb = paths.iter().find(|p| p.name == "sdb").unwrap();
    assert_eq!((sdb.map.as_deref(), sdb.state), (None, None));
    assert!(
        sdb.note.as_deref().unwrap().contains("blacklisted"),
        "{sdb:?}"
    );
    let sda = paths.iter().find(|p| p.name == "sda").unwrap();
    assert_eq!(sda.state, Some(PathState::Active));
}

#[test]
fn admin_fail_sticks_and_a_kernel_failed_path_returns_after_a_clean_check() {
    let mut d = Driver::new("find_multipaths = \"greedy\"\n");
    d.reconcile();
    let r = d.request(Request::Fail {
        path: "/dev/sda".into(),
    });
    assert!(matches!(r, Response::Ok { .. }), "{r:?}");
    assert_eq!(d.dm_state(WWID, "8:0"), DmPathState::Failed);
    // Clean checks do not undo an admin's fail...
    d.up(SDA);
    d.up(SDA);
    d.poll();
    assert_eq!(d.dm_state(WWID, "8:0"), DmPathState::Failed);
    let Response::Topology(t) = d.request(Request::ShowTopology) else {
        panic!()
    };
    let sda = &t.maps[0].groups[0].paths[0];
    assert_eq!(
        (sda.dm_state.as_str(), sda.state),
        ("failed", Some(PathState::AdminFailed))
    );
    assert_eq!(sda.reason.as_deref(), Some("admin"));
    // ...but a path the kernel failed is followed; with sda admin-failed the map has no
    // other path, so the first clean check reinstates it (two are needed otherwise).
    d.dm.kernel_fail_path(WWID, "8:16");
    d.poll();
    assert_eq!(d.e.health().state(SDB), Some(PathState::Failed));
    assert_eq!(d.e.pathless_check_targets()[0].dev, SDB);
    d.up(SDB);
    assert_eq!(d.dm_state(WWID, "8:16"), DmPathState::Active);
    assert!(d.e.pathless_check_targets().is_empty());
    let r = d.request(Request::Reinstate { path: "8:0".into() });
    assert!(matches!(r, Response::Ok { .. }), "{r:?}");
    assert_eq!(d.dm.status(WWID).unwrap().active_paths(), 2);
    let r = d.request(Request::Fail { path: "sdz".into() });
    assert!(
        matches!(&r, Response::Error { message } if message.contains("no path named sdz")),
        "{r:?}"
    );
}

#[test]
fn a_checker_failure_fails_an_idle_path_in_its_map() {
    let mut d = Driver::new("find_multipaths = \"greedy\"\n");
    d.reconcile();
    d.input(Input::Check {
        dev: SDB,
        verdict: CheckVerdict::Down {
            why: "TUR: host byte DID_NO_CONNECT (0x01)".into(),
            ambiguous: false,
        },
    });
    assert_eq!(d.dm_state(WWID, "8:16"), DmPathState::Failed);
    let Response::Paths(p) = d.request(Request::ShowPaths) else {
        panic!()
    };
    let sdb = p.iter().find(|p| p.name == "sdb").unwrap();
    assert_eq!(sdb.state, Some(PathState::Failed));
    assert!(
        sdb.reason.as_deref().unwrap().contains("DID_NO_CONNECT"),
        "{sdb:?}"
    );
}

#[test]
fn group_by_prio_with_weights_by_portal_puts_the_preferred_portal_first() {
    // sdb's session goes to portal 10.99.2.2 in the recorded tree.
    let mut d = Driver::new(
        "find_multipaths = \"greedy\"\n[overrides]\npath_grouping_policy = \"group_by_prio\"\n\
         prio_weights = [{ portal = '10\\.99\\.2\\.2:3260', prio = 50 }, { portal = '.*', prio = 10 }]\n",
    );
    assert_eq!(d.reconcile().created, [WWID]);
    let t = d.dm.table(WWID).unwrap();
    assert_eq!(t.groups.len(), 2, "{t}");
    assert_eq!(t.groups[0].paths[0].dev, "8:16", "portal 2 first: {t}");
    let Response::Topology(topo) = d.request(Request::ShowTopology) else {
        panic!()
    };
    let prios: Vec<u32> = topo.maps[0].groups.iter().map(|g| g.prio).collect();
    assert_eq!(prios, [50, 10]);
}

#[test]
fn no_path_retry_n_holds_across_reconciles_and_restarts_and_ends_when_a_path_is_back() {
    let cfg = "find_multipaths = \"greedy\"\n[overrides]\nno_path_retry = 2\n";
    let mut d = Driver::new(cfg);
    d.reconcile();
    assert!(
        d.dm.table(WWID).unwrap().queue_if_no_path(),
        "queues at first"
    );
    // The kernel fails both paths: no usable path.
    d.dm.kernel_fail_path(WWID, "8:0");
    d.dm.kernel_fail_path(WWID, "8:16");
    d.poll();
    d.poll();
    assert!(
        d.dm.table(WWID).unwrap().queue_if_no_path(),
        "2 checks: still queueing"
    );
    d.poll();
    assert!(
        !d.dm.table(WWID).unwrap().queue_if_no_path(),
        "3rd: queued I/O fails"
    );
    // A reconcile after the expiry does not turn queueing back on...
    let s = d.reconcile();
    assert!(s.reloaded.is_empty(), "{s:?}");
    assert!(!d.dm.table(WWID).unwrap().queue_if_no_path());
    // ...nor does a restarted daemon adopting the map...
    let dm = std::mem::take(&mut d.dm);
    let mut d = Driver::on(cfg, dm, tmpdir());
    let s = d.reconcile();
    assert!(s.reloaded.is_empty(), "{s:?}");
    d.poll();
    assert!(!d.dm.table(WWID).unwrap().queue_if_no_path());
    // ...and when a path is back, queueing is on again.
    d.up(SDB);
    d.up(SDB);
    assert_eq!(d.dm_state(WWID, "8:16"), DmPathState::Active);
    d.poll();
    assert!(d.dm.table(WWID).unwrap().queue_if_no_path());
    assert!(d.reconcile().reloaded.is_empty());
}

#[test]
fn a_reload_fails_paths_known_down_first_and_again_after() {
    let mut d = Driver::new(
        "find_multipaths = \"greedy\"\n[overrides]\npath_grouping_policy = \"multibus\"\n",
    );
    d.reconcile();
    d.input(Input::Check {
        dev: SDA,
        verdict: CheckVerdict::Timeout,
    });
    assert_eq!(d.dm_state(WWID, "8:0"), DmPathState::Failed);
    d.dm.clear_log();
    // The policy changes: the map is reloaded.
    d.reconfigure(
        "find_multipaths = \"greedy\"\n[overrides]\npath_grouping_policy = \"failover\"\n",
    );
    let s = d.reconcile();
    assert_eq!(s.reloaded, [WWID]);
    let log = d.dm.log();
    assert_eq!(
        log,
        [
            format!("message {WWID} fail_path 8:0"),
            format!("reload {WWID}"),
            format!("message {WWID} fail_path 8:0"),
        ]
    );
    assert_eq!(
        d.dm_state(WWID, "8:0"),
        DmPathState::Failed,
        "still down after the reload"
    );
}

#[test]
fn a_corroborated_stall_fails_the_path_rescues_its_io_and_sessions_get_fast_recovery() {
    let mut d = Driver::new("find_multipaths = \"greedy\"\n");
    d.reconcile();
    d.poll();
    // Both paths usable: each session's maps have a path elsewhere, so both sessions get
    // recovery_tmo 0, the originals (5 s in the recorded tree) kept in the ledger.
    let tmo: Vec<(String, u32)> = d
        .other
        .iter()
        .filter_map(|c| match c {
            Command::SetRecoveryTmo { session, secs } => Some((session.clone(), *secs)),
            _ => None,
        })
        .collect();
    assert_eq!(tmo, [("session1".into(), 0), ("session2".into(), 0)]);
    assert_eq!(
        d.e.recovery_tmo_originals(),
        [("session1".into(), 5), ("session2".into(), 5)]
    );
    let saved = std::fs::read_to_string(d.dir.join("recovery_tmo.json")).unwrap();
    assert!(saved.contains("\"session1\": 5"), "{saved}");
    assert_eq!(
        (d.tmo("session1"), d.tmo("session2")),
        ("0".into(), "0".into())
    );
    d.other.clear();
    // Silent loss on portal 1: a retransmission, then the stall.
    let conn = d.e.watched_paths()[0].2.unwrap();
    d.now += S;
    d.input(Input::Conn {
        conn,
        at_ns: d.now,
        signal: ConnSignal::Retransmits { consecutive: 1 },
    });
    d.now += 240 * MS;
    // A reading after the grace: no ACK since the retransmission.
    d.input(Input::Reading {
        dev: SDA,
        reading: crate::health::Reading {
            inflight: 4,
            snd_una: Some(1000),
            last_ack_ns: d.now - S,
            last_rcv_ns: 0,
            lost: None,
            ..Default::default()
        },
    });
    d.now += 10 * MS;
    d.input(Input::Block {
        dev: SDA,
        at_ns: d.now,
        signal: BlockSignal::Stalled {
            oldest: Duration::from_millis(260),
            since_completion: Some(Duration::from_millis(260)),
            inflight: 4,
        },
    });
    assert_eq!(d.dm_state(WWID, "8:0"), DmPathState::Failed);
    let rescue = d.other.iter().find_map(|c| match c {
        Command::Rescue { rescue, .. } => Some(rescue.clone()),
        _ => None,
    });
    assert_eq!(
        rescue,
        Some(Rescue {
            session: "session1".into(),
            conn
        })
    );
    // sdb is now the map's last usable path: its session gets its original timeout
    // back, so it rides out a short outage.
    let back: Vec<&Command> = d
        .other
        .iter()
        .filter(|c| matches!(c, Command::SetRecoveryTmo { .. }))
        .collect();
    assert_eq!(
        back,
        [&Command::SetRecoveryTmo {
            session: "session2".into(),
            secs: 5
        }]
    );
    assert_eq!(d.tmo("session2"), "5");
    assert_eq!(d.e.recovery_tmo_originals(), [("session1".into(), 5)]);
    // sda comes back: session2 is fast again, and both originals are known for the exit.
    // The fast value waits for the next tick, once for all the paths back by then.
    d.poll();
    d.up(SDA);
    d.up(SDA);
    assert_eq!(d.e.health().state(SDA), Some(PathState::Active));
    assert_eq!(d.tmo("session2"), "5");
    d.tick();
    assert_eq!(
        (d.tmo("session1"), d.tmo("session2")),
        ("0".into(), "0".into())
    );
    assert_eq!(
        d.e.recovery_tmo_originals(),
        [("session1".into(), 5), ("session2".into(), 5)]
    );
}

#[test]
fn a_degraded_path_is_moved_to_a_group_of_its_own_and_back() {
    let mut d = Driver::new(
        "find_multipaths = \"greedy\"\n[overrides]\npath_grouping_policy = \"multibus\"\n",
    );
    d.reconcile();
    assert_eq!(d.dm.table(WWID).unwrap().groups.len(), 1);
    d.dm.clear_log();
    d.input(Input::Block {
        dev: SDB,
        at_ns: d.now,
        signal: BlockSignal::Slow {
            latency: Duration::from_millis(150),
            count: 3,
        },
    });
    assert_eq!(d.e.health().state(SDB), Some(PathState::Degraded));
    let t = d.dm.table(WWID).unwrap();
    assert_eq!(t.groups.len(), 2, "{t}");
    assert_eq!(
        t.groups[0].paths[0].dev, "8:0",
        "the healthy path first: {t}"
    );
    assert_eq!(t.groups[1].paths[0].dev, "8:16");
    assert_eq!(d.dm.status(WWID).unwrap().next_pg, 1);
    assert!(
        d.dm.log()
            .contains(&format!("message {WWID} switch_group 1")),
        "{:?}",
        d.dm.log()
    );
    // Quiet for 10 s with a clean check: one group again.
    d.now += 11 * S;
    d.up(SDB);
    let cmds = d.e.tick(d.now);
    d.run(cmds, None);
    assert_eq!(d.e.health().state(SDB), Some(PathState::Active));
    assert_eq!(d.dm.table(WWID).unwrap().groups.len(), 1);
}

#[test]
fn a_path_with_stuck_io_is_steered_around_by_message_and_its_map_not_reloaded_until_it_fails() {
    let mut d = Driver::new(
        "find_multipaths = \"greedy\"\n[overrides]\npath_grouping_policy = \"failover\"\n",
    );
    d.reconcile();
    d.poll();
    assert_eq!(d.dm.table(WWID).unwrap().groups[0].paths[0].dev, "8:0");
    d.dm.clear_log();
    // Silent loss begins on sda while responses already on the wire still complete:
    // the probe reports one stuck request, and two readings 50 ms apart show it still
    // there: a soft signal.
    let at = d.now;
    d.input(Input::Block {
        dev: SDA,
        at_ns: at,
        signal: BlockSignal::Stalled {
            oldest: Duration::from_millis(260),
            since_completion: Some(Duration::from_millis(30)),
            inflight: 4,
        },
    });
    for ms in [20, 70] {
        assert_eq!(d.e.health().state(SDA), Some(PathState::Active));
        d.now = at + ms * MS;
        d.input(Input::Reading {
            dev: SDA,
            reading: crate::health::Reading {
                last_complete_ns: at - 10 * MS,
                inflight: 4,
                oldest: Some(Duration::from_millis(260 + ms)),
                completions: 10,
                ok_completions: 10,
                ..Default::default()
            },
        });
    }
    assert_eq!(d.e.health().state(SDA), Some(PathState::Degraded));
    let log = d.dm.log();
    // I/O moves to sdb's group by a message at once; no reload (its suspend would wait
    // for the stuck I/O).
    assert!(
        log.contains(&format!("message {WWID} switch_group 2")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.starts_with("reload")), "{log:?}");
    // The stuck I/O comes back (nothing in flight on sda): the deferred reload runs and
    // puts sda's group last.
    d.dm.clear_log();
    d.input(Input::Reading {
        dev: SDA,
        reading: crate::health::Reading {
            last_complete_ns: d.now + 300 * MS,
            completions: 10,
            ok_completions: 10,
            ..Default::default()
        },
    });
    assert!(
        d.dm.log().iter().any(|l| l.starts_with("reload")),
        "{:?}",
        d.dm.log()
    );
    assert_eq!(d.dm.table(WWID).unwrap().groups[0].paths[0].dev, "8:16");
}

#[test]
fn failback_immediate_returns_io_to_the_best_group_and_manual_does_not() {
    for (policy, want_switch) in [("immediate", true), ("manual", false)] {
        let mut d = Driver::new(&format!(
            "find_multipaths = \"greedy\"\n[overrides]\nfailback = \"{policy}\"\n\
             path_grouping_policy = \"failover\"\n"
        ));
        d.reconcile();
        d.input(Input::Check {
            dev: SDA,
            verdict: CheckVerdict::Timeout,
        });
        d.dm.message(WWID, &Message::SwitchGroup(2)).unwrap();
        d.dm.clear_log();
        d.up(SDA);
        d.up(SDA);
        assert_eq!(d.dm_state(WWID, "8:0"), DmPathState::Active);
        let switched =
            d.dm.log()
                .contains(&format!("message {WWID} switch_group 1"));
        assert_eq!(switched, want_switch, "{policy}: {:?}", d.dm.log());
    }
}

#[test]
fn switchgroup_checks_the_group_and_remove_refuses_an_open_map() {
    let mut d = Driver::new(
        "find_multipaths = \"greedy\"\n[overrides]\npath_grouping_policy = \"failover\"\n",
    );
    d.reconcile();
    let r = d.request(Request::SwitchGroup {
        map: WWID.into(),
        group: 3,
    });
    assert!(
        matches!(&r, Response::Error { message } if message.contains("pick 1 to 2")),
        "{r:?}"
    );
    let r = d.request(Request::SwitchGroup {
        map: WWID.into(),
        group: 2,
    });
    assert!(matches!(r, Response::Ok { .. }), "{r:?}");
    assert_eq!(d.dm.status(WWID).unwrap().next_pg, 2);
    d.dm.set_open(WWID, 1);
    let r = d.request(Request::Remove { map: WWID.into() });
    assert!(
        matches!(&r, Response::Error { message } if message.contains("open")),
        "{r:?}"
    );
    d.dm.set_open(WWID, 0);
    assert!(matches!(
        d.request(Request::Remove { map: WWID.into() }),
        Response::Ok { .. }
    ));
    // Not made again behind the admin's back.
    assert!(d.reconcile().created.is_empty());
}

#[test]
fn show_config_says_where_each_setting_of_a_map_came_from() {
    let mut d = Driver::new(
        "find_multipaths = \"greedy\"\n[overrides]\npath_grouping_policy = \"failover\"\n",
    );
    d.reconcile();
    let maps = d.e.config_view();
    let [m] = maps.as_slice() else {
        panic!("{maps:?}")
    };
    assert_eq!((m.wwid.as_str(), m.vendor.as_str()), (WWID, "LIO-ORG"));
    let row = |name: &str| m.settings.iter().find(|r| r.setting == name).unwrap();
    let g = row("path_grouping_policy");
    assert_eq!(g.value, "failover");
    assert!(g.source.contains("[overrides]"), "{g:?}");
    // The built-in LIO entry supplies what no level of the file sets.
    let n = row("no_path_retry");
    assert!(n.source.starts_with("built-in"), "{n:?}");
    let text = crate::control::format_config(&maps);
    assert!(
        text.starts_with(&format!("{WWID} ({WWID}) LIO-ORG,FILEIO\n")),
        "{text}"
    );
}

#[test]
fn a_changed_alias_renames_the_live_map_on_reconfigure_without_a_reload() {
    let conf = |alias: &str| {
        format!(
            "find_multipaths = \"strict\"\n[overrides]\npath_grouping_policy = \"failover\"\n\
             [[multipaths]]\nwwid = \"{WWID}\"\nalias = \"{alias}\"\n"
        )
    };
    let mut d = Driver::new(&conf("sanvol1"));
    assert_eq!(d.reconcile().created, ["sanvol1"]);
    d.input(Input::Check {
        dev: SDB,
        verdict: CheckVerdict::Timeout,
    });
    d.dm.set_open("sanvol1", 1);
    d.dm.clear_log();
    let toml = format!(
        "[defaults]\nbindings_file = \"{0}/bindings\"\nwwids_file = \"{0}/wwids\"\n{1}",
        d.dir.display(),
        conf("data01")
    );
    d.e.set_config(Config::from_toml_str(&toml, "test.toml").unwrap())
        .unwrap();
    let s = d.reconcile();
    assert!(s.reloaded.is_empty() && s.created.is_empty(), "{s:?}");
    assert_eq!(d.dm.log(), ["rename sanvol1 data01"], "a rename, no reload");
    assert!(d.dm.info("sanvol1").unwrap().is_none());
    assert_eq!(
        d.dm.info("data01").unwrap().unwrap().open_count,
        1,
        "renamed while open"
    );
    // The path known down stays down, under the new name too.
    assert_eq!(d.e.health().held_down("data01"), [SDB]);
    let Response::Maps(m) = d.request(Request::ShowMaps) else {
        panic!()
    };
    assert_eq!(m[0].name, "data01");
    // A restarted daemon with a config naming it otherwise keeps the live name.
    let dm = std::mem::take(&mut d.dm);
    let mut d2 = Driver::on(&conf("other"), dm, tmpdir());
    let s = d2.reconcile();
    assert!(s.created.is_empty() && s.reloaded.is_empty(), "{s:?}");
    assert!(d2.dm.info("data01").unwrap().is_some());
}

impl Driver {
    /// Swaps in a new config: `extra_toml` after the `[defaults]` files of this driver's
    /// directory, as [`Driver::on`] writes them.
    fn reconfigure(&mut self, extra_toml: &str) {
        let toml = format!(
            "[defaults]\nbindings_file = \"{0}/bindings\"\nwwids_file = \"{0}/wwids\"\n{extra_toml}",
            self.dir.display()
        );
        self.e
            .set_config(Config::from_toml_str(&toml, "test.toml").unwrap())
            .unwrap();
    }

    /// Sets a path's ALUA state as the kernel's handler shows it (`None`: no handler).
    fn alua(&self, name: &str, state: Option<&str>, preferred: bool) {
        let dev = self.sysfs_root.join("sys/block").join(name).join("device");
        for (file, value) in [
            ("access_state", state.map(String::from)),
            (
                "preferred_path",
                state.map(|_| u8::from(preferred).to_string()),
            ),
        ] {
            match value {
                Some(v) => std::fs::write(dev.join(file), format!("{v}\n")).unwrap(),
                None => {
                    let _ = std::fs::remove_file(dev.join(file));
                }
            }
        }
    }

    /// The devices of the map's groups, in table order.
    fn groups(&self, map: &str) -> Vec<Vec<String>> {
        self.dm
            .table(map)
            .unwrap()
            .groups
            .iter()
            .map(|g| g.paths.iter().map(|p| p.dev.clone()).collect())
            .collect()
    }

    fn replans(&self) -> usize {
        self.other
            .iter()
            .filter(|c| matches!(c, Command::Replan))
            .count()
    }
}

#[test]
fn alua_prio_follows_multipath_tools_values_and_the_preferred_bit() {
    let cases = [
        (Some("active/optimized"), false, Some(50)),
        (Some("active/optimized"), true, Some(50)),
        (Some("active/non-optimized"), false, Some(10)),
        (Some("active/non-optimized"), true, Some(90)),
        (Some("lba-dependent"), false, Some(5)),
        (Some("standby"), false, Some(1)),
        (Some("standby"), true, Some(81)),
        (Some("unavailable"), false, Some(0)),
        (Some("offline"), false, Some(0)),
        (Some("unknown"), false, Some(0)),
        (None, false, Some(0)),
        (Some("transitioning"), false, None),
        (Some("transitioning"), true, None),
    ];
    for (state, preferred, want) in cases {
        assert_eq!(
            super::alua_prio(state, preferred),
            want,
            "{state:?} preferred={preferred}"
        );
    }
}

#[test]
fn alua_groups_by_access_state_and_regroups_when_the_target_moves_its_optimized_port() {
    // Nothing in the file: the built-in LIO entry (group_by_prio, prio alua, failback
    // immediate) and the generic ALUA entry's handler.
    let mut d = Driver::new("find_multipaths = \"greedy\"\n");
    d.alua("sda", Some("active/optimized"), false);
    d.alua("sdb", Some("active/non-optimized"), false);
    assert_eq!(d.reconcile().created, [WWID]);
    let t = d.dm.table(WWID).unwrap();
    assert_eq!(
        t.hw_handler.as_ref().map(|h| h.name.as_str()),
        Some("alua"),
        "{t}"
    );
    assert_eq!(d.groups(WWID), [["8:0"], ["8:16"]], "optimized first: {t}");
    assert_eq!(t.initial_pg, 1);
    let Response::Paths(paths) = d.request(Request::ShowPaths) else {
        panic!()
    };
    let prios: Vec<(&str, u32)> = paths.iter().map(|p| (p.name.as_str(), p.prio)).collect();
    assert_eq!(prios, [("sda", 50), ("sdb", 10)]);

    // An interval with nothing new: no pass, no reload.
    d.dm.clear_log();
    d.poll();
    assert_eq!(d.replans(), 0);
    assert!(
        !d.dm.log().iter().any(|l| l.starts_with("reload")),
        "{:?}",
        d.dm.log()
    );

    // The target moves its optimized port; the checker's interval reads it and the map
    // is regrouped, the newly optimized path first.
    d.alua("sda", Some("active/non-optimized"), false);
    d.alua("sdb", Some("active/optimized"), false);
    d.poll();
    assert_eq!(d.replans(), 1);
    assert!(
        d.dm.log().contains(&format!("reload {WWID}")),
        "{:?}",
        d.dm.log()
    );
    assert_eq!(d.groups(WWID), [["8:16"], ["8:0"]]);
    assert_eq!(
        d.dm.table(WWID).unwrap().initial_pg,
        1,
        "failback immediate"
    );

    // Mid-transition the kernel shows `transitioning`: the last priority holds, so the
    // map is not regrouped before the new state is known.
    d.dm.clear_log();
    d.alua("sdb", Some("transitioning"), false);
    d.poll();
    assert_eq!(d.replans(), 1, "no pass for a transition");
    let s = d.reconcile();
    assert!(
        s.reloaded.is_empty(),
        "a pass meanwhile keeps the groups: {s:?}"
    );
    assert_eq!(d.groups(WWID), [["8:16"], ["8:0"]]);

    // And back.
    d.alua("sda", Some("active/optimized"), false);
    d.alua("sdb", Some("active/non-optimized"), false);
    d.poll();
    assert_eq!(d.replans(), 2);
    assert_eq!(d.groups(WWID), [["8:0"], ["8:16"]]);
}

#[test]
fn a_regroup_says_which_priorities_changed() {
    let mut d = Driver::new("find_multipaths = \"greedy\"\n");
    d.alua("sda", Some("active/optimized"), false);
    d.alua("sdb", Some("active/non-optimized"), false);
    d.reconcile();
    d.alua("sda", Some("standby"), false);
    d.alua("sdb", Some("active/optimized"), false);
    let snap = gather::snapshot(&d.sysfs, &d.dm, true);
    let (works, _) = d.e.plan(snap, d.now);
    let whys: Vec<&str> = works
        .iter()
        .filter_map(|w| match (&w.op, &w.why) {
            (DmOp::Reload { .. }, Why::Plan { why, .. }) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    let [why] = whys.as_slice() else {
        panic!("one reload: {works:?}")
    };
    assert!(
        why.ends_with("path priorities changed: sdb 10 -> 50, sda 50 -> 1"),
        "{why}"
    );
}

#[test]
fn a_preferred_port_group_goes_first_unless_another_is_optimized_and_preferred() {
    let mut d = Driver::new("find_multipaths = \"greedy\"\n");
    // multipath-tools' rule: preferred adds 80 to a non-optimized port group.
    d.alua("sda", Some("active/optimized"), false);
    d.alua("sdb", Some("active/non-optimized"), true);
    d.reconcile();
    assert_eq!(d.groups(WWID), [["8:16"], ["8:0"]]);
    // The preference moves: picked up at the interval like a state change.
    d.alua("sda", Some("active/optimized"), true);
    d.alua("sdb", Some("active/non-optimized"), false);
    d.poll();
    assert_eq!(d.replans(), 1);
    assert_eq!(d.groups(WWID), [["8:0"], ["8:16"]]);
}

#[test]
fn an_alua_handler_attached_later_brings_the_alua_settings_at_the_next_interval() {
    let mut d = Driver::new("find_multipaths = \"greedy\"\n");
    // No handler: the LUN shows no ALUA, prio alua falls back to const: one group.
    d.reconcile();
    let t = d.dm.table(WWID).unwrap();
    assert!(t.hw_handler.is_none(), "{t}");
    assert_eq!(d.groups(WWID), [["8:0", "8:16"]]);
    // scsi_dh_alua attached (modprobe, or dm loading a table naming it).
    d.alua("sda", Some("active/optimized"), false);
    d.alua("sdb", Some("active/non-optimized"), false);
    d.poll();
    assert_eq!(d.replans(), 1);
    let t = d.dm.table(WWID).unwrap();
    assert_eq!(
        t.hw_handler.as_ref().map(|h| h.name.as_str()),
        Some("alua"),
        "{t}"
    );
    assert_eq!(d.groups(WWID), [["8:0"], ["8:16"]]);
}

#[test]
fn an_alua_state_change_on_a_const_prio_map_reloads_nothing() {
    let mut d = Driver::new(
        "find_multipaths = \"greedy\"\n[overrides]\nprio = \"const\"\npath_grouping_policy = \"multibus\"\n",
    );
    d.alua("sda", Some("active/optimized"), false);
    d.alua("sdb", Some("active/non-optimized"), false);
    d.reconcile();
    assert_eq!(d.groups(WWID), [["8:0", "8:16"]]);
    d.dm.clear_log();
    d.alua("sda", Some("active/non-optimized"), false);
    d.alua("sdb", Some("active/optimized"), false);
    d.poll();
    assert_eq!(d.replans(), 0);
    assert!(
        !d.dm.log().iter().any(|l| l.starts_with("reload")),
        "{:?}",
        d.dm.log()
    );
}

#[test]
fn a_maps_settings_follow_a_new_config_at_once_not_at_the_next_scan() {
    let mut d = Driver::new("find_multipaths = \"greedy\"\n[overrides]\nno_path_retry = 2\n");
    d.reconcile();
    assert_eq!(d.e.settings(WWID).no_path_retry, NoPathRetry::Retries(2));
    d.reconfigure("find_multipaths = \"greedy\"\n[overrides]\nno_path_retry = 5\n");
    // Read before any pass: the settings kept for the map (they are cached) are dropped
    // with the old config.
    assert_eq!(d.e.settings(WWID).no_path_retry, NoPathRetry::Retries(5));
}

#[test]
fn a_reconfigure_while_the_wwids_write_is_on_its_way_keeps_the_wwid() {
    let seed = format!("[[multipaths]]\nwwid = \"{WWID}\"\nalias = \"sanvol1\"\n");
    let mut d = Driver::new(&seed);
    d.held_writes = Some(Vec::new());
    let s = d.reconcile();
    assert_eq!(s.created, ["sanvol1"], "{s:?}");
    let held = d.held_writes.take().unwrap();
    assert_eq!(held.len(), 1, "the wwids file is written once");
    // SIGHUP before the write lands: the file on disk does not have the WWID yet.
    assert!(!d.dir.join("wwids").exists());
    d.reconfigure(&seed);
    assert!(
        d.e.wwids.contains(WWID),
        "the reload forgot a WWID still being written"
    );
    // The write lands; a later one still has the WWID.
    for (path, contents) in held {
        crate::config::bindings::write_atomic(&path, &contents).unwrap();
    }
    assert!(
        std::fs::read_to_string(d.dir.join("wwids"))
            .unwrap()
            .contains(&format!("/{WWID}/"))
    );
}

/// `luns` LUNs behind two portals (sessions 1 and 2, as in the recorded tree), every
/// path's disk and session as a scan reads them; sdN is LUN N/2 on portal N%2 + 1.
fn two_portals(luns: u32) -> (Vec<ScsiDisk>, BTreeMap<String, IscsiPath>) {
    let (mut disks, mut iscsi) = (Vec::new(), BTreeMap::new());
    for lun in 0..luns {
        for portal in 0..2u32 {
            let n = lun * 2 + portal;
            let (name, hctl) = (format!("sd{n}"), format!("{portal}:0:0:{lun}"));
            let dev = DevT {
                major: 65 + n / 16,
                minor: (n % 16) * 16,
            };
            disks.push(ScsiDisk {
                name: name.clone(),
                dev,
                hctl: hctl.clone(),
                vendor: "LIO-ORG".into(),
                model: "lun".into(),
                rev: "4.0".into(),
                size_bytes: 1 << 20,
                state: "running".into(),
                wwid: Some(format!("naa.6001405{lun:025x}")),
                access_state: None,
                preferred: false,
            });
            let session = format!("session{}", portal + 1);
            let portal = format!("10.99.{}.2:3260", portal + 1).parse().unwrap();
            iscsi.insert(
                name.clone(),
                IscsiPath {
                    name,
                    dev,
                    hctl,
                    session,
                    target: "iqn.2003-01.org.linux-iscsi.lab".into(),
                    session_state: "LOGGED_IN".into(),
                    recovery_tmo: Some(5),
                    portal,
                    conn: None,
                },
            );
        }
    }
    (disks, iscsi)
}

#[test]
fn a_portal_of_128_luns_comes_back_with_one_recovery_timeout_write_at_the_next_tick() {
    let mut d = Driver::new("find_multipaths = \"greedy\"\n");
    let (disks, iscsi) = two_portals(128);
    let snap = gather::Snapshot {
        disks: Ok(disks.clone()),
        iscsi: Some(iscsi.clone()),
        live: Ok(Vec::new()),
        unreadable: Vec::new(),
        scan: Duration::ZERO,
        read_dm: Duration::ZERO,
    };
    let (works, _) = d.e.plan(snap, d.now);
    assert_eq!(works.len(), 128);
    d.run(works.into_iter().map(Command::Dm).collect(), None);
    // Each create asks for a poll, which the driver runs: both sessions go fast.
    let tmo_writes = |d: &mut Driver| -> Vec<(String, u32)> {
        std::mem::take(&mut d.other)
            .into_iter()
            .filter_map(|c| match c {
                Command::SetRecoveryTmo { session, secs } => Some((session, secs)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        tmo_writes(&mut d),
        [("session1".into(), 0), ("session2".into(), 0)]
    );
    let portal1: Vec<(DevT, String)> = disks
        .iter()
        .filter(|x| x.hctl.starts_with("0:"))
        .map(|x| (x.dev, format!("{}", x.dev)))
        .collect();
    // The checker finds portal 1 down: session 2 carries every map's last path now and
    // gets its original timeout back at the first failure, not later.
    for (dev, _) in &portal1 {
        d.input(Input::Check {
            dev: *dev,
            verdict: CheckVerdict::Down {
                why: "TUR: host byte DID_TRANSPORT_DISRUPTED (0x0e)".into(),
                ambiguous: false,
            },
        });
    }
    let map_of = |d: &Driver, dev: &str| -> String {
        let mut maps = d.e.maps.iter();
        let (name, _) = maps
            .find(|(_, m)| m.table.path_devs().any(|p| p == dev))
            .unwrap();
        name.clone()
    };
    for (_, dev) in &portal1 {
        let m = map_of(&d, dev);
        assert_eq!(d.dm_state(&m, dev), DmPathState::Failed, "{m} {dev}");
    }
    assert_eq!(tmo_writes(&mut d), [("session2".into(), 5)]);
    // It comes back: two clean checks each. Working the timeouts out after each of the
    // 128 reinstatements held the daemon's loop for seconds under TCG; the fast value
    // goes to session 2 once, at the next tick.
    d.now += 5 * S;
    for _ in 0..2 {
        for (dev, _) in &portal1 {
            d.up(*dev);
        }
    }
    for (dev, name) in &portal1 {
        assert_eq!(d.e.health().state(*dev), Some(PathState::Active));
        let m = map_of(&d, name);
        assert_eq!(d.dm_state(&m, name), DmPathState::Active, "{m} {name}");
    }
    assert_eq!(tmo_writes(&mut d), []);
    d.tick();
    assert_eq!(tmo_writes(&mut d), [("session2".into(), 0)]);
    assert_eq!(
        (d.tmo("session1"), d.tmo("session2")),
        ("0".into(), "0".into())
    );
    d.tick();
    assert_eq!(tmo_writes(&mut d), []);
}
