use std::{
    collections::BTreeMap,
    io::{Read, Write},
    time::Duration,
};

use super::{render::log2_us_buckets, *};
use crate::health::{Action, Decision, Reason};

/// One sample of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader of what `render` writes (no escapes in the values these tests use).
fn parse(text: &str) -> (Vec<Sample>, Vec<(String, String)>) {
    let mut samples = Vec::new();
    let mut types = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').expect("# TYPE name type");
            types.push((n.to_owned(), t.to_owned()));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').expect("labels close");
                let labels = l
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").expect("k=\"v\"");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (n.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    (samples, types)
}

fn find<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

fn one(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let found = find(samples, name, want);
    assert_eq!(found.len(), 1, "{name} {want:?}: {found:?}");
    found[0].value
}

fn path(map: &str, name: &str, minor: u32, state: PathState) -> PathMetrics {
    PathMetrics {
        map: map.into(),
        wwid: format!("wwid-{map}"),
        path: name.into(),
        dev: DevT::new(8, minor),
        portal: Some(format!("10.99.{}.2:3260", minor / 16 + 1)),
        state,
        dm_failed: state == PathState::Failed,
        flaps: 1,
        lun_errors: 4,
        latency_limit: Duration::from_millis(25),
        rtt_limit: Duration::from_millis(40),
    }
}

fn map(name: &str) -> MapMetrics {
    MapMetrics {
        name: name.into(),
        wwid: format!("wwid-{name}"),
        active_group: Some(2),
        queue_if_no_path: true,
        no_path_retry_expired: false,
        io_stalled: false,
    }
}

#[test]
fn every_family_has_help_and_type_in_order_even_when_empty() {
    let text = render(Snapshot::default());
    let (samples, types) = parse(&text);
    let want: Vec<(String, String)> = FAMILIES
        .iter()
        .map(|f| (f.name.to_owned(), f.type_name().to_owned()))
        .collect();
    assert_eq!(types, want);
    for f in FAMILIES {
        assert!(
            text.contains(&format!("# HELP {} ", f.name)),
            "no HELP for {}",
            f.name
        );
        assert!(f.help.len() > 20, "{} needs a real help text", f.name);
        assert!(f.name.starts_with("mpathd_"), "{}", f.name);
        match f.kind {
            MetricType::Counter => assert!(f.name.ends_with("_total"), "{}", f.name),
            _ => assert!(!f.name.ends_with("_total"), "{}", f.name),
        }
    }
    // No paths, no maps, no probes: the daemon's own series only.
    assert_eq!(one(&samples, "mpathd_probes_loaded", &[]), 0.0);
    assert_eq!(one(&samples, "mpathd_build_info", &[]), 1.0);
    assert!(find(&samples, "mpathd_path_state", &[]).is_empty());
}

