//! TCP fast path for iSCSI connections: retransmissions, resets, state changes and RTT of
//! the watched connections, with in-kernel rules.
//!
//! Every TCP event of the machine runs these; anything not to the portal port returns
//! after one field read.
//!
//! `tcp_probe` fires on every segment received, so it comes twice: as a BTF tracepoint
//! (no record built, plain loads from `struct sock`), used when the kernel has BTF, and
//! as the classic tracepoint otherwise.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use multipath_common::tcp::{
    ConnKey, ConnState, MAX_CONNS, SockBtfOffsets, TCP_ESTABLISHED, TEV_RESET, TEV_RETRANS,
    TEV_RTT, TEV_STATE, TcpEvent, TcpTpOffsets,
};

/// Tracepoint field offsets and the portal port, written by the daemon at load time.
#[unsafe(no_mangle)]
static TCP_TP_OFFSETS: TcpTpOffsets = TcpTpOffsets {
    rtx: [0; 4],
    state: [0; 4],
    state_protocol: 0,
    state_old: 0,
    state_new: 0,
    rst: [0; 4],
    probe: [0; 4],
    probe_family: 0,
    probe_srtt: 0,
    probe_snd_una: 0,
    portal_port: 0,
    valid: 0,
};

/// Offsets in struct sock and tcp_sock for `tcp_probe_btf`, written by the daemon at load
/// time.
#[unsafe(no_mangle)]
static SOCK_BTF_OFFSETS: SockBtfOffsets = SockBtfOffsets {
    dport: 0,
    num: 0,
    family: 0,
    daddr: 0,
    rcv_saddr: 0,
    v6_daddr: 0,
    v6_rcv_saddr: 0,
    srtt_us: 0,
    snd_una: 0,
    portal_port: 0,
    valid: 0,
    _pad: 0,
};

/// Watched connections and their state; the daemon inserts and removes entries.
#[map]
static CONNS: HashMap<ConnKey, ConnState> = HashMap::with_max_entries(MAX_CONNS, 0);

#[map]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

#[inline(always)]
fn offsets() -> TcpTpOffsets {
    // Volatile: rewritten by the loader after compilation.
    unsafe { core::ptr::read_volatile(&TCP_TP_OFFSETS) }
}

#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: u32) -> Result<T, u32> {
    unsafe { ctx.read_at::<T>(offset as usize) }.map_err(|_| 1u32)
}

