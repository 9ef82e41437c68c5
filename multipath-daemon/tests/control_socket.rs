//! The daemon loop and its control socket, end to end on the host: a real unix socket and
//! the real CLI client against the daemon's loop, with the simulated device-mapper and the
//! sysfs tree recorded in the lab (two iSCSI paths to one LUN).

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use mpathd::{
    actions::rescue::Ledger,
    config::Config,
    control::{self, Request, Response},
    daemon::{self, Engine, EngineOptions, Options},
    dm::SimDm,
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
                    std::sync::Arc::new(SimDm::new()),
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
