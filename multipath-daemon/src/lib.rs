//! mpathd: a multipath daemon that watches every storage path from inside the kernel.
//!
//! Data flows one way: kernel event -> path -> map -> decision -> device-mapper. Each
//! stage is a module with a narrow, typed interface; only [`ebpf`] talks to aya.

pub mod actions;
pub mod checker;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dm;
pub mod ebpf;
pub mod health;
pub mod logging;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod sockdiag;
pub mod topology;

/// Whether a test that needs root may run: as root, yes; otherwise it is skipped, unless
/// `MPATHD_TEST_STRICT` is set (CI runs as root, so a skip there is a failure).
#[cfg(test)]
pub(crate) fn test_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("MPATHD_TEST_STRICT").is_none(),
        "needs root (MPATHD_TEST_STRICT is set)"
    );
    eprintln!("skipped: needs root");
    false
}
