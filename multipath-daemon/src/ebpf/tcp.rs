//! TCP probes for iSCSI connections: see a path's connection die before SCSI does.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, RingBuf},
};
use multipath_common::tcp::{
    ConnKey, ConnLimits, ConnState, SockBtfOffsets, TEV_RESET, TEV_RETRANS, TEV_RTT, TEV_STATE,
    TcpEvent, TcpTpOffsets,
};

use super::{
    Conn, EbpfError, EventRing, ProgramStats, TraceFormat, attach_btf, attach_tracepoint, take_map,
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/multipath-tcp"));

/// (category, tracepoint) of the classic programs, each named as its tracepoint; with
/// BTF, `tcp_probe` is `tcp_probe_btf` instead.
const PROGRAMS: [(&str, &str); 4] = [
    ("tcp", "tcp_retransmit_skb"),
    ("sock", "inet_sock_set_state"),
    ("tcp", "tcp_receive_reset"),
    ("tcp", "tcp_probe"),
];

/// Which `tcp_probe` program runs: it fires on every segment the host receives, so it is
/// the one whose cost counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpVariant {
    /// The BTF tracepoint when the kernel has BTF with the `struct sock` and `struct
    /// tcp_sock` members it reads, else `Tracepoint`.
    Auto,
    /// The classic tracepoint: the kernel builds its record, each field is a helper read.
    Tracepoint,
}

/// Offsets for `tcp_probe_btf` from the kernel's BTF; an error says why the classic
/// tracepoint is used instead.
fn sock_btf_offsets(portal_port: u16) -> Result<SockBtfOffsets, super::BtfError> {
    // Parsed again rather than kept from the block probes' load: ~30 ms on a host, and
    // the parsed types would stay in the daemon's memory for good.
    let btf = super::Btf::kernel()?;
    // struct sock's members live in its `__sk_common` (struct sock_common).
    let common = btf.member_offset("sock", "__sk_common")?;
    let c = |f: &str| btf.member_offset("sock_common", f).map(|o| common + o);
    Ok(SockBtfOffsets {
        dport: c("skc_dport")?,
        num: c("skc_num")?,
        family: c("skc_family")?,
        daddr: c("skc_daddr")?,
        rcv_saddr: c("skc_rcv_saddr")?,
        v6_daddr: c("skc_v6_daddr")?,
        v6_rcv_saddr: c("skc_v6_rcv_saddr")?,
        srtt_us: btf.member_offset("tcp_sock", "srtt_us")?,
        snd_una: btf.member_offset("tcp_sock", "snd_una")?,
        portal_port: u32::from(portal_port),
        valid: 1,
        _pad: 0,
    })
}

/// The default iSCSI portal port.
pub const ISCSI_PORT: u16 = 3260;

fn key(c: &Conn) -> ConnKey {
    ConnKey {
        laddr: v6(c.local.ip()).octets(),
        raddr: v6(c.remote.ip()).octets(),
        lport: c.local.port(),
        rport: c.remote.port(),
    }
}

fn conn_from_key(k: &ConnKey) -> Conn {
    let ip = |a: [u8; 16]| {
        let a = Ipv6Addr::from(a);
        a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
    };
    Conn {
        local: SocketAddr::new(ip(k.laddr), k.lport),
        remote: SocketAddr::new(ip(k.raddr), k.rport),
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// When a connection counts as dying. Zero disables a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnThresholds {
    /// Retransmissions in a row with no segment from the peer in between.
    pub retrans_limit: u32,
    /// Smoothed RTT above this.
    pub rtt_limit: Duration,
    /// Least gap between two events of one kind for one connection.
    pub event_gap: Duration,
}

impl Default for ConnThresholds {
    /// Three retransmissions in a row is about 200 ms + 400 ms + 800 ms of silence with the
    /// kernel's minimum RTO: well inside the seconds a NOP-out timeout takes.
    fn default() -> Self {
        Self {
            retrans_limit: 3,
            rtt_limit: Duration::from_millis(200),
            event_gap: Duration::from_millis(100),
        }
    }
}

/// Something a watched connection did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnEvent {
    pub conn: Conn,
    /// CLOCK_MONOTONIC, ns.
    pub at_ns: u64,
    pub kind: ConnEventKind,
    pub srtt: Duration,
    pub consecutive_retrans: u32,
    pub suppressed: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnEventKind {
    /// The peer reset the connection. `state` is the last TCP state the probes saw change
    /// to since the connection was watched, 0 if none.
    Reset { state: u32 },
    /// The connection left ESTABLISHED (kernel TCP state numbers).
    LeftEstablished { new_state: u32 },
    /// `retrans_limit` retransmissions in a row with nothing heard from the peer.
    Retransmits,
    /// Smoothed RTT above the limit.
    SlowRtt,
}

/// What the kernel keeps for a watched connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnSnapshot {
    pub retransmits: u64,
    pub consecutive_retrans: u32,
    pub resets: u64,
    pub srtt: Duration,
    /// Last TCP state seen (1 = ESTABLISHED), 0 if none since watched.
    pub last_state: u32,
    /// The peer's last cumulative ACK (snd_una) seen: a change between two readings is
    /// ACK progress, the transport alive however slow.
    pub snd_una: u32,
    /// When ACKs last moved snd_una (kernel clock), 0 if not seen since watched.
    pub last_ack_ns: u64,
    /// When a segment last arrived from the peer (kernel clock), 0 if none since watched.
    /// Stamped at once, while `last_ack_ns` lags by one segment (the tracepoint fires
    /// before the ACK is processed).
    pub last_rcv_ns: u64,
}

