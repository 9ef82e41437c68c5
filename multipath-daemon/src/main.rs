//! mpathd: the multipath daemon and its command line.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use mpathd::{
    cli::{Cli, Cmd, DaemonArgs, ProbeArgs, ShowWhat},
    control::{self, DEFAULT_SOCKET, Request, Response},
    ebpf::{
        ConnEvent, ConnEventKind, ConnThresholds, DevT, EbpfError, ErrorClass, PathEvent,
        PathEventKind, PathThresholds, ProbeEvent, ProbeVariant, WatchSpec, Watcher,
        WatcherOptions, monotonic_ns,
    },
    model::Conn,
    topology::{Sysfs, group_by_wwid},
};

fn main() {
    let journal = mpathd::logging::init();
    if let Err(e) = try_main() {
        if journal {
            // With its priority (error), not as a plain line of standard error.
            tracing::error!("{e:#}");
        } else {
            eprintln!("mpathd: error: {e:#}");
        }
        std::process::exit(1);
    }
}

fn try_main() -> Result<()> {
    let cli = Cli::parse();
    let socket = cli.socket.clone();
    match cli.cmd {
        Cmd::Probe(args) => probe(args),
        Cmd::Scan { json } => scan(json),
        Cmd::Daemon(a) => daemon(a, socket),
        Cmd::Show { what, json } => {
            let req = match what {
                ShowWhat::Topology => Request::ShowTopology,
                ShowWhat::Paths => Request::ShowPaths,
                ShowWhat::Maps => Request::ShowMaps,
                ShowWhat::Config => Request::ShowConfig,
            };
            client(socket, req, json)
        }
        Cmd::Fail { path } => client(socket, Request::Fail { path }, false),
        Cmd::Reinstate { path } => client(socket, Request::Reinstate { path }, false),
        Cmd::Switchgroup { map, group } => {
            client(socket, Request::SwitchGroup { map, group }, false)
        }
        Cmd::Remove { map } => client(socket, Request::Remove { map }, false),
        Cmd::Reconfigure => client(socket, Request::Reconfigure, false),
        Cmd::CheckConfig { file } => check_config(&file),
        Cmd::Import { file, output } => import(&file, output.as_deref()),
    }
}

fn daemon(a: DaemonArgs, socket: Option<PathBuf>) -> Result<()> {
    // No transparent huge pages for a long-running daemon with a small working set: the
    // lab measured 40 of its 62 MiB resident as huge pages that its allocations only
    // partly use. Best effort: an old kernel without the option changes nothing else.
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let secs = |v: f64, what: &str| {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            bail!("--{what} must be a positive number of seconds, not {v}")
        }
    };
    let mut opts = mpathd::daemon::Options::new(a.config);
    opts.socket = socket;
    opts.rescan_interval = secs(a.rescan_secs, "rescan-secs")?;
    opts.check_interval = a.check_secs.map(|v| secs(v, "check-secs")).transpose()?;
    opts.debounce = Duration::from_millis(a.debounce_ms);
    opts.observe = a.observe;
    opts.engine.checker = a.checker;
    opts.engine.checker_timeout = a
        .checker_timeout
        .map(|v| secs(v, "checker-timeout"))
        .transpose()?;
    opts.probes = !a.no_probes;
    opts.metrics = match a.metrics.as_str() {
        "off" => None,
        addr => Some(addr.parse().with_context(|| {
            format!("--metrics {addr}: want an address and port like 127.0.0.1:9977, or off")
        })?),
    };
    if a.no_rescue {
        opts.engine.health.rescue = false;
        opts.engine.fast_recovery_tmo = None;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(mpathd::daemon::run(opts));
    // The daemon waited for its device-mapper calls; a check or a sysfs read still
    // running (on a dead path it can take its whole timeout) must not hold the exit.
    rt.shutdown_timeout(Duration::from_millis(200));
    r
}

fn client(socket: Option<PathBuf>, req: Request, json: bool) -> Result<()> {
    let socket = socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let resp = control::call(&socket, &req, Duration::from_secs(30))?;
    if json {
        // The payload alone, so scripts read `.maps[0]` rather than an envelope.
        let v = match &resp {
            Response::Topology(t) => serde_json::to_value(t)?,
            Response::Paths(p) => serde_json::to_value(p)?,
            Response::Maps(m) => serde_json::to_value(m)?,
            Response::Config(c) => serde_json::to_value(c)?,
            Response::Ok { message } => serde_json::json!({ "message": message }),
            Response::Error { message } => bail!("{message}"),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match resp {
        Response::Ok { message } => println!("{message}"),
        Response::Topology(t) => print!("{}", control::format_topology(&t)),
        Response::Paths(p) => print!("{}", control::format_paths(&p)),
        Response::Maps(m) => print!("{}", control::format_maps(&m)),
        Response::Config(c) => print!("{}", control::format_config(&c)),
        Response::Error { message } => bail!("{message}"),
    }
    Ok(())
}

fn check_config(file: &Path) -> Result<()> {
    match mpathd::config::check_file(file) {
        Ok(cfg) => {
            println!(
                "{}: OK ({} multipaths entries, find_multipaths {})",
                file.display(),
                cfg.multipaths.len(),
                cfg.defaults.find_multipaths.name()
            );
            Ok(())
        }
        Err(errors) => {
            println!("{errors}");
            bail!("{}: {} error(s)", file.display(), errors.0.len())
        }
    }
}

fn import(file: &Path, output: Option<&Path>) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let origin = file.display().to_string();
    let imported = match mpathd::config::multipath_conf::import(&text, &origin) {
        Ok(i) => i,
        Err(errors) => {
            eprintln!("{errors}");
            bail!(
                "{}: {} error(s); nothing imported",
                file.display(),
                errors.0.len()
            )
        }
    };
    for n in &imported.notes {
        eprintln!("{n}");
    }
    match output {
        None => print!("{}", imported.config_toml),
        Some(out) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .with_context(|| format!("creating {} (it must not exist yet)", out.display()))?;
            f.write_all(imported.config_toml.as_bytes())?;
            eprintln!(
                "wrote {} ({} setting(s) not carried over, listed above); check it with `mpathd check-config {}`",
                out.display(),
                imported.notes.len(),
                out.display()
            );
        }
    }
    Ok(())
}

