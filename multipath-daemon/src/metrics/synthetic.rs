//! A snapshot shaped like a busy host's, for tests and `cargo xtask bench scrape`: every
//! family has series, every histogram has samples.

use std::{net::SocketAddr, time::Duration};

use multipath_common::block::{ERROR_CLASSES, LATENCY_BUCKETS};

use super::*;
use crate::{
    ebpf::{ConnSnapshot, LagStats, PathSnapshot},
    health::{Action, Decision, Reason},
    model::Conn,
};

/// `paths` paths, two per map (one LUN seen through two iSCSI portals), with probe
/// readings, TCP counters and loop counters filled in. Path `i` is `sd<i>`, dev `8:i*16`
/// (minor modulo 2^20); states cycle so that every state occurs.
pub fn synthetic(paths: usize) -> Snapshot {
    let mut s = Snapshot::default();
    let maps = paths.div_ceil(2);
    for m in 0..maps {
        s.maps.push(MapMetrics {
            name: format!("mpath{m}"),
            wwid: format!("36001405{m:024x}"),
            active_group: Some(1 + (m % 2) as u32),
            queue_if_no_path: m % 3 == 0,
            no_path_retry_expired: m % 7 == 6,
            io_stalled: m % 11 == 10,
        });
    }
    for i in 0..paths {
        let m = i / 2;
        let dev = DevT::new(8 + (i as u32 * 16) / (1 << 20), (i as u32 * 16) % (1 << 20));
        let portal = format!("10.99.{}.2:3260", 1 + i % 2);
        s.paths.push(PathMetrics {
            map: format!("mpath{m}"),
            wwid: format!("36001405{m:024x}"),
            path: format!("sd{i}"),
            dev,
            portal: Some(portal.clone()),
            state: PathState::ALL[i % PathState::ALL.len()],
            dm_failed: i % 5 == 2,
            flaps: (i % 4) as u32,
            lun_errors: (i % 3) as u64,
            latency_limit: Duration::from_millis(20),
            rtt_limit: Duration::from_millis(50),
        });
        let mut block = PathSnapshot::default();
        for (d, dir) in block.stats.dir.iter_mut().enumerate() {
            let base = 1000 * (i as u64 + 1) * (d as u64 + 1);
            dir.completions = base;
            dir.bytes = base * 4096;
            dir.errors = i as u64 % 2;
            let mut hist = [0u64; LATENCY_BUCKETS];
            // Most completions near 256 us-1 ms, a tail to seconds.
            hist[8] = base / 2;
            hist[9] = base / 4;
            hist[10] = base / 8;
            hist[14] = base / 16;
            hist[20] = base - base / 2 - base / 4 - base / 8 - base / 16;
            dir.latency_hist = hist;
            dir.timed = base;
            dir.latency_sum_ns = base * 600_000;
        }
        block.stats.errors_by_class = [(i % 3) as u64; ERROR_CLASSES];
        block.stats.requeues = i as u64 % 4;
        block.inflight = (i % 8) as u64;
        block.oldest = (i % 8 != 0).then(|| Duration::from_millis(3 * i as u64 % 900));
        let conn = Conn {
            local: SocketAddr::from(([10, 99, 1 + (i % 2) as u8, 1], 40000 + (i % 20000) as u16)),
            remote: portal.parse().expect("a socket address"),
        };
        s.tcp_lost.insert(conn, i as u64 % 3);
        s.readings.push(PathReading {
            dev,
            block,
            conn: Some((
                conn,
                ConnSnapshot {
                    retransmits: i as u64 % 10,
                    consecutive_retrans: 0,
                    resets: i as u64 % 2,
                    srtt: Duration::from_micros(200 + i as u64 % 500),
                    last_state: 1,
                    snd_una: 0,
                    last_ack_ns: 0,
                    last_rcv_ns: 0,
                },
            )),
        });
    }
    let mut lag = LagStats::default();
    for (b, n) in lag.buckets.iter_mut().enumerate() {
        *n = (b as u64 + 1) * 3;
        lag.count += *n;
        lag.sum += Duration::from_micros((1u64 << b.min(30)) * *n);
        lag.max = Duration::from_micros(1 << b.min(30));
    }
    s.watcher = Some(WatcherStats {
        events: 12345,
        suppressed: 17,
        ring_full: 1,
        dropped: 2,
        recursion_misses: 3,
        lag,
    });
    let st = &mut s.stats;
    let reasons = [
        (Action::Fail { rescue: None }, Reason::ConnReset),
        (
            Action::Fail { rescue: None },
            Reason::PathError { errno: -67 },
        ),
        (Action::Reinstate, Reason::Recovered { checks: 2 }),
        (
            Action::Demote,
            Reason::Slow {
                latency: Duration::from_millis(80),
            },
        ),
        (
            Action::Restore,
            Reason::Quiet {
                for_: Duration::from_secs(60),
            },
        ),
        (Action::None, Reason::CheckerUp),
    ];
    for (k, (action, reason)) in reasons.into_iter().enumerate() {
        let d = Decision {
            dev: DevT::new(8, 0),
            name: "sd0".into(),
            map: "mpath0".into(),
            from: PathState::Active,
            to: PathState::Failed,
            action,
            reason,
            signal_ns: 1_000_000_000,
            decided_ns: 1_000_050_000 + k as u64 * 1000,
        };
        let done = (d.action != Action::None).then_some(1_002_000_000 + k as u64 * 1_000_000);
        st.decision(&d, done);
    }
    for (k, op) in [
        "create",
        "reload",
        "fail_path",
        "reinstate_path",
        "switch_group",
    ]
    .into_iter()
    .enumerate()
    {
        st.dm_call(op, k != 1, Duration::from_micros(300 * (k as u64 + 1)));
    }
    for (checker, outcome) in [
        ("tur", "up"),
        ("tur", "down"),
        ("tur", "timeout"),
        ("directio", "up"),
    ] {
        st.check(checker, outcome, Duration::from_millis(2));
    }
    st.rescue(true);
    st.rescue(false);
    st.recovery_tmo_write(true);
    st.pass(0, Duration::from_millis(40));
    st.pass(1, Duration::from_millis(900));
    st.request("show_paths");
    st.request("fail");
    for kind in [
        "io_error",
        "stalled_io",
        "tcp_reset",
        "udev",
        "check",
        "poll",
    ] {
        st.event(kind);
    }
    s.build = BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        commit: Some("0123456789ab".into()),
    };
    s
}
