//! The daemon loop and its control socket, end to end on the host: a real unix socket and
//! the real CLI client against the daemon's loop, with the simulated device-mapper and the
//! sysfs tree recorded in the lab (two iSCSI paths to one LUN).

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use mpathd::{
    actions::rescue::Ledger,
    config::Config,
    control::{self, Request, Response},
    daemon::{self, Engine, EngineOptions, Options},
    dm::{DmBackend, DmError, MapInfo, Message, MultipathStatus, MultipathTable, SimDm},
    health::PathState,
    topology::Sysfs,
};

const WWID: &str = "360014056001405f00dcafe0123456789";

struct Daemon {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Daemon {
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, SimDm::new(), |_| {})
    }

    /// The daemon on `dm`, with `tweak` applied to its options.
    fn start_with<D: DmBackend + 'static>(
        dir: &Path,
        dm: D,
        tweak: impl FnOnce(&mut Options) + Send + 'static,
    ) -> Self {
        let socket = dir.join("mpathd.sock");
        let toml = format!(
            "[defaults]\nbindings_file = \"{0}/bindings\"\nwwids_file = \"{0}/wwids\"\n\
             [overrides]\npath_grouping_policy = \"failover\"\n\
             [[multipaths]]\nwwid = \"{WWID}\"\nalias = \"sanvol1\"\n",
            dir.display()
        );
        let cfg = Config::from_toml_str(&toml, "test.toml").unwrap();
        let sysfs = Sysfs::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/sysfs/lab-2portals"
        ));
        // No recovery timeouts written: the recorded tree is the repository's.
        let eopts = EngineOptions {
            fast_recovery_tmo: None,
            ..EngineOptions::default()
        };
        let ledger = Ledger::load(&dir.join("recovery_tmo.json")).unwrap();
        let engine = Engine::new(cfg, eopts.clone(), ledger).unwrap();
        let mut opts = Options::new(dir.join("unused.toml"));
        opts.socket = Some(socket.clone());
        opts.rescan_interval = Duration::from_secs(3600);
        opts.check_interval = Some(Duration::from_secs(3600));
        opts.engine = eopts;
        opts.ledger = dir.join("recovery_tmo.json");
        // The recorded paths do not exist on this host: nothing to probe.
        opts.probes = false;
        tweak(&mut opts);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let sock = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = daemon::bind_socket(&sock)?;
                daemon::serve(
                    opts,
                    engine,
                    sysfs,
                    Arc::new(dm),
                    listener,
                    Instant::now(),
                    async {
                        let _ = rx.await;
                    },
                )
                .await
            })
        });
        let d = Self {
            socket,
            stop: Some(tx),
            thread: Some(thread),
        };
        let t0 = Instant::now();
        // Up once it answers and the first pass made the map.
        while !matches!(d.call(&Request::ShowMaps), Ok(Response::Maps(m)) if !m.is_empty()) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "daemon did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn call(&self, req: &Request) -> Result<Response, control::ClientError> {
        control::call(&self.socket, req, Duration::from_secs(10))
    }

    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap().unwrap();
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mpathd-ctl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn cli_requests_reach_the_daemon_and_change_the_maps() {
    let dir = tempdir("cli");
    let d = Daemon::start(&dir);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the control socket is for root only");
    // The created map's WWID is saved, off the loop, soon after its create.
    let t0 = Instant::now();
    while !std::fs::read_to_string(dir.join("wwids")).is_ok_and(|w| w.contains(WWID)) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the wwids file was not written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let Response::Topology(t) = d.call(&Request::ShowTopology).unwrap() else {
        panic!()
    };
    assert_eq!(t.maps.len(), 1);
    assert_eq!(
        (t.maps[0].name.as_str(), t.maps[0].wwid.as_str()),
        ("sanvol1", WWID)
    );
    let text = control::format_topology(&t);
    assert!(
        text.contains("| `- 0:0:0:0 sda 8:0 active ready running"),
        "{text}"
    );

    let r = d.call(&Request::Fail { path: "sda".into() }).unwrap();
    assert!(matches!(r, Response::Ok { .. }), "{r:?}");
    let Response::Paths(paths) = d.call(&Request::ShowPaths).unwrap() else {
        panic!()
    };
    let sda = paths.iter().find(|p| p.name == "sda").unwrap();
    assert_eq!(
        (sda.dm_state.as_str(), sda.state),
        ("failed", Some(PathState::AdminFailed))
    );
    let Response::Maps(maps) = d.call(&Request::ShowMaps).unwrap() else {
        panic!()
    };
    assert_eq!((maps[0].paths, maps[0].active_paths), (2, 1));

    // Errors come back as answers, with what to do.
    let r = d
        .call(&Request::SwitchGroup {
            map: "nosuch".into(),
            group: 1,
        })
        .unwrap();
    assert!(
        matches!(&r, Response::Error { message } if message.contains("nosuch")),
        "{r:?}"
    );

    // Several clients at once all get their answer.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = d.socket.clone();
            std::thread::spawn(move || {
                control::call(&s, &Request::ShowTopology, Duration::from_secs(10)).unwrap()
            })
        })
        .collect();
    for h in handles {
        assert!(matches!(h.join().unwrap(), Response::Topology(_)));
    }
    d.stop();
}

