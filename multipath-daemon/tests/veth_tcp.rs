//! Host-kernel tests of the TCP probes over a veth pair into a network namespace the test
//! creates (root). Traffic never leaves that pair.

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use mpathd::ebpf::{Conn, ConnEvent, ConnEventKind, ConnThresholds, TcpEventStream, TcpProbes};
use support::need_root;

const PORTAL: u16 = 3260;

/// A namespace `ns` with a veth pair: `a` in the root namespace (198.18.N.1/30), `b` in
/// the namespace (198.18.N.2/30). RFC 2544 benchmark addresses, on a link of our own.
struct NetNs {
    name: String,
    our_if: String,
    peer_if: String,
    local: std::net::Ipv4Addr,
    remote: std::net::Ipv4Addr,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .status()
        .expect("running ip (iproute2)");
    assert!(st.success(), "ip {}", args.join(" "));
}

impl NetNs {
    fn new(n: u8) -> Self {
        let id = format!("{}{n}", std::process::id() % 100_000);
        let name = format!("mpt{id}");
        let (a, b) = (format!("mpa{id}"), format!("mpb{id}"));
        ip(&["netns", "add", &name]);
        let ns = Self {
            name: name.clone(),
            our_if: a.clone(),
            peer_if: b.clone(),
            local: std::net::Ipv4Addr::new(198, 18, n, 1),
            remote: std::net::Ipv4Addr::new(198, 18, n, 2),
        };
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &b, "netns", &name]);
        ip(&["addr", "add", &format!("{}/30", ns.local), "dev", &a]);
        ip(&["link", "set", &a, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/30", ns.remote),
            "dev",
            &b,
        ]);
        ip(&["-n", &name, "link", "set", &b, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// Silently drops everything on the link, as a dead switch port does: the peer's end
    /// goes down, ours stays up, so TCP only notices by retransmitting.
    fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.peer_if, "down"]);
    }

    /// A listener on `port` inside the namespace; each accepted connection is handed to
    /// `serve` on its own thread.
    fn listen(&self, port: u16, serve: fn(TcpStream)) {
        let path = format!("/run/netns/{}", self.name);
        let addr = SocketAddr::from((self.remote, port));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only; the fd is a network namespace.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let l = TcpListener::bind(addr).unwrap();
            tx.send(()).unwrap();
            for s in l.incoming().flatten() {
                std::thread::spawn(move || serve(s));
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("listener up");
    }

    fn connect(&self, port: u16) -> (TcpStream, Conn) {
        let s = TcpStream::connect_timeout(
            &SocketAddr::from((self.remote, port)),
            Duration::from_secs(5),
        )
        .unwrap();
        let conn = Conn {
            local: s.local_addr().unwrap(),
            remote: s.peer_addr().unwrap(),
        };
        (s, conn)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Our end first: the namespace lives on while sockets in it linger, and with it
        // the pair and its route, which would break the next run.
        let _ = Command::new("ip")
            .args(["link", "del", &self.our_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sink(mut s: TcpStream) {
    let mut buf = [0u8; 65536];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

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
    assert_eq!(probes.snapshot(other).unwrap().unwrap().retransmits, 0);
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