#[test]
fn per_path_and_per_map_series_carry_their_values() {
    let mut s = Snapshot {
        paths: vec![
            path("sanvol1", "sda", 0, PathState::Active),
            path("sanvol1", "sdb", 16, PathState::Failed),
        ],
        maps: vec![map("sanvol1")],
        ..Snapshot::default()
    };
    s.paths[1].portal = None;
    let mut block = crate::ebpf::PathSnapshot::default();
    block.stats.dir[0].completions = 10;
    block.stats.dir[0].bytes = 40960;
    block.stats.dir[1].completions = 5;
    // 3 reads at [256, 512) us, 2 writes at [1, 2) s.
    block.stats.dir[0].latency_hist[8] = 3;
    block.stats.dir[0].latency_sum_ns = 3 * 300_000;
    block.stats.dir[1].latency_hist[20] = 2;
    block.stats.dir[1].latency_sum_ns = 2 * 1_500_000_000;
    block.stats.errors_by_class = [1, 2, 3];
    block.inflight = 4;
    block.oldest = Some(Duration::from_millis(1500));
    let conn = crate::model::Conn {
        local: "10.99.1.1:40000".parse().unwrap(),
        remote: "10.99.1.2:3260".parse().unwrap(),
    };
    s.tcp_lost.insert(conn, 3);
    // A connection of no managed path is not shown.
    s.tcp_lost.insert(
        crate::model::Conn {
            local: "10.99.9.1:40000".parse().unwrap(),
            remote: "10.99.9.2:3260".parse().unwrap(),
        },
        9,
    );
    s.readings.push(crate::ebpf::PathReading {
        dev: DevT::new(8, 0),
        block,
        conn: Some((
            conn,
            crate::ebpf::ConnSnapshot {
                retransmits: 7,
                consecutive_retrans: 0,
                resets: 1,
                srtt: Duration::from_micros(250),
                last_state: 1,
                snd_una: 0,
                last_ack_ns: 0,
                last_rcv_ns: 0,
            },
        )),
    });
    // A reading for a device in no map is not shown.
    s.readings.push(crate::ebpf::PathReading {
        dev: DevT::new(8, 99),
        block: crate::ebpf::PathSnapshot::default(),
        conn: None,
    });
    let text = render(s);
    let (samples, _) = parse(&text);
    let sda = [("path", "sda"), ("map", "sanvol1"), ("dev", "8:0")];
    assert_eq!(
        one(
            &samples,
            "mpathd_path_state",
            &[sda[0], ("state", "active")]
        ),
        1.0
    );
    assert_eq!(
        one(
            &samples,
            "mpathd_path_state",
            &[sda[0], ("state", "failed")]
        ),
        0.0
    );
    assert_eq!(
        one(
            &samples,
            "mpathd_path_state",
            &[("path", "sdb"), ("state", "failed")]
        ),
        1.0
    );
    // Five states per path, one of them 1.
    assert_eq!(find(&samples, "mpathd_path_state", &[]).len(), 10);
    let sda_labels = &find(&samples, "mpathd_path_dm_failed", &sda)[0].labels;
    assert_eq!(sda_labels["portal"], "10.99.1.2:3260");
    assert_eq!(sda_labels["wwid"], "wwid-sanvol1");
    assert!(
        !text.contains("portal=\"\"") || text.contains("path=\"sdb\""),
        "an absent portal is the empty label"
    );
    assert_eq!(
        one(&samples, "mpathd_path_dm_failed", &[("path", "sdb")]),
        1.0
    );
    assert_eq!(one(&samples, "mpathd_path_lun_errors_total", &sda), 4.0);
    assert_eq!(
        one(&samples, "mpathd_path_latency_limit_seconds", &sda),
        0.025
    );
    assert_eq!(
        one(
            &samples,
            "mpathd_path_completions_total",
            &[sda[0], ("op", "read")]
        ),
        10.0
    );
    assert_eq!(
        one(
            &samples,
            "mpathd_path_bytes_total",
            &[sda[0], ("op", "read")]
        ),
        40960.0
    );
    assert_eq!(
        one(
            &samples,
            "mpathd_path_errors_total",
            &[sda[0], ("class", "lun")]
        ),
        3.0
    );
    // Latency: buckets are cumulative, in seconds, from the kernel's log2 us buckets.
    let le = |v: &str| {
        one(
            &samples,
            "mpathd_path_latency_seconds_bucket",
            &[sda[0], ("le", v)],
        )
    };
    assert_eq!(le("0.000128"), 0.0);
    assert_eq!(le("0.000512"), 3.0);
    assert_eq!(le("0.524288"), 3.0);
    assert_eq!(le("2.097152"), 5.0);
    assert_eq!(le("+Inf"), 5.0);
    assert_eq!(
        one(&samples, "mpathd_path_latency_seconds_count", &sda),
        5.0
    );
    assert!((one(&samples, "mpathd_path_latency_seconds_sum", &sda) - 3.0009).abs() < 1e-9);
    assert_eq!(one(&samples, "mpathd_path_inflight", &sda), 4.0);
    assert_eq!(
        one(&samples, "mpathd_path_oldest_inflight_seconds", &sda),
        1.5
    );
    assert_eq!(
        one(&samples, "mpathd_path_tcp_retransmits_total", &sda),
        7.0
    );
    assert_eq!(one(&samples, "mpathd_path_tcp_srtt_seconds", &sda), 0.00025);
    assert_eq!(
        one(&samples, "mpathd_path_tcp_lost_segments_total", &sda),
        3.0
    );
    assert_eq!(
        find(&samples, "mpathd_path_tcp_lost_segments_total", &[]).len(),
        1
    );
    // sdb has no reading: no probe series for it; nor for the unmanaged 8:99.
    assert!(find(&samples, "mpathd_path_inflight", &[("path", "sdb")]).is_empty());
    assert!(!text.contains("8:99"));

    let m = [("map", "sanvol1")];
    assert_eq!(
        one(&samples, "mpathd_map_paths", &[m[0], ("state", "active")]),
        1.0
    );
    assert_eq!(
        one(&samples, "mpathd_map_paths", &[m[0], ("state", "failed")]),
        1.0
    );
    assert_eq!(
        one(&samples, "mpathd_map_paths", &[m[0], ("state", "degraded")]),
        0.0
    );
    assert_eq!(one(&samples, "mpathd_map_usable_paths", &m), 1.0);
    assert_eq!(one(&samples, "mpathd_map_active_group", &m), 2.0);
    assert_eq!(one(&samples, "mpathd_map_queue_if_no_path", &m), 1.0);
    assert_eq!(one(&samples, "mpathd_map_io_stalled", &m), 0.0);
}