/// The connection named by the (sport, dport, saddr_v6, daddr_v6) fields at `f`, if its
/// remote port is the portal's.
#[inline(always)]
fn key_v6(ctx: &TracePointContext, f: &[u32; 4], portal: u32) -> Result<Option<ConnKey>, u32> {
    let rport: u16 = read(ctx, f[1])?;
    if u32::from(rport) != portal {
        return Ok(None);
    }
    Ok(Some(ConnKey {
        lport: read(ctx, f[0])?,
        rport,
        laddr: read(ctx, f[2])?,
        raddr: read(ctx, f[3])?,
    }))
}

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    match try_tcp_retransmit_skb(ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_tcp_retransmit_skb(ctx: TracePointContext) -> Result<u32, u32> {
    let off = offsets();
    if off.valid == 0 {
        return Ok(0);
    }
    let Some(key) = key_v6(&ctx, &off.rtx, off.portal_port)? else {
        return Ok(0);
    };
    let Some(c) = CONNS.get_ptr_mut(&key) else {
        return Ok(0);
    };
    let c = unsafe { &mut *c };
    c.retransmits += 1;
    c.consecutive_retrans += 1;
    if c.limits.retrans_limit != 0 && c.consecutive_retrans >= c.limits.retrans_limit {
        send(c, &key, TEV_RETRANS, 0, 0);
    }
    Ok(0)
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_inet_sock_set_state(ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_inet_sock_set_state(ctx: TracePointContext) -> Result<u32, u32> {
    let off = offsets();
    if off.valid == 0 {
        return Ok(0);
    }
    let Some(key) = key_v6(&ctx, &off.state, off.portal_port)? else {
        return Ok(0);
    };
    let protocol: u16 = read(&ctx, off.state_protocol)?;
    if protocol != IPPROTO_TCP {
        return Ok(0);
    }
    let Some(c) = CONNS.get_ptr_mut(&key) else {
        return Ok(0);
    };
    let c = unsafe { &mut *c };
    let old: i32 = read(&ctx, off.state_old)?;
    let new: i32 = read(&ctx, off.state_new)?;
    c.last_state = new as u32;
    if old as u32 == TCP_ESTABLISHED && new as u32 != TCP_ESTABLISHED {
        send(c, &key, TEV_STATE, old as u32, new as u32);
    }
    Ok(0)
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    match try_tcp_receive_reset(ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_tcp_receive_reset(ctx: TracePointContext) -> Result<u32, u32> {
    let off = offsets();
    if off.valid == 0 {
        return Ok(0);
    }
    let Some(key) = key_v6(&ctx, &off.rst, off.portal_port)? else {
        return Ok(0);
    };
    let Some(c) = CONNS.get_ptr_mut(&key) else {
        return Ok(0);
    };
    let c = unsafe { &mut *c };
    c.resets += 1;
    send(c, &key, TEV_RESET, c.last_state, 0);
    Ok(0)
}

#[tracepoint]
pub fn tcp_probe(ctx: TracePointContext) -> u32 {
    match try_tcp_probe(ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_tcp_probe(ctx: TracePointContext) -> Result<u32, u32> {
    let off = offsets();
    if off.valid == 0 {
        return Ok(0);
    }
    let rport: u16 = read(&ctx, off.probe[1])?;
    if u32::from(rport) != off.portal_port {
        return Ok(0);
    }
    // tcp_probe carries the addresses as sockaddr_in / sockaddr_in6.
    let family: u16 = read(&ctx, off.probe_family)?;
    let (laddr, raddr) = match family {
        AF_INET => (
            mapped(read(&ctx, off.probe[2] + 4)?),
            mapped(read(&ctx, off.probe[3] + 4)?),
        ),
        AF_INET6 => (read(&ctx, off.probe[2] + 8)?, read(&ctx, off.probe[3] + 8)?),
        _ => return Ok(0),
    };
    let key = ConnKey {
        laddr,
        raddr,
        lport: read(&ctx, off.probe[0])?,
        rport,
    };
    let Some(c) = CONNS.get_ptr_mut(&key) else {
        return Ok(0);
    };
    let srtt: u32 = read(&ctx, off.probe_srtt)?;
    let una: u32 = read(&ctx, off.probe_snd_una)?;
    segment(unsafe { &mut *c }, &key, srtt, una);
    Ok(0)
}

/// A field of `struct sock` reached from the BTF tracepoint's argument: a plain load,
/// which the verifier checks against the kernel's BTF.
#[inline(always)]
fn kread<T: Copy>(base: *const u8, offset: u32) -> T {
    unsafe { core::ptr::read_volatile(base.add(offset as usize).cast::<T>()) }
}

/// tcp_probe(struct sock *sk, struct sk_buff *skb) as a BTF tracepoint: the same as the
/// classic program, read from the socket itself.
#[btf_tracepoint(function = "tcp_probe")]
pub fn tcp_probe_btf(ctx: BtfTracePointContext) -> u32 {
    let off = unsafe { core::ptr::read_volatile(&SOCK_BTF_OFFSETS) };
    if off.valid == 0 {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    let rport = u16::from_be(kread::<u16>(sk, off.dport));
    if u32::from(rport) != off.portal_port {
        return 0;
    }
    let family: u16 = kread(sk, off.family);
    let (laddr, raddr) = match family {
        AF_INET => (
            mapped(kread(sk, off.rcv_saddr)),
            mapped(kread(sk, off.daddr)),
        ),
        AF_INET6 => (kread(sk, off.v6_rcv_saddr), kread(sk, off.v6_daddr)),
        _ => return 0,
    };
    let key = ConnKey {
        laddr,
        raddr,
        lport: kread(sk, off.num),
        rport,
    };
    let Some(c) = CONNS.get_ptr_mut(&key) else {
        return 0;
    };
    // tcp_sock's fields lie past struct sock's end, where the verifier allows no plain
    // load through this pointer: one helper read each, for watched connections only.
    let tcp = |o: u32| unsafe { bpf_probe_read_kernel(sk.add(o as usize).cast::<u32>()) };
    let (Ok(srtt_us), Ok(una)) = (tcp(off.srtt_us), tcp(off.snd_una)) else {
        return 0;
    };
    // As the classic tracepoint reports it: microseconds.
    segment(unsafe { &mut *c }, &key, srtt_us >> 3, una);
    0
}

/// A segment arrived from the peer of a watched connection.
#[inline(always)]
fn segment(c: &mut ConnState, key: &ConnKey, srtt: u32, una: u32) {
    let now = unsafe { bpf_ktime_get_ns() };
    // The peer sent something: it is alive and the way back works, so a retransmission
    // run is over. snd_una here is from before this segment's ACK is processed: the ACK
    // shows only with the next segment, and on a link that just got 150 ms slower the
    // spurious tail-loss probes in between counted as a run of five ("silent") and a
    // healthy path was failed in the lab.
    c.last_rcv_ns = now;
    c.consecutive_retrans = 0;
    if una != c.last_snd_una {
        c.last_snd_una = una;
        c.last_ack_ns = now;
    }
    c.srtt_us = srtt;
    if c.limits.rtt_limit_us != 0 && srtt > c.limits.rtt_limit_us {
        send(c, key, TEV_RTT, 0, 0);
    }
}

/// An IPv4 address as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
#[inline(always)]
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Sends an event unless one of its kind went out for this connection less than the
/// event gap ago; those held back are counted into the next one sent.
#[inline(always)]
fn send(c: &mut ConnState, key: &ConnKey, kind: u32, old_state: u32, new_state: u32) {
    let k = (kind - 1) as usize;
    let now = unsafe { bpf_ktime_get_ns() };
    let (Some(last), Some(held)) = (
        c.last_event_ns.get(k).copied(),
        c.suppressed.get(k).copied(),
    ) else {
        return;
    };
    if last != 0 && now.saturating_sub(last) < c.limits.event_gap_ns {
        if let Some(s) = c.suppressed.get_mut(k) {
            *s += 1;
        }
        return;
    }
    let ev = TcpEvent {
        ts_ns: now,
        key: *key,
        kind,
        old_state,
        new_state,
        consecutive_retrans: c.consecutive_retrans,
        srtt_us: c.srtt_us,
        suppressed: held,
        _pad: 0,
    };
    if TCP_EVENTS.output::<TcpEvent>(&ev, 0).is_ok() {
        if let Some(l) = c.last_event_ns.get_mut(k) {
            *l = now;
        }
        if let Some(s) = c.suppressed.get_mut(k) {
            *s = 0;
        }
    } else if let Some(s) = c.suppressed.get_mut(k) {
        *s += 1;
    }
}