#[test]
fn bad_requests_are_answered_and_a_second_daemon_is_refused() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempdir("bad");
    let d = Daemon::start(&dir);
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"{\"cmd\":\"format_all_disks\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    let r: Response = serde_json::from_str(&line).unwrap();
    assert!(
        matches!(&r, Response::Error { message } if message.starts_with("bad request")),
        "{r:?}"
    );

    let e = daemon::bind_socket(&d.socket).unwrap_err().to_string();
    assert!(e.contains("another mpathd is running"), "{e}");
    d.stop();
    // The dead daemon's socket file is replaced by the next one.
    let d2 = Daemon::start(&dir);
    assert!(matches!(
        d2.call(&Request::ShowMaps).unwrap(),
        Response::Maps(_)
    ));
    d2.stop();
}

/// How many status reads ran, and the most at once.
#[derive(Default)]
struct Reads {
    now: AtomicUsize,
    most: AtomicUsize,
    total: AtomicUsize,
}

/// SimDm whose status reads take 100 ms each.
struct SlowStatus {
    sim: SimDm,
    reads: Arc<Reads>,
}

impl DmBackend for SlowStatus {
    fn list(&self) -> Result<Vec<MapInfo>, DmError> {
        self.sim.list()
    }
    fn info(&self, name: &str) -> Result<Option<MapInfo>, DmError> {
        self.sim.info(name)
    }
    fn table(&self, name: &str) -> Result<MultipathTable, DmError> {
        self.sim.table(name)
    }
    fn status(&self, name: &str) -> Result<MultipathStatus, DmError> {
        let r = &self.reads;
        r.most.fetch_max(r.now.fetch_add(1, SeqCst) + 1, SeqCst);
        r.total.fetch_add(1, SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        r.now.fetch_sub(1, SeqCst);
        self.sim.status(name)
    }
    fn create(
        &self,
        name: &str,
        uuid: &str,
        size_sectors: u64,
        table: &MultipathTable,
    ) -> Result<MapInfo, DmError> {
        self.sim.create(name, uuid, size_sectors, table)
    }
    fn reload(&self, name: &str, size_sectors: u64, table: &MultipathTable) -> Result<(), DmError> {
        self.sim.reload(name, size_sectors, table)
    }
    fn remove(&self, name: &str) -> Result<(), DmError> {
        self.sim.remove(name)
    }
    fn rename(&self, name: &str, new_name: &str) -> Result<(), DmError> {
        self.sim.rename(name, new_name)
    }
    fn message(&self, name: &str, msg: &Message) -> Result<(), DmError> {
        self.sim.message(name, msg)
    }
}

/// Each create and each check interval asks for a poll of every map's status. At
/// start-up with 128 maps that was 128 polls of 128 maps at once, which starved the
/// host's CPU for a minute: polls asked for while one reads wait, and one serves them all.
#[test]
fn polls_asked_for_faster_than_they_read_never_overlap() {
    let dir = tempdir("poll");
    let reads = Arc::new(Reads::default());
    let dm = SlowStatus {
        sim: SimDm::new(),
        reads: reads.clone(),
    };
    // A poll asked for every 10 ms, each reading for 100 ms.
    let d = Daemon::start_with(&dir, dm, |o| {
        o.check_interval = Some(Duration::from_millis(10));
    });
    std::thread::sleep(Duration::from_millis(1500));
    // Still answering meanwhile.
    assert!(matches!(
        d.call(&Request::ShowMaps).unwrap(),
        Response::Maps(_)
    ));
    d.stop();
    // One poll, and a reconcile pass reading the maps beside it; unbounded, about 10
    // polls would read at once.
    let most = reads.most.load(SeqCst);
    assert!(most <= 2, "{most} status reads at once");
    // Back to back, not skipped: about 15 polls in 1.5 s, and the passes' reads.
    let total = reads.total.load(SeqCst);
    assert!((5..=25).contains(&total), "{total} status reads in 1.5 s");
}
