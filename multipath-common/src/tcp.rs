//! TCP probes: the iSCSI connections watched, what is kept per connection, and the events
//! the kernel sends when a connection looks dead.

/// Most connections watched at once.
pub const MAX_CONNS: u32 = 1024;

/// A connection as seen from the initiator: local (initiator) and remote (portal) address
/// and port. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`), as the tracepoints'
/// `saddr_v6`/`daddr_v6` fields carry them; ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub lport: u16,
    pub rport: u16,
}

/// Tracepoint field offsets, read by the daemon from tracefs at start-up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpTpOffsets {
    /// tcp:tcp_retransmit_skb: sport, dport, saddr_v6, daddr_v6.
    pub rtx: [u32; 4],
    /// sock:inet_sock_set_state: sport, dport, saddr_v6, daddr_v6, then protocol,
    /// oldstate, newstate.
    pub state: [u32; 4],
    pub state_protocol: u32,
    pub state_old: u32,
    pub state_new: u32,
    /// tcp:tcp_receive_reset: sport, dport, saddr_v6, daddr_v6.
    pub rst: [u32; 4],
    /// tcp:tcp_probe: sport, dport, saddr (sockaddr), daddr (sockaddr), then family,
    /// srtt (us), snd_una.
    pub probe: [u32; 4],
    pub probe_family: u32,
    pub probe_srtt: u32,
    pub probe_snd_una: u32,
    /// The portal port: connections to any other remote port return at once.
    pub portal_port: u32,
    /// 1 once filled in.
    pub valid: u32,
}

/// Byte offsets in kernel structures for the `tp_btf/tcp_probe` program, from the running
/// kernel's BTF. The program reads `struct sock` directly and the two `struct tcp_sock`
/// fields (past the end of `struct sock`) with a helper call, only for a watched port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockBtfOffsets {
    /// struct sock (its `__sk_common`): skc_dport (network order), skc_num (host order),
    /// skc_family, skc_daddr and skc_rcv_saddr (IPv4), skc_v6_daddr and
    /// skc_v6_rcv_saddr (IPv6).
    pub dport: u32,
    pub num: u32,
    pub family: u32,
    pub daddr: u32,
    pub rcv_saddr: u32,
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
    /// struct tcp_sock: srtt_us (smoothed RTT in us, shifted left by 3) and snd_una.
    pub srtt_us: u32,
    pub snd_una: u32,
    /// The portal port: connections to any other remote port return at once.
    pub portal_port: u32,
    /// 1 once filled in.
    pub valid: u32,
    pub _pad: u32,
}

/// Thresholds per connection, set by the daemon. Zero disables a rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnLimits {
    /// Retransmissions in a row, with no new data acknowledged, that make an event.
    pub retrans_limit: u32,
    /// Smoothed RTT (us) above which an event is sent.
    pub rtt_limit_us: u32,
    /// Least gap between two events of one kind for one connection.
    pub event_gap_ns: u64,
}

/// What the kernel keeps per watched connection (the value of the watch map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    pub limits: ConnLimits,
    pub retransmits: u64,
    pub resets: u64,
    /// Retransmissions since a segment last arrived from the peer.
    pub consecutive_retrans: u32,
    pub srtt_us: u32,
    pub last_snd_una: u32,
    /// Last TCP state seen (TCP_ESTABLISHED = 1 ... ), 0 if none yet.
    pub last_state: u32,
    /// When snd_una last moved (kernel clock): the last ACK progress, 0 if none seen.
    pub last_ack_ns: u64,
    /// When a segment last arrived from the peer (kernel clock), 0 if none seen. The
    /// tcp_probe tracepoint fires before the segment's ACK is processed, so `last_ack_ns`
    /// shows an ACK only when the next segment arrives; this one is stamped at once.
    pub last_rcv_ns: u64,
    /// Per event kind (index = kind - 1): last sent, and held back since.
    pub last_event_ns: [u64; TCP_EVENT_KINDS],
    pub suppressed: [u32; TCP_EVENT_KINDS],
}

pub const TCP_EVENT_KINDS: usize = 4;
/// The peer reset the connection.
pub const TEV_RESET: u32 = 1;
/// The connection left ESTABLISHED.
pub const TEV_STATE: u32 = 2;
/// `retrans_limit` retransmissions in a row with nothing heard from the peer in between.
pub const TEV_RETRANS: u32 = 3;
/// Smoothed RTT above `rtt_limit_us`.
pub const TEV_RTT: u32 = 4;

pub const TCP_ESTABLISHED: u32 = 1;

/// The ring-buffer event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpEvent {
    pub ts_ns: u64,
    pub key: ConnKey,
    pub kind: u32,
    pub old_state: u32,
    pub new_state: u32,
    pub consecutive_retrans: u32,
    pub srtt_us: u32,
    pub suppressed: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers and arrays of them, no implicit padding (tests below).
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::TcpTpOffsets {}
    unsafe impl aya::Pod for super::SockBtfOffsets {}
    unsafe impl aya::Pod for super::ConnLimits {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::TcpEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn no_implicit_padding() {
        assert_eq!(size_of::<ConnKey>(), 36);
        assert_eq!(size_of::<TcpTpOffsets>(), 4 * 24);
        assert_eq!(size_of::<SockBtfOffsets>(), 4 * 12);
        assert_eq!(size_of::<ConnLimits>(), 16);
        assert_eq!(size_of::<ConnState>(), 16 + 16 + 16 + 8 + 8 + 8 * 4 + 4 * 4);
        assert_eq!(size_of::<TcpEvent>(), 8 + 36 + 7 * 4);
    }
}