/// The TCP probes, loaded and attached. Dropping this detaches them.
pub struct TcpProbes {
    ebpf: Ebpf,
    /// The program attached to tcp_probe (`tcp_probe_btf` or `tcp_probe`).
    probe_program: &'static str,
    conns: HashMap<MapData, ConnKey, ConnState>,
    events: Option<RingBuf<MapData>>,
}

impl TcpProbes {
    /// Loads and attaches the probes; only connections to `portal_port` cost more than an
    /// early return.
    ///
    /// `tcp_probe` runs as a BTF tracepoint where the kernel allows it; if that program
    /// does not load (a verifier that refuses it), the classic one runs instead.
    pub fn load(portal_port: u16) -> Result<Self, EbpfError> {
        match Self::load_with(portal_port, TcpVariant::Auto) {
            Ok(p) => Ok(p),
            Err(e) => {
                let p = Self::load_with(portal_port, TcpVariant::Tracepoint)?;
                tracing::warn!(
                    "TCP probes: tcp_probe_btf did not load ({e}); the classic tcp_probe runs instead"
                );
                Ok(p)
            }
        }
    }

    /// As [`load`](Self::load), with the `tcp_probe` program of `variant`.
    pub fn load_with(portal_port: u16, variant: TcpVariant) -> Result<Self, EbpfError> {
        let btf = match variant {
            TcpVariant::Auto => match sock_btf_offsets(portal_port) {
                Ok(o) => Some(o),
                Err(e) => {
                    tracing::info!("TCP probes: using the classic tcp_probe tracepoint ({e})");
                    None
                }
            },
            TcpVariant::Tracepoint => None,
        };
        let rtx = TraceFormat::read("tcp", "tcp_retransmit_skb")?;
        let st = TraceFormat::read("sock", "inet_sock_set_state")?;
        let rst = TraceFormat::read("tcp", "tcp_receive_reset")?;
        let probe = TraceFormat::read("tcp", "tcp_probe")?;
        let quad = |f: &TraceFormat| -> Result<[u32; 4], EbpfError> {
            Ok([
                f.offset_in_span("sport", 2, 0, usize::MAX)?,
                f.offset_in_span("dport", 2, 0, usize::MAX)?,
                f.offset_in_span("saddr_v6", 16, 0, usize::MAX)?,
                f.offset_in_span("daddr_v6", 16, 0, usize::MAX)?,
            ])
        };
        let any =
            |f: &TraceFormat, name: &str, size: u32| f.offset_in_span(name, size, 0, usize::MAX);
        let offsets = TcpTpOffsets {
            rtx: quad(&rtx)?,
            state: quad(&st)?,
            state_protocol: any(&st, "protocol", 2)?,
            state_old: any(&st, "oldstate", 4)?,
            state_new: any(&st, "newstate", 4)?,
            rst: quad(&rst)?,
            // tcp_probe's addresses are sockaddrs: room for a sockaddr_in6 (28 bytes).
            probe: [
                any(&probe, "sport", 2)?,
                any(&probe, "dport", 2)?,
                any(&probe, "saddr", 24)?,
                any(&probe, "daddr", 24)?,
            ],
            probe_family: any(&probe, "family", 2)?,
            probe_srtt: any(&probe, "srtt", 4)?,
            probe_snd_una: any(&probe, "snd_una", 4)?,
            portal_port: u32::from(portal_port),
            valid: 1,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("TCP_TP_OFFSETS", &offsets, true)
            .override_global("SOCK_BTF_OFFSETS", &btf.unwrap_or_default(), true)
            .load(EBPF_OBJECT)
            .map_err(EbpfError::Load)?;
        let mut probe_program = "tcp_probe";
        for (category, name) in PROGRAMS {
            if name == "tcp_probe" && btf.is_some() {
                probe_program = "tcp_probe_btf";
                attach_btf(&mut ebpf, probe_program, name)?;
            } else {
                attach_tracepoint(&mut ebpf, name, category, name)?;
            }
        }
        Ok(Self {
            probe_program,
            conns: take_map(&mut ebpf, "CONNS", HashMap::try_from)?,
            events: Some(take_map(&mut ebpf, "TCP_EVENTS", RingBuf::try_from)?),
            ebpf,
        })
    }

    /// The program on tcp_probe: `tcp_probe_btf` (BTF tracepoint) or `tcp_probe`
    /// (classic).
    pub fn probe_program(&self) -> &'static str {
        self.probe_program
    }

