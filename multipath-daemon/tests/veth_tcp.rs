//! Host-kernel tests of the TCP probes over a veth pair into a network namespace the test
//! creates (root). Traffic never leaves that pair.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use mpathd::ebpf::{
    ConnEvent, ConnEventKind, ConnThresholds, PathThresholds, ProbeEvent, TcpEventStream,
    TcpProbes, TcpVariant, WatchSpec, Watcher, WatcherOptions,
};
use support::{LoopDev, NetNs, need_root, sink};

const PORTAL: u16 = 3260;

fn reset_after_hello(mut s: TcpStream) {
    let mut buf = [0u8; 5];
    let _ = s.read_exact(&mut buf);
    // SO_LINGER 0: close sends a RST instead of a FIN.
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
}

fn collect(
    rt: &tokio::runtime::Runtime,
    events: &mut TcpEventStream,
    wait: Duration,
    until: impl Fn(&[ConnEvent]) -> bool,
) -> Vec<ConnEvent> {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    rt.block_on(async {
        while !until(&out) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = tokio::time::timeout(left, events.next_batch(&mut out)).await;
        }
    });
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn veth_cut_link_sends_retransmit_events_for_the_watched_connection_only() {
    if need_root("veth_cut_link_sends_retransmit_events_for_the_watched_connection_only") {
        return;
    }
    let ns = NetNs::new(1);
    ns.listen(PORTAL, sink);
    ns.listen(PORTAL + 1, sink);
    let mut probes = TcpProbes::load(PORTAL).unwrap_or_else(|e| panic!("{e}"));
    let rt = runtime();
    let mut events = rt.block_on(async { probes.take_events() }).unwrap();

    let (mut watched, conn) = ns.connect(PORTAL);
    let (mut same_port_unwatched, _) = ns.connect(PORTAL);
    let (mut other_port, other) = ns.connect(PORTAL + 1);
    let t = ConnThresholds {
        retrans_limit: 2,
        rtt_limit: Duration::ZERO,
        event_gap: Duration::from_secs(60),
    };
    probes.watch(conn, t).unwrap();
    probes.watch(other, t).unwrap(); // watched, but not to the portal port
    for s in [&mut watched, &mut same_port_unwatched, &mut other_port] {
        s.write_all(b"hello").unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let healthy = probes.snapshot(conn).unwrap().unwrap();
    assert_eq!(healthy.retransmits, 0, "{healthy:?}");
    // Set by tcp_probe from the ACK of "hello".
    assert!(!healthy.srtt.is_zero(), "{healthy:?}");
    // ...and the time of that ACK progress (the kernel's clock).
    assert!(
        healthy.last_ack_ns > 0 && healthy.last_ack_ns <= mpathd::ebpf::monotonic_ns(),
        "{healthy:?}"
    );
    // A segment arrived from the peer: stamped at once, never before the ACK's progress
    // (that shows only when the next segment arrives).
    assert!(
        healthy.last_rcv_ns >= healthy.last_ack_ns
            && healthy.last_rcv_ns <= mpathd::ebpf::monotonic_ns(),
        "{healthy:?}"
    );

    let cut_ns = mpathd::ebpf::monotonic_ns();
    ns.cut();
    let cut_at = Instant::now();
    for s in [&mut watched, &mut same_port_unwatched, &mut other_port] {
        s.write_all(&[0u8; 1000]).unwrap();
    }
    let got = collect(&rt, &mut events, Duration::from_secs(5), |e| !e.is_empty());
    let took = cut_at.elapsed();
    assert!(!got.is_empty(), "no event within 5 s of the cut");
    assert!(
        got.iter()
            .all(|e| e.conn == conn && e.kind == ConnEventKind::Retransmits),
        "only the watched portal connection: {got:?}"
    );
    assert!(got[0].consecutive_retrans >= 2, "{got:?}");
    eprintln!(
        "first retransmit event {took:?} after the cut: {:?}",
        got[0]
    );
    // Held back by the 60 s gap, nothing else arrives; the counters still count.
    let more = collect(&rt, &mut events, Duration::from_millis(1500), |e| {
        !e.is_empty()
    });
    assert!(more.iter().all(|e| e.conn == conn), "{more:?}");
    let s = probes.snapshot(conn).unwrap().unwrap();
    assert!(s.retransmits >= 3 && s.consecutive_retrans >= 3, "{s:?}");
    // No ACK has moved snd_una since the cut.
    assert!(s.last_ack_ns < cut_ns, "{s:?} (cut at {cut_ns})");
    // ...and nothing arrived from the peer either.
    assert!(s.last_rcv_ns < cut_ns, "{s:?} (cut at {cut_ns})");
    assert_eq!(probes.snapshot(other).unwrap().unwrap().retransmits, 0);
}

/// The BTF tcp_probe reads the socket itself, the classic one the kernel's record: both
/// loaded at once, watching one connection, they must keep the same values.
#[test]
fn veth_btf_and_classic_tcp_probe_agree() {
    if need_root("veth_btf_and_classic_tcp_probe_agree") {
        return;
    }
    let ns = NetNs::new(4);
    ns.listen(PORTAL, sink);
    let mut btf = TcpProbes::load_with(PORTAL, TcpVariant::Auto).unwrap_or_else(|e| panic!("{e}"));
    if btf.probe_program() != "tcp_probe_btf" {
        eprintln!("skipped: this kernel's BTF does not serve tcp_probe_btf (see the log)");
        return;
    }
    let mut classic =
        TcpProbes::load_with(PORTAL, TcpVariant::Tracepoint).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(classic.probe_program(), "tcp_probe");
    let (mut s, conn) = ns.connect(PORTAL);
    let t = ConnThresholds::default();
    btf.watch(conn, t).unwrap();
    classic.watch(conn, t).unwrap();
    for _ in 0..20 {
        s.write_all(&[7u8; 3000]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    let (a, b) = (
        btf.snapshot(conn).unwrap().unwrap(),
        classic.snapshot(conn).unwrap().unwrap(),
    );
    assert!(
        a.snd_una != 0 && a.last_ack_ns > 0 && a.last_rcv_ns > 0,
        "{a:?}"
    );
    // The same segments, read two ways: the same snd_una and smoothed RTT (in us).
    assert_eq!(a.snd_una, b.snd_una, "btf {a:?}\nclassic {b:?}");
    assert_eq!(a.srtt, b.srtt, "btf {a:?}\nclassic {b:?}");
    assert!(
        !a.srtt.is_zero() && a.srtt < Duration::from_millis(100),
        "{a:?}"
    );
    let tolerance = 50_000_000; // 50 ms between the two programs' clock reads, at most
    assert!(
        a.last_rcv_ns.abs_diff(b.last_rcv_ns) < tolerance,
        "btf {a:?}\nclassic {b:?}"
    );
}

#[test]
fn veth_peer_reset_sends_reset_and_state_events() {
    if need_root("veth_peer_reset_sends_reset_and_state_events") {
        return;
    }
    let ns = NetNs::new(2);
    ns.listen(PORTAL, reset_after_hello);
    let mut probes = TcpProbes::load(PORTAL).unwrap_or_else(|e| panic!("{e}"));
    let rt = runtime();
    let mut events = rt.block_on(async { probes.take_events() }).unwrap();
    let (mut s, conn) = ns.connect(PORTAL);
    probes.watch(conn, ConnThresholds::default()).unwrap();
    s.write_all(b"hello").unwrap();
    let got = collect(&rt, &mut events, Duration::from_secs(5), |e| {
        e.iter()
            .any(|e| matches!(e.kind, ConnEventKind::Reset { .. }))
            && e.iter()
                .any(|e| matches!(e.kind, ConnEventKind::LeftEstablished { .. }))
    });
    assert!(got.iter().all(|e| e.conn == conn), "{got:?}");
    // Watched after it was established, so no state change was seen before the reset.
    assert!(
        got.iter()
            .any(|e| e.kind == ConnEventKind::Reset { state: 0 }),
        "{got:?}"
    );
    // TCP_CLOSE = 7
    assert!(
        got.iter()
            .any(|e| e.kind == ConnEventKind::LeftEstablished { new_state: 7 }),
        "{got:?}"
    );
    assert_eq!(probes.snapshot(conn).unwrap().unwrap().resets, 1);
}

/// The watcher follows a path's connection: after a re-login (a new connection for the
/// same path) set() moves the watch, so only the new connection's events come through,
/// and two paths on one connection (one session, two LUNs) watch it once.
#[test]
fn veth_watcher_follows_a_paths_new_connection() {
    if need_root("veth_watcher_follows_a_paths_new_connection") {
        return;
    }
    let ns = NetNs::new(3);
    ns.listen(PORTAL, reset_after_hello);
    let a = LoopDev::new("conn-a", 16);
    let b = LoopDev::new("conn-b", 16);
    let rt = runtime();
    rt.block_on(async {
        let opts = WatcherOptions {
            portal_port: PORTAL,
            max_paths: 2,
            ..Default::default()
        };
        let (w, mut events) = Watcher::start(opts).unwrap_or_else(|e| panic!("{e}"));
        let (mut old_sock, old) = ns.connect(PORTAL);
        let (mut new_sock, new) = ns.connect(PORTAL);
        let spec = |dev, name: &str, conn| WatchSpec {
            dev,
            name: name.to_owned(),
            conn: Some(conn),
            path: PathThresholds::default(),
            tcp: ConnThresholds::default(),
        };
        assert!(w.set(vec![spec(a.dev, "a", old)]).await.is_empty());
        let r = w.readings().await;
        assert_eq!(r[0].conn.map(|(c, _)| c), Some(old), "{r:?}");

        // Re-login: same path, new connection; a second path shares it.
        assert!(
            w.set(vec![spec(a.dev, "a", new), spec(b.dev, "b", new)])
                .await
                .is_empty()
        );
        let r = w.readings().await;
        assert_eq!(r.len(), 2);
        assert!(
            r.iter().all(|r| r.conn.map(|(c, _)| c) == Some(new)),
            "{r:?}"
        );

        // The old connection is no longer watched: its reset sends nothing; the new
        // one's does, once, though two paths use it.
        old_sock.write_all(b"hello").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        new_sock.write_all(b"hello").unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left.min(Duration::from_millis(500)), events.recv()).await {
                Ok(Some(ProbeEvent::Conn(e))) => got.push(e),
                Ok(Some(ev)) => panic!("unexpected {ev:?}"),
                Ok(None) => break,
                Err(_) if !got.is_empty() => break,
                Err(_) => {}
            }
        }
        assert!(got.iter().all(|e| e.conn == new), "{got:?}");
        let resets = got
            .iter()
            .filter(|e| matches!(e.kind, ConnEventKind::Reset { .. }))
            .count();
        assert_eq!(resets, 1, "{got:?}");
        let r = w.readings().await;
        assert!(
            r.iter().all(|r| r.conn.map(|(_, s)| s.resets) == Some(1)),
            "{r:?}"
        );

        // Paths gone, connection gone.
        assert!(w.set(Vec::new()).await.is_empty());
        assert!(w.readings().await.is_empty());
    });
}
