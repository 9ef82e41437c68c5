//! `cargo xtask bench tcp` (host part): what the TCP probes cost per event, on traffic they
//! skip (another port) and on a watched iSCSI-port connection, from the kernel's BPF
//! run-time statistics. Bulk TCP over a veth pair into a namespace the bench creates.
//! `cargo xtask bench tcp` then adds the lab part (fault to event on real iSCSI paths).
//!
//! Writes JSON to the path after `--out`. Needs root.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use mpathd::ebpf::{ConnThresholds, ProgramStats, TcpProbes, TcpVariant};
use serde_json::json;
use support::{NetNs, sink};

const PORTAL: u16 = 3260;
const OTHER: u16 = 5001;
const BYTES: usize = 256 << 20;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut out = PathBuf::from("target/bench/tcp-host.json");
    while let Some(a) = args.next() {
        if a == "--out"
            && let Some(p) = args.next()
        {
            out = PathBuf::from(p);
        }
    }
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench tcp needs root (eBPF, network namespaces)");
        std::process::exit(2);
    }
    let ns = NetNs::new(7);
    ns.listen(PORTAL, sink);
    ns.listen(OTHER, sink);
    let _stats = mpathd::ebpf::enable_run_stats().expect("enabling BPF run-time stats");
    // The default (BTF tcp_probe where the kernel allows it), then the classic tracepoint,
    // one after the other in the same run.
    let mut variants = serde_json::Map::new();
    let mut default = None;
    for variant in [TcpVariant::Auto, TcpVariant::Tracepoint] {
        let mut probes = TcpProbes::load_with(PORTAL, variant).expect("loading the TCP probes");
        let program = probes.probe_program();
        if variants.contains_key(program) {
            continue; // Auto fell back to the classic program
        }
        let unwatched = measure(&mut probes, &ns, OTHER, false);
        let watched = measure(&mut probes, &ns, PORTAL, true);
        default.get_or_insert((unwatched.clone(), watched.clone()));
        variants.insert(
            program.to_owned(),
            json!({"unwatched_port": unwatched, "watched_portal_connection": watched}),
        );
    }
    let (unwatched, watched) = default.expect("the default variant ran");
    let result = json!({
        "bench": "tcp",
        "part": "host",
        "traffic": format!("{} MiB bulk TCP over a veth pair into a namespace, 64 KiB writes", BYTES >> 20),
        "note": "ns per program invocation as the kernel's BPF stats count it; every TCP event \
                 of the machine runs the programs, both ends of the connection included",
        "unwatched_port": unwatched,
        "watched_portal_connection": watched,
        "by_tcp_probe_program": variants,
    });
    drop(ns);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let text = serde_json::to_string_pretty(&result).unwrap();
    std::fs::write(&out, text.clone() + "\n").unwrap();
    println!("{text}");
    eprintln!("wrote {}", out.display());
}

fn measure(probes: &mut TcpProbes, ns: &NetNs, port: u16, watch: bool) -> serde_json::Value {
    let (mut s, conn) = ns.connect(port);
    if watch {
        let quiet = ConnThresholds {
            retrans_limit: 0,
            rtt_limit: Duration::ZERO,
            event_gap: Duration::ZERO,
        };
        probes.watch(conn, quiet).unwrap();
    }
    let before = probes.program_stats().unwrap();
    let buf = vec![0u8; 64 << 10];
    let t = Instant::now();
    let mut sent = 0;
    while sent < BYTES {
        s.write_all(&buf).unwrap();
        sent += buf.len();
    }
    drop(s);
    let secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let after = probes.program_stats().unwrap();
    let mut per = serde_json::Map::new();
    let (mut runs, mut time) = (0u64, 0u64);
    for a in &after {
        let b: &ProgramStats = before.iter().find(|b| b.program == a.program).unwrap();
        let n = a.run_count - b.run_count;
        let t = a.run_time_ns - b.run_time_ns;
        runs += n;
        time += t;
        per.insert(
            a.program.to_owned(),
            json!({"runs": n, "ns_per_run": if n == 0 { 0.0 } else { t as f64 / n as f64 }}),
        );
    }
    json!({
        "port": port,
        "conn": conn.to_string(),
        "seconds": secs,
        "programs": per,
        "ns_per_event_all_programs": if runs == 0 { 0.0 } else { time as f64 / runs as f64 },
    })
}
