//! Plain values every stage of the daemon shares: a path device's number and an iSCSI
//! connection. No stage's machinery lives here.

use std::net::SocketAddr;

/// A block device number as userspace sees it (`stat`, sysfs `dev`): major:minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevT {
    pub major: u32,
    pub minor: u32,
}

impl DevT {
    pub fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }
}

impl std::fmt::Display for DevT {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl std::str::FromStr for DevT {
    type Err = String;

    /// `MAJOR:MINOR`, as sysfs `dev` files and dm tables write it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (ma, mi) = s
            .split_once(':')
            .ok_or_else(|| format!("expected MAJOR:MINOR, found {s:?}"))?;
        let num = |v: &str, what: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{what} in {s:?} is not a number"))
        };
        Ok(Self::new(num(ma, "major")?, num(mi, "minor")?))
    }
}

/// One TCP connection, from the initiator's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conn {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl std::fmt::Display for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.local, self.remote)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's `bpf_ktime_get_ns()`, so the
/// daemon's own times and the probes' kernel timestamps compare directly.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::DevT;

    #[test]
    fn devt_parses_and_says_what_is_wrong() {
        assert_eq!("8:16\n".parse::<DevT>().unwrap(), DevT::new(8, 16));
        assert!(
            "8".parse::<DevT>()
                .unwrap_err()
                .contains("expected MAJOR:MINOR")
        );
        assert!("8:x".parse::<DevT>().unwrap_err().contains("minor"));
    }
}
