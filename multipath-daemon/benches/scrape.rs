//! `cargo xtask bench scrape`: what one Prometheus scrape of a host with 1024 paths costs.
//!
//! - render: the text of a 1024-path snapshot (every path probed, iSCSI, with TCP
//!   counters; every loop counter and histogram filled), median and p99 of many renders;
//! - copy: cloning that snapshot (what the daemon's loop does for a scrape, at most);
//! - http: a full `GET /metrics` over loopback against the real server (snapshot, render
//!   on a blocking thread, response), median and p99.
//!
//! Writes JSON to the path after `--out`. The target is a scrape under 50 ms.

use std::{
    io::{Read, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use mpathd::metrics::{Server, render, synthetic};
use serde_json::json;

const PATHS: usize = 1024;
const RENDERS: usize = 200;
const SCRAPES: usize = 100;
const TARGET_MS: f64 = 50.0;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut out = None;
    while let Some(a) = args.next() {
        if a == "--out" {
            out = args.next().map(PathBuf::from);
        }
    }
    let out = out.unwrap_or_else(|| PathBuf::from("target/bench/scrape.json"));
    let snap = synthetic(PATHS);

    let mut copy = Vec::with_capacity(RENDERS);
    let mut renders = Vec::with_capacity(RENDERS);
    let mut bytes = 0;
    let mut lines = 0;
    for _ in 0..RENDERS {
        let t = Instant::now();
        let s = snap.clone();
        copy.push(t.elapsed());
        let t = Instant::now();
        let text = render(s);
        renders.push(t.elapsed());
        bytes = text.len();
        lines = text.lines().filter(|l| !l.starts_with('#')).count();
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let server = Server::bind("127.0.0.1:0".parse().unwrap()).expect("binding loopback");
    let addr = server.local_addr();
    let served = snap.clone();
    let _guard = rt.enter();
    let task = rt.spawn(server.run(move || {
        let s = served.clone();
        Box::pin(async move { Some(s) })
    }));
    let http = rt.block_on(async move {
        tokio::task::spawn_blocking(move || {
            let mut times = Vec::with_capacity(SCRAPES);
            for _ in 0..SCRAPES {
                let t = Instant::now();
                let mut c = std::net::TcpStream::connect(addr).expect("connecting to the server");
                write!(
                    c,
                    "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut body = Vec::with_capacity(bytes + 4096);
                c.read_to_end(&mut body).unwrap();
                assert!(body.starts_with(b"HTTP/1.1 200"), "the scrape failed");
                times.push(t.elapsed());
            }
            times
        })
        .await
        .expect("the scrape loop")
    });
    task.abort();

    let render_ms = stats(&mut renders);
    let http_ms = stats(&mut http.clone());
    let result = json!({
        "paths": PATHS,
        "series": lines,
        "bytes": bytes,
        "render_ms": render_ms,
        "snapshot_copy_ms": stats(&mut copy),
        "http_scrape_ms": http_ms,
        "target_ms": TARGET_MS,
        "render_p99_within_target": render_ms["p99"].as_f64().unwrap() < TARGET_MS,
        "http_p99_within_target": http_ms["p99"].as_f64().unwrap() < TARGET_MS,
        "load_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let text = serde_json::to_string_pretty(&result).unwrap() + "\n";
    std::fs::write(&out, &text).unwrap();
    print!("{text}");
    eprintln!("wrote {}", out.display());
}

/// Median, p99 and max in milliseconds.
fn stats(xs: &mut [Duration]) -> serde_json::Value {
    xs.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let at = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
    json!({ "median": ms(at(0.5)), "p99": ms(at(0.99)), "max": ms(xs[xs.len() - 1]), "n": xs.len() })
}