#[test]
fn a_removed_path_or_map_leaves_no_series() {
    let full = Snapshot {
        paths: vec![
            path("a", "sda", 0, PathState::Active),
            path("b", "sdb", 16, PathState::Active),
        ],
        maps: vec![map("a"), map("b")],
        ..Snapshot::default()
    };
    let mut less = full.clone();
    less.paths.remove(1);
    less.maps.remove(1);
    assert!(render(full).contains("path=\"sdb\""));
    let text = render(less);
    assert!(text.contains("path=\"sda\""));
    assert!(!text.contains("sdb"), "{text}");
    assert!(!text.contains("map=\"b\""), "{text}");
}

#[test]
fn log2_buckets_convert_exactly() {
    let mut hist = [0u64; 32];
    hist[0] = 1; // < 2 us
    hist[4] = 2; // [16, 32) us
    hist[5] = 3; // [32, 64) us
    hist[31] = 4; // open-ended
    let (b, count) = log2_us_buckets(&hist, &[5, 7]);
    assert_eq!(count, 10);
    assert_eq!(b, vec![(0.000032, 3), (0.000128, 3), (f64::INFINITY, 4)]);
    // A bound at or past the open-ended bucket never takes it.
    let (b, _) = log2_us_buckets(&hist, &[31, 40]);
    assert_eq!(b.last(), Some(&(f64::INFINITY, 4)));
    assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), 10);
}

