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
    ebpf::{ConnThresholds, PathThresholds},
    probe,
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

/// A command-line number of seconds, as a duration; `what` names the option.
fn positive_secs(v: f64, what: &str) -> Result<Duration> {
    // Duration::from_secs_f64 panics on a negative, infinite or too large value.
    if v.is_finite() && v > 0.0 && v <= u32::MAX as f64 {
        Ok(Duration::from_secs_f64(v))
    } else {
        bail!("--{what} must be a positive number of seconds, not {v}")
    }
}

fn daemon(a: DaemonArgs, socket: Option<PathBuf>) -> Result<()> {
    // No transparent huge pages for a long-running daemon with a small working set: the
    // lab measured 40 of its 62 MiB resident as huge pages that its allocations only
    // partly use. Best effort: an old kernel without the option changes nothing else.
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let secs = positive_secs;
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

fn probe(args: ProbeArgs) -> Result<()> {
    let duration = args
        .duration
        .map(|v| positive_secs(v, "duration"))
        .transpose()?;
    let sysfs = Sysfs::default();
    let targets = probe::resolve_all(&args.devices, &sysfs)?;
    if args.scan_ms == 0 || args.scan_ms > 1000 {
        bail!(
            "--scan-ms must be 1 to 1000, not {}: the kernel keeps request ages for 1.07 s",
            args.scan_ms
        );
    }
    let opts = probe::Options {
        json: args.json,
        path: PathThresholds {
            latency_limit: Duration::from_millis(args.latency_limit_ms),
            slow_count: args.slow_count,
            slow_window: Duration::from_millis(args.slow_window_ms),
            stall_limit: Duration::from_millis(args.stall_ms),
            event_gap: Duration::from_millis(args.event_gap_ms),
        },
        tcp: ConnThresholds {
            retrans_limit: args.retrans_limit,
            rtt_limit: Duration::from_millis(args.rtt_limit_ms),
            event_gap: Duration::from_millis(args.event_gap_ms),
        },
        portal_port: args.portal_port,
        scan_interval: Duration::from_millis(args.scan_ms),
        watch_tcp: !args.no_tcp,
        duration,
    };
    probe::run(targets, sysfs, opts)
}
