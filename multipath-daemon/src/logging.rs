//! Where log lines go: to the journal with structured fields when systemd connected
//! standard error to it, otherwise human-readable text on standard error.
//!
//! Under the journal every field of an event becomes a journal field with the `MPATHD_`
//! prefix (`map` -> `MPATHD_MAP`), so `journalctl -u mpathd MPATHD_MAP=sanvol1` lists one
//! map's decisions, and the level becomes the journal's `PRIORITY`.

use std::os::fd::AsFd;

use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// The prefix of mpathd's own journal fields (tracing-journald adds the `_`).
pub const JOURNAL_FIELD_PREFIX: &str = "MPATHD";

/// Installs the global subscriber. `MPATHD_LOG` filters as `RUST_LOG` does (default
/// `info`). True when the lines go to the journal natively.
pub fn init() -> bool {
    let filter = EnvFilter::try_from_env("MPATHD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = std::env::var("JOURNAL_STREAM")
        .ok()
        .filter(|v| journal_stream_is(v, std::io::stderr().as_fd()));
    if journal.is_some() {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.to_string()))
                    .with_syslog_identifier("mpathd".to_string());
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
                return true;
            }
            // Standard error still reaches the journal, as plain lines.
            Err(e) => eprintln!(
                "mpathd: journald's socket did not open ({e}): logging to standard error instead"
            ),
        }
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    false
}

/// Whether `fd` is the stream systemd named in `JOURNAL_STREAM` (`DEVICE:INODE`, both
/// decimal). systemd's own rule: the variable is inherited by children whose standard
/// error was redirected elsewhere, so only a matching device and inode count.
pub fn journal_stream_is(value: &str, fd: std::os::fd::BorrowedFd<'_>) -> bool {
    let Some((dev, ino)) = value.trim().split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` into the buffer we own, or fails and writes
    // nothing we then read.
    if unsafe { libc::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat returned 0, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    st.st_dev == dev && st.st_ino == ino
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn only_the_stream_systemd_named_is_the_journal() {
        let dir = std::env::temp_dir().join(format!("mpathd-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = std::fs::File::create(dir.join("a")).unwrap();
        let b = std::fs::File::create(dir.join("b")).unwrap();
        let m = a.metadata().unwrap();
        let named = format!("{}:{}", m.dev(), m.ino());
        assert!(journal_stream_is(&named, a.as_fd()));
        assert!(journal_stream_is(&format!("{named}\n"), a.as_fd()));
        // Inherited by a child whose standard error is a file: not the journal.
        assert!(!journal_stream_is(&named, b.as_fd()));
        for bad in ["", "12", "x:1", "1:y", "1:2:3", ":"] {
            assert!(!journal_stream_is(bad, a.as_fd()), "{bad:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