#[test]
fn stats_count_decisions_calls_and_checks() {
    let mut st = Stats::new();
    let d = Decision {
        dev: DevT::new(8, 0),
        name: "sda".into(),
        map: "m".into(),
        from: PathState::Active,
        to: PathState::Failed,
        action: Action::Fail { rescue: None },
        reason: Reason::ConnReset,
        signal_ns: 1_000_000,
        decided_ns: 1_200_000,
    };
    st.decision(&d, Some(3_000_000));
    st.decision(&d, None);
    st.dm_call("fail_path", true, Duration::from_micros(400));
    st.dm_call("reload", false, Duration::from_secs(3));
    st.check("tur", "timeout", Duration::from_secs(30));
    let s = Snapshot {
        stats: st,
        ..Snapshot::default()
    };
    let (samples, _) = parse(&render(s));
    assert_eq!(
        one(
            &samples,
            "mpathd_decisions_total",
            &[("action", "fail"), ("reason", "tcp_reset")]
        ),
        2.0
    );
    assert_eq!(
        one(&samples, "mpathd_signal_to_decision_seconds_count", &[]),
        2.0
    );
    // 2 ms from signal to done: in the 0.0025 bucket, not the 0.001 one.
    let done = |le| {
        one(
            &samples,
            "mpathd_decision_done_seconds_bucket",
            &[("action", "fail"), ("le", le)],
        )
    };
    assert_eq!(done("0.001"), 0.0);
    assert_eq!(done("0.0025"), 1.0);
    assert_eq!(
        one(&samples, "mpathd_dm_calls_total", &[("op", "reload")]),
        1.0
    );
    assert_eq!(
        one(&samples, "mpathd_dm_call_errors_total", &[("op", "reload")]),
        1.0
    );
    assert_eq!(
        one(
            &samples,
            "mpathd_dm_call_errors_total",
            &[("op", "fail_path")]
        ),
        0.0
    );
    assert_eq!(
        one(
            &samples,
            "mpathd_checks_total",
            &[("checker", "tur"), ("outcome", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        one(
            &samples,
            "mpathd_check_duration_seconds_bucket",
            &[("checker", "tur"), ("le", "30")]
        ),
        1.0
    );
}

#[test]
fn histogram_bounds_are_upper_inclusive() {
    let mut h = Histogram::new(&[1.0, 2.0]);
    for v in [0.5, 1.0, 1.5, 3.0] {
        h.observe(v);
    }
    assert_eq!(h.buckets(), vec![(1.0, 2), (2.0, 1), (f64::INFINITY, 1)]);
    assert_eq!((h.count(), h.sum()), (4, 6.0));
}

#[test]
fn a_scrape_of_1024_paths_renders_every_path() {
    // Its time is measured by `cargo xtask bench scrape` (release build, median and p99),
    // never asserted in a test.
    let text = render(synthetic(1024));
    let (samples, _) = parse(&text);
    assert_eq!(find(&samples, "mpathd_path_state", &[]).len(), 1024 * 5);
    assert_eq!(find(&samples, "mpathd_map_usable_paths", &[]).len(), 512);
}

#[test]
fn metrics_are_served_over_http_and_503_without_a_snapshot() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = Server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = served.clone();
        let task = tokio::spawn(server.run(move || {
            let on = flag.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { on.then(|| synthetic(4)) })
        }));
        let get = move |path: &'static str| {
            tokio::task::spawn_blocking(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                write!(
                    c,
                    "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut out = String::new();
                c.read_to_string(&mut out).unwrap();
                out
            })
        };
        let r = get("/metrics").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("content-type: text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("mpathd_path_state{map=\"mpath0\""), "{r}");
        served.store(false, std::sync::atomic::Ordering::SeqCst);
        let r = get("/metrics").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        let r = get("/nothing").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        task.abort();
    });
    // A taken address says what to do.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let e = Server::bind(held.local_addr().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--metrics"), "{e}");
}

#[test]
fn start_hands_scrapes_to_the_loop() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (addr, mut rx) = start("127.0.0.1:0".parse().unwrap()).unwrap();
        let get = move || {
            tokio::task::spawn_blocking(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                write!(
                    c,
                    "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut out = String::new();
                c.read_to_string(&mut out).unwrap();
                out
            })
        };
        // The loop's side: answer one scrape with a map and no probes.
        let scrape = get();
        let req = rx.recv().await.expect("a scrape request");
        req.answer(
            Snapshot {
                maps: vec![map("loopmap")],
                ..Snapshot::default()
            },
            None,
        );
        let r = scrape.await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("mpathd_map_usable_paths{map=\"loopmap\""), "{r}");
        assert!(r.contains("mpathd_probes_loaded 0"), "{r}");
        // The loop gone: 503, not a hang.
        drop(rx);
        let r = get().await.unwrap();
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    });
}

