//! Path checkers: small plug-ins behind one trait that each ask one path device whether it
//! serves IO, and the pool that runs them off the event loop.
//!
//! - [`CheckerKind`] is the registry: a name in the config (`tur`, `directio`, `none`) to
//!   a [`Checker`].
//! - A [`Checker`] blocks: it does real IO (an O_DIRECT read, a SCSI command) and a dead
//!   path can keep it in the kernel for as long as the transport takes to give up.
//! - [`CheckerPool`] runs each check on a thread of its own and answers the caller within
//!   the check's timeout whatever the device does; a path whose last check is still stuck
//!   in the kernel gets [`CheckOutcome::Pending`] instead of a second stuck thread.
//!
//! See docs/checker.md for what each checker does and what each outcome means.

mod directio;
mod pool;
mod tur;

use std::{path::Path, time::Duration};

pub use directio::Directio;
pub use pool::{CheckResult, CheckerPool};
pub use tur::Tur;

/// The registry of checkers, by the name the config uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckerKind {
    /// SCSI TEST UNIT READY through SG_IO ([`Tur`]).
    Tur,
    /// An O_DIRECT read of the first logical block ([`Directio`]).
    Directio,
    /// No IO: every path is up ([`NoChecker`]). An admin's choice for devices where any
    /// check costs too much or misleads; failures are then seen only through IO.
    None,
}

impl CheckerKind {
    pub const ALL: [CheckerKind; 3] = [CheckerKind::Tur, CheckerKind::Directio, CheckerKind::None];

    pub fn name(self) -> &'static str {
        match self {
            CheckerKind::Tur => "tur",
            CheckerKind::Directio => "directio",
            CheckerKind::None => "none",
        }
    }

    /// The checker of this kind. Checkers hold no state, so one of each serves every path.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn checker(self) -> &'static dyn Checker {
        match self {
            CheckerKind::Tur => &Tur,
            CheckerKind::Directio => &Directio,
            CheckerKind::None => &NoChecker,
        }
    }
}

impl std::fmt::Display for CheckerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CheckerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CheckerKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = CheckerKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown path checker {s:?}: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// What one check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The path serves IO.
    Up,
    /// Up but passive (ALUA standby or unavailable): usable only when nothing better is.
    Ghost,
    /// The device or its transport said no (an errno, a SCSI status, sense or host byte).
    /// `ambiguous`: the LUN itself answered with the error (an EIO on a read, a sense
    /// key), which it may give on every path; otherwise the path's transport failed.
    Down { why: String, ambiguous: bool },
    /// No answer within the timeout.
    Timeout,
    /// No verdict: a previous check of this path is still outstanding (it timed out
    /// and has not returned from the kernel yet), or (tur) the LUN is in an ALUA state
    /// transition. Says nothing new about the path: keep its state.
    Pending,
    /// This checker cannot check this device (TUR on a device that is not SCSI).
    Unsupported { why: String },
}

impl CheckOutcome {
    /// The one-word name, for logs, `show paths` and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            CheckOutcome::Up => "up",
            CheckOutcome::Ghost => "ghost",
            CheckOutcome::Down { .. } => "down",
            CheckOutcome::Timeout => "timeout",
            CheckOutcome::Pending => "pending",
            CheckOutcome::Unsupported { .. } => "unsupported",
        }
    }
}

impl std::fmt::Display for CheckOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckOutcome::Down { why, .. } | CheckOutcome::Unsupported { why } => {
                write!(f, "{}: {why}", self.name())
            }
            _ => f.write_str(self.name()),
        }
    }
}

/// One way of asking a path device whether it works.
pub trait Checker: Send + Sync {
    fn kind(&self) -> CheckerKind;
    /// Blocking; called on a thread of the pool's, never on the event loop. `timeout` is
    /// passed on to the device where the interface takes one (SG_IO); the pool enforces
    /// it from the caller's side either way.
    fn check(&self, node: &Path, timeout: Duration) -> CheckOutcome;
}

/// The `none` checker: every path is up, and no IO is done.
pub struct NoChecker;

impl Checker for NoChecker {
    fn kind(&self) -> CheckerKind {
        CheckerKind::None
    }

    fn check(&self, _node: &Path, _timeout: Duration) -> CheckOutcome {
        CheckOutcome::Up
    }
}

/// Down if the node is gone (the device went away), Unsupported if it is not a block
/// device; None for a block device.
fn not_a_block_device(node: &Path) -> Option<CheckOutcome> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(node) {
        Err(e) => Some(CheckOutcome::Down {
            why: format!("{}: {e}", node.display()),
            ambiguous: false,
        }),
        Ok(m) if !m.file_type().is_block_device() => Some(CheckOutcome::Unsupported {
            why: format!("{} is not a block device", node.display()),
        }),
        Ok(_) => None,
    }
}

/// Opens a block device node for one check, read only (TUR is allowed on a read-only
/// open). Opened per check, not kept: a path's node can go and come back with the device.
fn open_node(node: &Path, extra_flags: i32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | extra_flags)
        .open(node)
}

/// Down: the kernel would not even open the path's node.
fn open_failed(node: &Path, e: &std::io::Error) -> CheckOutcome {
    // What sd's open says for a device that is offline or whose transport failed (an
    // iSCSI session past its recovery timeout): seen in the lab, worth spelling out.
    let hint = if e.raw_os_error() == Some(libc::ENXIO) {
        " (the kernel takes no IO for it: device offline or transport failed)"
    } else {
        ""
    };
    CheckOutcome::Down {
        why: format!("opening {}: {e}{hint}", node.display()),
        ambiguous: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_round_trip_and_unknown_names_list_the_known_ones() {
        for k in CheckerKind::ALL {
            assert_eq!(k.to_string().parse::<CheckerKind>().unwrap(), k);
            assert_eq!(k.checker().kind(), k);
        }
        assert_eq!("tur".parse::<CheckerKind>().unwrap(), CheckerKind::Tur);
        assert_eq!(
            "directio".parse::<CheckerKind>().unwrap(),
            CheckerKind::Directio
        );
        assert_eq!("none".parse::<CheckerKind>().unwrap(), CheckerKind::None);
        assert_eq!(
            "readsector0".parse::<CheckerKind>().unwrap_err(),
            "unknown path checker \"readsector0\": expected one of tur, directio, none"
        );
        // Names are exact, as in the config file.
        assert!("TUR".parse::<CheckerKind>().is_err());
    }

    #[test]
    fn none_is_up_without_touching_the_device() {
        let out = NoChecker.check(Path::new("/nonexistent/device"), Duration::from_secs(1));
        assert_eq!(out, CheckOutcome::Up);
    }

    #[test]
    fn outcomes_print_their_reason() {
        let down = CheckOutcome::Down {
            why: "TUR: host byte DID_NO_CONNECT (0x01)".into(),
            ambiguous: false,
        };
        assert_eq!(
            down.to_string(),
            "down: TUR: host byte DID_NO_CONNECT (0x01)"
        );
        assert_eq!(CheckOutcome::Pending.to_string(), "pending");
    }
}