    /// Run count and total run time of each program (zero unless
    /// [`enable_run_stats`](super::enable_run_stats) is in force).
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, EbpfError> {
        let programs: Vec<(&'static str, &'static str)> = PROGRAMS
            .iter()
            .map(|&(_, name)| match name {
                "tcp_probe" => (name, self.probe_program),
                _ => (name, name),
            })
            .collect();
        super::program_stats(&self.ebpf, &programs)
    }

    /// Starts watching `conn` (its counters from zero) or updates its thresholds.
    pub fn watch(&mut self, conn: Conn, t: ConnThresholds) -> Result<(), EbpfError> {
        let key = key(&conn);
        let limits = ConnLimits {
            retrans_limit: t.retrans_limit,
            rtt_limit_us: t.rtt_limit.as_micros().min(u32::MAX as u128) as u32,
            event_gap_ns: t.event_gap.as_nanos() as u64,
        };
        let state = match self.conns.get(&key, 0) {
            Ok(mut s) => {
                s.limits = limits;
                s
            }
            Err(_) => ConnState {
                limits,
                ..Default::default()
            },
        };
        self.conns
            .insert(key, state, 0)
            .map_err(|source| EbpfError::Map {
                map: "CONNS",
                source,
            })
    }

    /// Stops watching `conn`; unknown connections are ignored. Call it when a session
    /// reconnects (new local port) and watch the new connection.
    pub fn unwatch(&mut self, conn: Conn) -> Result<(), EbpfError> {
        match self.conns.remove(&key(&conn)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(EbpfError::Map {
                map: "CONNS",
                source,
            }),
        }
    }

    pub fn snapshot(&self, conn: Conn) -> Result<Option<ConnSnapshot>, EbpfError> {
        match self.conns.get(&key(&conn), 0) {
            Ok(s) => Ok(Some(ConnSnapshot {
                retransmits: s.retransmits,
                consecutive_retrans: s.consecutive_retrans,
                resets: s.resets,
                srtt: Duration::from_micros(u64::from(s.srtt_us)),
                last_state: s.last_state,
                snd_una: s.last_snd_una,
                last_ack_ns: s.last_ack_ns,
                last_rcv_ns: s.last_rcv_ns,
            })),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(EbpfError::Map {
                map: "CONNS",
                source,
            }),
        }
    }

    /// Takes the kernel's event stream (once); read it from a tokio task.
    pub fn take_events(&mut self) -> Result<TcpEventStream, EbpfError> {
        let ring = self.events.take().ok_or(EbpfError::Missing {
            kind: "event stream (already taken)",
            name: "TCP_EVENTS",
        })?;
        Ok(TcpEventStream {
            ring: EventRing::new(ring, decode)?,
        })
    }
}

/// The kernel's TCP events, read asynchronously.
pub struct TcpEventStream {
    ring: EventRing<ConnEvent>,
}

impl TcpEventStream {
    /// Waits for events and appends every one ready to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<ConnEvent>) -> Result<(), EbpfError> {
        self.ring.next_batch(out).await
    }
}

fn decode(bytes: &[u8]) -> Option<ConnEvent> {
    if bytes.len() < std::mem::size_of::<TcpEvent>() {
        return None;
    }
    // SAFETY: length checked; TcpEvent is plain integers; the ring does not align it.
    let e: TcpEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = match e.kind {
        TEV_RESET => ConnEventKind::Reset { state: e.old_state },
        TEV_STATE => ConnEventKind::LeftEstablished {
            new_state: e.new_state,
        },
        TEV_RETRANS => ConnEventKind::Retransmits,
        TEV_RTT => ConnEventKind::SlowRtt,
        _ => return None,
    };
    Some(ConnEvent {
        conn: conn_from_key(&e.key),
        at_ns: e.ts_ns,
        kind,
        srtt: Duration::from_micros(u64::from(e.srtt_us)),
        consecutive_retrans: e.consecutive_retrans,
        suppressed: e.suppressed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_keys_round_trip_v4_and_v6() {
        for (l, r) in [
            ("10.99.1.1:40000", "10.99.1.2:3260"),
            ("[fd00::1]:40000", "[fd00::2]:3260"),
        ] {
            let c = Conn {
                local: l.parse().unwrap(),
                remote: r.parse().unwrap(),
            };
            assert_eq!(conn_from_key(&key(&c)), c);
        }
        let k = key(&Conn {
            local: "10.0.0.1:1".parse().unwrap(),
            remote: "10.0.0.2:3260".parse().unwrap(),
        });
        // IPv4 is stored mapped, as the tracepoints' *_v6 fields carry it.
        assert_eq!(&k.laddr[10..], &[0xff, 0xff, 10, 0, 0, 1]);
    }
}
