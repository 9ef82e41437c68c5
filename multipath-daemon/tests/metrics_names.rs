//! Every metric the shipped dashboards and rules name is one mpathd exports, and what it
//! exports passes `promtool check metrics`.
//!
//! The names come from a live `GET /metrics` of the daemon (its loop on the simulated
//! device-mapper and the sysfs tree recorded in the lab, as tests/control_socket.rs runs
//! it), not from a list kept by hand: a family renamed in the code fails here until the
//! dashboards and rules follow.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mpathd::{
    actions::rescue::Ledger,
    config::Config,
    daemon::{self, Engine, EngineOptions, Options},
    dm::SimDm,
    topology::Sysfs,
};

const WWID: &str = "360014056001405f00dcafe0123456789";

fn repo(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut c = std::net::TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    c.read_to_string(&mut out)?;
    Ok(out)
}

/// Starts the daemon with metrics on a free loopback port, scrapes it once its map is
/// made, stops it, and returns the body.
fn scrape() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mpathd-metrics-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let toml = format!(
        "[defaults]\nbindings_file = \"{0}/bindings\"\nwwids_file = \"{0}/wwids\"\n\
         [[multipaths]]\nwwid = \"{WWID}\"\nalias = \"sanvol1\"\n",
        dir.display()
    );
    let cfg = Config::from_toml_str(&toml, "test.toml").unwrap();
    let sysfs = Sysfs::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sysfs/lab-2portals"
    ));
    let eopts = EngineOptions {
        fast_recovery_tmo: None,
        ..EngineOptions::default()
    };
    let ledger = Ledger::load(&dir.join("recovery_tmo.json")).unwrap();
    let engine = Engine::new(cfg, eopts.clone(), ledger).unwrap();
    // A port free a moment ago: the daemon binds it again.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut opts = Options::new(dir.join("unused.toml"));
    opts.socket = Some(dir.join("mpathd.sock"));
    opts.rescan_interval = Duration::from_secs(3600);
    opts.check_interval = Some(Duration::from_secs(3600));
    opts.engine = eopts;
    opts.ledger = dir.join("recovery_tmo.json");
    opts.probes = false;
    opts.metrics = Some(addr);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let sock = dir.join("mpathd.sock");
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = daemon::bind_socket(&sock).unwrap();
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
            .unwrap()
        })
    });
    let t0 = Instant::now();
    let body = loop {
        if let Ok(r) = get(addr) {
            let (head, body) = r.split_once("\r\n\r\n").expect("an HTTP response");
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            // Up once the first pass made the map and the next one read the iSCSI
            // sessions (the portals).
            if body.contains("mpathd_map_usable_paths{map=\"sanvol1\"")
                && body.contains("portal=\"10.99.2.2:3260\"")
            {
                break body.to_owned();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the daemon served no metrics with its map on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = tx.send(());
    thread.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    body
}

/// Series names a scrape can show: each family, and a histogram's _bucket/_sum/_count.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        names.insert(name.to_owned());
        if kind == "histogram" {
            for s in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{s}"));
            }
        }
    }
    names
}

/// (mpathd metric names, recording rule names) a text mentions: tokens of PromQL name
/// characters, `mpathd_...` without a colon, `level:mpathd_...:ops` with.
fn mentioned(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut metrics, mut records) = (BTreeSet::new(), BTreeSet::new());
    for tok in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if tok.starts_with("mpathd_") && !tok.contains(':') && tok.len() > "mpathd_".len() {
            metrics.insert(tok.to_owned());
        } else if let Some((level, rest)) = tok.split_once(':')
            && !level.is_empty()
            && level.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            && rest.starts_with("mpathd_")
        {
            records.insert(tok.to_owned());
        }
    }
    (metrics, records)
}

fn recorded(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn dashboards_and_rules_name_only_exported_metrics_and_recorded_rules() {
    let text = scrape();
    // The live daemon's paths, labelled as the dashboards expect.
    assert!(
        text.contains("mpathd_path_state{map=\"sanvol1\",wwid=\"360014056001405f00dcafe0123456789\",path=\"sda\",dev=\"8:0\",portal=\"10.99.1.2:3260\",state=\"active\"} 1"),
        "{text}"
    );
    let names = exported(&text);
    assert!(names.len() > 40, "too few families scraped: {names:?}");
    let rules = repo("dashboards/prometheus/rules.yml");
    let records = recorded(&rules);
    assert!(records.len() > 10, "{records:?}");
    let mut unknown = Vec::new();
    let mut used = 0;
    for file in [
        "dashboards/grafana/mpathd.json",
        "dashboards/grafana/mpathd-fleet.json",
        "dashboards/prometheus/alerts.yml",
        "dashboards/prometheus/rules.yml",
    ] {
        let (metrics, recs) = mentioned(&repo(file));
        used += metrics.len() + recs.len();
        unknown.extend(
            metrics
                .iter()
                .filter(|m| !names.contains(*m))
                .map(|m| format!("{file}: metric {m} is not exported")),
        );
        unknown.extend(
            recs.iter()
                .filter(|r| !records.contains(*r))
                .map(|r| format!("{file}: {r} is recorded by no rule in rules.yml")),
        );
    }
    assert!(
        used > 30,
        "the files name too little: did their layout change?"
    );
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
}

#[test]
fn names_are_told_apart() {
    let (m, r) = mentioned(
        r#"rate(mpathd_path_errors_total{portal="10.0.0.1:3260"}[5m]) / instance:mpathd_paths:count"#,
    );
    assert_eq!(
        m.into_iter().collect::<Vec<_>>(),
        ["mpathd_path_errors_total"]
    );
    assert_eq!(
        r.into_iter().collect::<Vec<_>>(),
        ["instance:mpathd_paths:count"]
    );
    let names = exported("# TYPE mpathd_x_seconds histogram\n# TYPE mpathd_y_total counter\n");
    assert!(names.contains("mpathd_x_seconds_bucket") && names.contains("mpathd_y_total"));
    assert!(!names.contains("mpathd_y_total_bucket"));
}

#[test]
fn the_scrape_passes_promtool_check_metrics() {
    let strict = std::env::var_os("MPATHD_TEST_STRICT").is_some();
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if !strict => {
            eprintln!("skipped: promtool cannot run ({e}); install Debian's prometheus");
            return;
        }
        Err(e) => {
            panic!("promtool cannot run ({e}): install Debian's prometheus (cargo xtask bootstrap)")
        }
    };
    let text = scrape();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits non-zero on a format error and prints lint problems (missing
    // HELP, counters without _total, non-base units...): both fail here.
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
}
