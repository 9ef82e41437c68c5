//! sock_diag (NETLINK_SOCK_DIAG) requests about one TCP connection, named by its
//! four-tuple: destroy its socket (the in-flight rescue, [`crate::actions::rescue`]) or read
//! its `tcp_info` counters (the health engine's loss measure).
//!
//! One request per connection, never a dump of every socket of the host: the daemon only
//! asks about the iSCSI connections it watches.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::model::Conn;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// The `tcp_info` attribute of an answer (`INET_DIAG_INFO`), asked for with bit
/// `INET_DIAG_INFO - 1` of the request's `ext`.
const INET_DIAG_INFO: u16 = 2;
/// `struct inet_diag_msg`, before an answer's attributes.
const INET_DIAG_MSG_LEN: usize = 72;
/// Offsets in `struct tcp_info` (linux/tcp.h; `dsack_dups` since Linux 5.0).
const TCPI_TOTAL_RETRANS: usize = 100;
const TCPI_DSACK_DUPS: usize = 216;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Msg {
    hdr: NlMsgHdr,
    req: InetDiagReqV2,
}

/// A connection's loss counters from the kernel's `tcp_info`, since the socket was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Segments retransmitted (`tcpi_total_retrans`).
    pub total_retrans: u32,
    /// Retransmissions the peer reported as duplicates (D-SACK, `tcpi_dsack_dups`): it
    /// already had them, so they were spurious (a tail-loss probe answered late), not
    /// lost data.
    pub dsack_dups: u32,
}

impl TcpCounters {
    /// Retransmissions of data the peer did not already have: loss.
    pub fn lost(&self) -> u32 {
        self.total_retrans.saturating_sub(self.dsack_dups)
    }
}

fn addr_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (libc::AF_INET as u8, b)
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            // An IPv4 connection seen through a dual-stack address.
            Some(v4) => addr_bytes(IpAddr::V4(v4)),
            None => (libc::AF_INET6 as u8, a.octets()),
        },
    }
}

fn message(conn: &Conn, kind: u16, flags: u16, ext: u8) -> io::Result<Msg> {
    let (family, src) = addr_bytes(conn.local.ip());
    let (family_r, dst) = addr_bytes(conn.remote.ip());
    if family != family_r {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{conn}: local and remote address families differ"),
        ));
    }
    let port = |a: &SocketAddr| a.port().to_be_bytes();
    Ok(Msg {
        hdr: NlMsgHdr {
            len: std::mem::size_of::<Msg>() as u32,
            kind,
            flags,
            seq: 1,
            pid: 0,
        },
        req: InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            ext,
            pad: 0,
            states: !0,
            id: InetDiagSockId {
                sport: port(&conn.local),
                dport: port(&conn.remote),
                src,
                dst,
                ifindex: 0,
                // INET_DIAG_NOCOOKIE: match by the four-tuple alone.
                cookie: [!0, !0],
            },
        },
    })
}

/// A sock_diag socket that never blocks its thread for long on a kernel that does not
/// answer.
fn open() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: valid fd, option and pointer to a timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    Ok(fd)
}

/// Sends `msg` and returns the first answer: its header and payload. An error answer
/// with a non-zero code is that error.
fn ask(fd: &OwnedFd, msg: &Msg, buf: &mut [u8]) -> io::Result<(NlMsgHdr, usize)> {
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: the message is plain integers of the size given; the address is valid.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            (msg as *const Msg).cast(),
            std::mem::size_of::<Msg>(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let hdr_len = std::mem::size_of::<NlMsgHdr>();
    if n < hdr_len + 4 {
        return Err(io::Error::other(format!(
            "sock_diag answered {n} bytes, too short for a message"
        )));
    }
    // SAFETY: n >= the header's size; the header is plain integers.
    let hdr: NlMsgHdr = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    if hdr.kind == NLMSG_ERROR {
        let code = i32::from_ne_bytes(buf[hdr_len..hdr_len + 4].try_into().expect("4 bytes"));
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    Ok((hdr, n.min(hdr.len as usize)))
}

/// Destroys the local TCP socket of `conn` (local = the initiator's end), as `ss -K`
/// does: its owner (the iSCSI initiator) sees the connection fail with ECONNABORTED at
/// once. Errors: ENOENT if no such socket, EOPNOTSUPP if the kernel lacks
/// CONFIG_INET_DIAG_DESTROY, EPERM without CAP_NET_ADMIN.
pub fn destroy(conn: &Conn) -> io::Result<()> {
    let msg = message(conn, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 0)?;
    let fd = open()?;
    let mut buf = [0u8; 512];
    let (hdr, _) = ask(&fd, &msg, &mut buf)?;
    if hdr.kind != NLMSG_ERROR {
        return Err(io::Error::other(format!(
            "sock_diag answered message type {} instead of an acknowledgement",
            hdr.kind
        )));
    }
    Ok(())
}

/// The `tcp_info` loss counters of each connection, in order, over one sock_diag
/// socket. Per connection: ENOENT if it has no socket (closed meanwhile), Unsupported
/// if the kernel's `tcp_info` predates `dsack_dups`.
pub fn tcp_counters(conns: &[Conn]) -> io::Result<Vec<io::Result<TcpCounters>>> {
    let fd = open()?;
    let mut buf = vec![0u8; 1024];
    Ok(conns
        .iter()
        .map(|conn| {
            let msg = message(
                conn,
                SOCK_DIAG_BY_FAMILY,
                NLM_F_REQUEST,
                1 << (INET_DIAG_INFO - 1),
            )?;
            let (hdr, n) = ask(&fd, &msg, &mut buf)?;
            if hdr.kind != SOCK_DIAG_BY_FAMILY {
                return Err(io::Error::other(format!(
                    "sock_diag answered message type {} for {conn}",
                    hdr.kind
                )));
            }
            parse_tcp_info(&buf[..n]).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{conn}: the kernel's tcp_info has no dsack_dups (Linux < 5.0)"),
                )
            })
        })
        .collect())
}

