//! The in-flight rescue: giving the I/O stuck on a dead iSCSI connection back to
//! device-mapper at once, so it completes on another path.
//!
//! `fail_path` steers new I/O only. Commands already sent down a silently dead iSCSI
//! connection wait for the transport: the NOP-out timeout, then the session's
//! `recovery_tmo`. Measured in the lab (lab-recipe, "in-flight rescue"): with the session's
//! `recovery_tmo` at 0 while it is still logged in, destroying the initiator's socket
//! (sock_diag SOCK_DESTROY) makes the kernel fail those commands back to dm-multipath in
//! ~40 ms, which retries them on a healthy path.
//!
//! Two pieces, each a plain function run off the event loop:
//! - [`set_recovery_tmo`]: the session's recovery timeout. The daemon keeps it at 0 while
//!   every map the session carries has a usable path elsewhere, so a connection that dies
//!   (a reset, a destroyed socket) hands its I/O back at once, and at its original value
//!   otherwise, so that the last path rides out a short outage. The write only succeeds
//!   while the session is LOGGED_IN (EBUSY once it has FAILED). The original values are
//!   kept in a [`Ledger`] file under /run so they are restored after a crash too.
//! - [`destroy_socket`]: SOCK_DESTROY of the initiator's TCP socket (needs
//!   CAP_NET_ADMIN and CONFIG_INET_DIAG_DESTROY).

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use crate::model::Conn;

/// Where the daemon keeps the sessions' original recovery timeouts.
pub const DEFAULT_LEDGER: &str = "/run/mpathd/recovery_tmo.json";

/// Destroys the local TCP socket of `conn` (local = the initiator's end), as `ss -K`
/// does: its owner (the iSCSI initiator) sees the connection fail with ECONNABORTED at
/// once. Errors: ENOENT if no such socket, EOPNOTSUPP if the kernel lacks
/// CONFIG_INET_DIAG_DESTROY, EPERM without CAP_NET_ADMIN.
pub fn destroy_socket(conn: &Conn) -> io::Result<()> {
    crate::sockdiag::destroy(conn)
}

/// Makes the kernel ready for a rescue before one is needed, and says whether it can do
/// one. The first SOCK_DESTROY of a boot loads the inet_diag and tcp_diag modules (a
/// modprobe from the kernel: a second or more on a busy or emulated machine), which
/// must not happen while I/O waits. Asks to destroy a socket that cannot exist: ENOENT
/// means the path works.
pub fn warm_up() -> io::Result<()> {
    let none = Conn {
        local: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1),
        remote: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1),
    };
    match destroy_socket(&none) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The sysfs file of a session's recovery timeout, under `root` (`/` on a host).
pub fn recovery_tmo_path(root: &Path, session: &str) -> PathBuf {
    root.join("sys/class/iscsi_session")
        .join(session)
        .join("recovery_tmo")
}

/// Writes a session's recovery timeout (seconds). Fails with EBUSY unless the session is
/// LOGGED_IN.
pub fn set_recovery_tmo(root: &Path, session: &str, secs: u32) -> io::Result<()> {
    if session.contains('/') || session.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{session:?} is not a session name"),
        ));
    }
    std::fs::write(recovery_tmo_path(root, session), format!("{secs}\n"))
}

/// The original recovery timeouts of the sessions the daemon has changed, kept in a file
/// so that a restarted daemon (after a crash too) puts them back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    path: PathBuf,
    originals: BTreeMap<String, u32>,
}

impl Ledger {
    /// Reads the ledger; a missing file is an empty ledger. A file that does not parse
    /// is an error naming it (its values may be needed to restore sessions).
    pub fn load(path: &Path) -> io::Result<Self> {
        let originals = match std::fs::read_to_string(path) {
            Ok(s) => serde_json::from_str(&s).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: {e}; it holds the iSCSI sessions' original recovery_tmo: \
                         fix or delete it (iscsiadm shows the configured values)",
                        path.display()
                    ),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Self {
            path: path.to_path_buf(),
            originals,
        })
    }

    pub fn original(&self, session: &str) -> Option<u32> {
        self.originals.get(session).copied()
    }

    pub fn sessions(&self) -> impl Iterator<Item = (&str, u32)> {
        self.originals.iter().map(|(s, v)| (s.as_str(), *v))
    }

    /// Records a session's original value (the first one seen wins: a later read may
    /// already be our own 0). Returns whether the ledger changed.
    pub fn remember(&mut self, session: &str, value: u32) -> bool {
        if self.originals.contains_key(session) {
            return false;
        }
        self.originals.insert(session.to_string(), value);
        true
    }

    /// Forgets a session restored to its original value (or gone).
    pub fn forget(&mut self, session: &str) -> bool {
        self.originals.remove(session).is_some()
    }

    /// Writes the ledger (atomically: a temp file renamed over it).
    pub fn save(&self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_string_pretty(&self.originals).map_err(io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn snapshot(&self) -> BTreeMap<String, u32> {
        self.originals.clone()
    }

    pub fn restore_from(&mut self, originals: BTreeMap<String, u32>) {
        self.originals = originals;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mpathd-rescue-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_ledger_keeps_the_first_original_and_survives_a_restart() {
        let d = tmp("ledger");
        let path = d.join("run/recovery_tmo.json");
        let mut l = Ledger::load(&path).unwrap();
        assert!(l.remember("session1", 120));
        assert!(!l.remember("session1", 0), "our own 0 must not replace it");
        l.remember("session2", 5);
        l.save().unwrap();
        let mut again = Ledger::load(&path).unwrap();
        assert_eq!(again.original("session1"), Some(120));
        assert_eq!(again.sessions().count(), 2);
        assert!(again.forget("session2"));
        again.save().unwrap();
        assert_eq!(Ledger::load(&path).unwrap().sessions().count(), 1);
        std::fs::write(&path, "{not json").unwrap();
        let e = Ledger::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("recovery_tmo.json") && e.contains("fix or delete"),
            "{e}"
        );
    }

    #[test]
    fn recovery_tmo_is_written_in_the_sessions_sysfs_file_and_names_are_checked() {
        let root = tmp("sysfs");
        let dir = root.join("sys/class/iscsi_session/session3");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("recovery_tmo"), "120\n").unwrap();
        set_recovery_tmo(&root, "session3", 0).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("recovery_tmo")).unwrap(),
            "0\n"
        );
        assert!(set_recovery_tmo(&root, "../session3", 0).is_err());
    }

    #[test]
    fn sudo_warm_up_finds_no_socket_and_says_the_rescue_works() {
        if !crate::test_root() {
            return;
        }
        warm_up().unwrap();
    }

    /// Needs CAP_NET_ADMIN: a connection over loopback, destroyed from "outside" as the
    /// daemon destroys an iSCSI initiator's socket; its owner sees ECONNABORTED.
    #[test]
    fn sudo_destroying_a_sockets_four_tuple_aborts_it_for_its_owner() {
        if !crate::test_root() {
            return;
        }
        use std::io::Read;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_server, _) = l.accept().unwrap();
        let conn = Conn {
            local: client.local_addr().unwrap(),
            remote: client.peer_addr().unwrap(),
        };
        destroy_socket(&conn).unwrap_or_else(|e| panic!("destroying {conn}: {e}"));
        let mut b = [0u8; 8];
        let e = client.read(&mut b).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
        // Gone now: a second destroy finds nothing.
        let e = destroy_socket(&conn).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    }
}