#[test]
fn docs_metrics_md_lists_every_family() {
    // The reference table in docs/metrics.md is generated from FAMILIES; regenerate it
    // with `MPATHD_BLESS=1 cargo test -p multipath-daemon --lib docs_metrics_md`.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let doc = std::fs::read_to_string(path).expect("docs/metrics.md");
    let (begin, end) = ("<!-- families: begin -->\n", "<!-- families: end -->");
    let a = doc
        .find(begin)
        .expect("docs/metrics.md has the families markers")
        + begin.len();
    let b = doc
        .find(end)
        .expect("docs/metrics.md has the families end marker");
    let want = reference_markdown();
    if doc[a..b] != want {
        if std::env::var_os("MPATHD_BLESS").is_some() {
            std::fs::write(path, format!("{}{want}{}", &doc[..a], &doc[b..])).unwrap();
            return;
        }
        panic!(
            "docs/metrics.md's table is not the one FAMILIES makes: run \
             `MPATHD_BLESS=1 cargo test -p multipath-daemon --lib docs_metrics_md`"
        );
    }
}

/// The engine on the recorded lab tree (two iSCSI paths to one LUN) and a simulated
/// device-mapper, after one reconcile pass: what the loop would copy for a scrape.
#[test]
fn from_engine_lists_the_managed_map_and_its_paths_with_portals() {
    use crate::{
        actions::{DmDone, rescue::Ledger},
        config::Config,
        daemon::{Command, Engine, EngineOptions, gather},
        dm::SimDm,
        topology::lab_fixture,
    };
    let dir = std::env::temp_dir().join(format!("mpathd-metrics-view-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let toml = format!(
        "[defaults]\nbindings_file = \"{0}/bindings\"\nwwids_file = \"{0}/wwids\"\n\
         [overrides]\npath_grouping_policy = \"failover\"\n\
         [[multipaths]]\nwwid = \"360014056001405f00dcafe0123456789\"\nalias = \"sanvol1\"\n",
        dir.display()
    );
    let cfg = Config::from_toml_str(&toml, "test.toml").unwrap();
    let opts = EngineOptions {
        fast_recovery_tmo: None,
        ..EngineOptions::default()
    };
    let mut e = Engine::new(cfg, opts, Ledger::load(&dir.join("ledger.json")).unwrap()).unwrap();
    let sysfs = lab_fixture();
    let dm = SimDm::new();
    let (works, _) = e.plan(gather::snapshot(&sysfs, &dm, true), 1_000_000_000);
    let mut queue: Vec<Command> = works.into_iter().map(Command::Dm).collect();
    while let Some(c) = queue.pop() {
        if let Command::Dm(w) = c {
            let result = crate::actions::run(&dm, &w.map, &w.op);
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
            queue.extend(e.done(&done, &w.why).commands);
        }
    }
    let mut stats = Stats::new();
    stats.request("show_maps");
    let s = from_engine(&e, &stats);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(s.maps.len(), 1, "{s:?}");
    let m = &s.maps[0];
    assert_eq!(
        (m.name.as_str(), m.wwid.as_str()),
        ("sanvol1", "360014056001405f00dcafe0123456789")
    );
    assert!(!m.io_stalled);
    let mut paths: Vec<(&str, String, Option<&str>)> = s
        .paths
        .iter()
        .map(|p| (p.path.as_str(), p.dev.to_string(), p.portal.as_deref()))
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            ("sda", "8:0".to_owned(), Some("10.99.1.2:3260")),
            ("sdb", "8:16".to_owned(), Some("10.99.2.2:3260"))
        ]
    );
    assert!(
        s.paths
            .iter()
            .all(|p| p.map == "sanvol1" && p.state == PathState::Active && !p.dm_failed)
    );
    assert_eq!(s.stats.requests.get("show_maps"), Some(&1));
    // And it renders: two paths, one map with both usable.
    let (samples, _) = parse(&render(s));
    assert_eq!(
        one(&samples, "mpathd_map_usable_paths", &[("map", "sanvol1")]),
        2.0
    );
}