fn scan(json: bool) -> Result<()> {
    let sysfs = Sysfs::default();
    let disks = sysfs.scsi_disks().context("scanning /sys/block")?;
    let mut out = Vec::new();
    for (wwid, paths) in group_by_wwid(&disks) {
        let first = paths[0];
        let mut ps = Vec::new();
        for p in &paths {
            let iscsi = sysfs.iscsi_path(&p.name).ok().flatten();
            ps.push(serde_json::json!({
                "name": p.name, "dev": p.dev.to_string(), "hctl": p.hctl, "state": p.state,
                "iscsi": iscsi.map(|i| serde_json::json!({
                    "session": i.session, "target": i.target, "portal": i.portal.to_string(),
                    "session_state": i.session_state, "recovery_tmo": i.recovery_tmo,
                    "conn": i.conn.map(|c| c.to_string()),
                })),
            }));
        }
        out.push(serde_json::json!({
            "wwid": wwid, "vendor": first.vendor, "model": first.model,
            "size_bytes": first.size_bytes, "paths": ps,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if out.is_empty() {
        println!("no SCSI disks with a WWID");
    }
    for lun in &out {
        println!(
            "{} {},{} size={}M",
            lun["wwid"].as_str().unwrap_or(""),
            lun["vendor"].as_str().unwrap_or(""),
            lun["model"].as_str().unwrap_or(""),
            lun["size_bytes"].as_u64().unwrap_or(0) >> 20
        );
        let paths = lun["paths"].as_array().cloned().unwrap_or_default();
        for (i, p) in paths.iter().enumerate() {
            let tree = if i + 1 == paths.len() { "`-" } else { "|-" };
            let iscsi = match &p["iscsi"] {
                serde_json::Value::Null => String::new(),
                v => format!(
                    " iscsi {} {} {} conn {}",
                    v["session"].as_str().unwrap_or(""),
                    v["portal"].as_str().unwrap_or(""),
                    v["session_state"].as_str().unwrap_or(""),
                    v["conn"].as_str().unwrap_or("none")
                ),
            };
            println!(
                "{tree} {} {} {} {}{iscsi}",
                p["hctl"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or(""),
                p["dev"].as_str().unwrap_or(""),
                p["state"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// A device named on the command line.
struct Target {
    name: String,
    dev: DevT,
    /// Its iSCSI connection, when it is an iSCSI disk with one.
    conn: Option<Conn>,
}

fn resolve(arg: &str) -> Result<Target> {
    if let Some((ma, mi)) = arg.split_once(':')
        && let (Ok(major), Ok(minor)) = (ma.parse(), mi.parse())
    {
        return Ok(Target {
            name: arg.to_owned(),
            dev: DevT::new(major, minor),
            conn: None,
        });
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let path = PathBuf::from(arg);
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("{arg}: not a device path or MAJOR:MINOR"))?;
    if !meta.file_type().is_block_device() {
        bail!("{arg} is not a block device");
    }
    let rdev = meta.rdev();
    let name = Path::new(arg)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| arg.to_owned());
    // The sysfs name is the node's name for sdX; anything else simply has no iSCSI side.
    let conn = Sysfs::default()
        .iscsi_path(&name)
        .ok()
        .flatten()
        .and_then(|p| p.conn);
    Ok(Target {
        name,
        dev: DevT::new(libc::major(rdev), libc::minor(rdev)),
        conn,
    })
}

fn probe(args: ProbeArgs) -> Result<()> {
    let mut targets: Vec<Target> = Vec::new();
    for d in &args.devices {
        let t = resolve(d)?;
        // The same device twice (a path and its MAJ:MIN) is watched once.
        if !targets.iter().any(|x| x.dev == t.dev) {
            targets.push(t);
        }
    }
    if args.scan_ms == 0 || args.scan_ms > 1000 {
        bail!(
            "--scan-ms must be 1 to 1000, not {}: the kernel keeps request ages for 1.07 s",
            args.scan_ms
        );
    }
    let thresholds = PathThresholds {
        latency_limit: Duration::from_millis(args.latency_limit_ms),
        slow_count: args.slow_count,
        slow_window: Duration::from_millis(args.slow_window_ms),
        stall_limit: Duration::from_millis(args.stall_ms),
        event_gap: Duration::from_millis(args.event_gap_ms),
    };
    let conn_thresholds = ConnThresholds {
        retrans_limit: args.retrans_limit,
        rtt_limit: Duration::from_millis(args.rtt_limit_ms),
        event_gap: Duration::from_millis(args.event_gap_ms),
    };
    let specs = |targets: &[Target]| -> Vec<WatchSpec> {
        targets
            .iter()
            .map(|t| WatchSpec {
                dev: t.dev,
                name: t.name.clone(),
                conn: t.conn,
                path: thresholds,
                tcp: conn_thresholds,
            })
            .collect()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let opts = WatcherOptions {
            portal_port: args.portal_port,
            scan_interval: Duration::from_millis(args.scan_ms),
            tcp: !args.no_tcp,
            variant: ProbeVariant::Auto,
            // Sized for exactly the devices given: kernel memory grows with it.
            max_paths: targets.len() as u32,
        };
        let (watcher, mut events) = Watcher::start(opts).context("loading the probes")?;
        let report = |failed: Vec<(DevT, EbpfError)>| -> Result<()> {
            for (dev, e) in failed {
                match e {
                    // The block device is watched; only its connection is not.
                    EbpfError::Conn { .. } => tracing::warn!(dev = %dev, "{e}"),
                    e => return Err(e).with_context(|| format!("watching {dev}")),
                }
            }
            Ok(())
        };
        report(watcher.set(specs(&targets)).await)?;
        let name_of = |targets: &[Target], dev: DevT| {
            targets
                .iter()
                .find(|t| t.dev == dev)
                .map_or_else(|| dev.to_string(), |t| t.name.clone())
        };
        // Several paths can share one connection (one session, several LUNs).
        let conn_name = |targets: &[Target], c: &Conn| {
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
        };
        // A session that reconnects gets a new TCP connection (a new local port); sysfs
        // says which, so it is re-read every second and the watch follows it.
        let mut relearn = tokio::time::interval(Duration::from_secs(1));
        let sysfs = Sysfs::default();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let stop = async {
            match args.duration {
                Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ProbeEvent::Path(ev)) => print_event(&ev, &name_of(&targets, ev.dev), args.json),
                    Some(ProbeEvent::Conn(ev)) => print_conn_event(&ev, &conn_name(&targets, &ev.conn), args.json),
                    None => bail!("the probes stopped"),
                },
                _ = relearn.tick(), if !args.no_tcp => {
                    let mut changed = false;
                    for t in targets.iter_mut() {
                        let now = sysfs.iscsi_path(&t.name).ok().flatten().and_then(|x| x.conn);
                        if now.is_some() && now != t.conn {
                            tracing::info!(device = %t.name, old = ?t.conn.map(|c| c.to_string()), new = ?now.map(|c| c.to_string()), "iSCSI connection changed; watching the new one");
                            t.conn = now;
                            changed = true;
                        }
                    }
                    if changed {
                        report(watcher.set(specs(&targets)).await)?;
                    }
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = &mut stop => break,
            }
        }
        for r in watcher.readings().await {
            let s = &r.block;
            let class = |c| s.errors_by_class(c);
            let summary = serde_json::json!({
                "summary": name_of(&targets, r.dev),
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
            });
            println!("{summary}");
        }
        let st = watcher.stats();
        tracing::debug!(
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

/// Wall-clock seconds of a CLOCK_MONOTONIC instant, so events line up with other logs.
fn wall_secs(mono_ns: u64) -> f64 {
    let now_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let age = monotonic_ns().saturating_sub(mono_ns) as f64 / 1e9;
    now_wall - age
}

fn print_conn_event(ev: &ConnEvent, name: &str, json: bool) {
    let wall = wall_secs(ev.at_ns);
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
    emit(
        wall,
        ev.at_ns,
        name,
        None,
        kind,
        ev.suppressed,
        detail,
        json,
    );
}

#[allow(clippy::too_many_arguments)]
fn emit(
    wall: f64,
    mono_ns: u64,
    name: &str,
    dev: Option<DevT>,
    kind: &str,
    suppressed: u32,
    detail: serde_json::Value,
    json: bool,
) {
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
        println!("{v}");
    } else {
        let dev = dev.map(|d| format!(" ({d})")).unwrap_or_default();
        let held = if suppressed > 0 {
            format!(" (+{suppressed} suppressed)")
        } else {
            String::new()
        };
        println!("{wall:.6} {name}{dev} {kind} {detail}{held}");
    }
}

fn print_event(ev: &PathEvent, name: &str, json: bool) {
    let wall = wall_secs(ev.at_ns);
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
    emit(
        wall,
        ev.at_ns,
        name,
        Some(ev.dev),
        kind,
        ev.suppressed,
        detail,
        json,
    );
}