/// The counters from one SOCK_DIAG_BY_FAMILY answer (header included): its
/// `INET_DIAG_INFO` attribute, if long enough to hold them.
fn parse_tcp_info(msg: &[u8]) -> Option<TcpCounters> {
    let mut at = std::mem::size_of::<NlMsgHdr>() + INET_DIAG_MSG_LEN;
    while at + 4 <= msg.len() {
        let len = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([msg[at + 2], msg[at + 3]]);
        if len < 4 || at + len > msg.len() {
            return None;
        }
        if kind == INET_DIAG_INFO {
            let info = &msg[at + 4..at + len];
            let u32_at = |o: usize| {
                info.get(o..o + 4)
                    .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
            };
            return Some(TcpCounters {
                total_retrans: u32_at(TCPI_TOTAL_RETRANS)?,
                dsack_dups: u32_at(TCPI_DSACK_DUPS)?,
            });
        }
        // Attributes are 4-byte aligned.
        at += (len + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(info: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; std::mem::size_of::<NlMsgHdr>() + INET_DIAG_MSG_LEN];
        // An attribute before it, of an odd length (padded).
        m.extend_from_slice(&5u16.to_ne_bytes());
        m.extend_from_slice(&1u16.to_ne_bytes());
        m.extend_from_slice(&[7, 0, 0, 0]);
        m.extend_from_slice(&((info.len() + 4) as u16).to_ne_bytes());
        m.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        m.extend_from_slice(info);
        m
    }

    #[test]
    fn the_loss_counters_come_from_the_info_attribute() {
        let mut info = vec![0u8; 232];
        info[TCPI_TOTAL_RETRANS..TCPI_TOTAL_RETRANS + 4].copy_from_slice(&9u32.to_ne_bytes());
        info[TCPI_DSACK_DUPS..TCPI_DSACK_DUPS + 4].copy_from_slice(&4u32.to_ne_bytes());
        let c = parse_tcp_info(&answer(&info)).unwrap();
        assert_eq!(
            c,
            TcpCounters {
                total_retrans: 9,
                dsack_dups: 4
            }
        );
        assert_eq!(c.lost(), 5);
        // An old kernel's shorter tcp_info, and no attribute at all.
        assert_eq!(parse_tcp_info(&answer(&info[..200])), None);
        assert_eq!(parse_tcp_info(&answer(&[])[..80]), None);
    }

    /// The real kernel, over loopback: a fresh connection has retransmitted nothing; a
    /// closed one has no socket to ask about.
    #[test]
    fn a_loopback_connections_counters_are_read_from_the_kernel() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let conn = Conn {
            local: client.local_addr().unwrap(),
            remote: client.peer_addr().unwrap(),
        };
        let gone = Conn {
            local: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1),
            remote: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 2),
        };
        let r = tcp_counters(&[conn, gone]).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].as_ref().unwrap(), &TcpCounters::default(), "{conn}");
        assert_eq!(
            r[1].as_ref().unwrap_err().raw_os_error(),
            Some(libc::ENOENT),
            "{:?}",
            r[1]
        );
        drop((client, server));
    }
}
