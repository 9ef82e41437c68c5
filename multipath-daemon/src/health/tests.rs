//! Every rule of the health engine with a fake clock, including the ones that must not
//! fire.

use std::time::Duration;

use super::*;

const MS: Ns = 1_000_000;
const S: Ns = 1_000 * MS;

fn dev(minor: u32) -> DevT {
    DevT::new(8, minor)
}

fn conn(port: u16, portal: u8) -> Conn {
    Conn {
        local: format!("10.99.{portal}.1:{port}").parse().unwrap(),
        remote: format!("10.99.{portal}.2:3260").parse().unwrap(),
    }
}

/// Two maps behind two portals, as in the lab with two LUNs: map `a` has sda (portal 1)
/// and sdb (portal 2); map `b` has sdc (portal 1) and sdd (portal 2). Each portal's
/// iSCSI session carries both LUNs on one connection.
fn two_maps() -> Health {
    let mut h = Health::new(HealthConfig::default());
    let p = |minor: u32, name: &str, map: &str, portal: u8| PathInfo {
        dev: dev(minor),
        name: name.into(),
        map: map.into(),
        session: Some(format!("session{portal}")),
        conn: Some(conn(40000 + portal as u16, portal)),
        dm_failed: false,
    };
    h.set_paths(
        vec![
            p(0, "sda", "a", 1),
            p(16, "sdb", "a", 2),
            p(32, "sdc", "b", 1),
            p(48, "sdd", "b", 2),
        ],
        0,
    );
    h
}

fn block(h: &mut Health, now: Ns, minor: u32, signal: BlockSignal) -> Output {
    h.handle(
        now,
        Input::Block {
            dev: dev(minor),
            at_ns: now,
            signal,
        },
    )
}

fn stalled(oldest_ms: u64) -> BlockSignal {
    BlockSignal::Stalled {
        oldest: Duration::from_millis(oldest_ms),
        since_completion: Some(Duration::from_millis(oldest_ms)),
        inflight: 4,
    }
}

/// A reading of `minor`'s probes at `now`.
fn read(h: &mut Health, now: Ns, minor: u32, reading: Reading) -> Output {
    h.handle(
        now,
        Input::Reading {
            dev: dev(minor),
            reading,
        },
    )
}

fn completed(h: &mut Health, now: Ns, minor: u32, at: Ns) -> Output {
    h.handle(
        now,
        Input::Reading {
            dev: dev(minor),
            reading: Reading {
                last_complete_ns: at,
                inflight: 1,
                oldest: None,
                completions: at / MS,
                ok_completions: at / MS,
                ewma: Duration::from_millis(2),
                srtt: Duration::ZERO,
                snd_una: None,
                retransmits: 0,
                last_ack_ns: 0,
                last_rcv_ns: 0,
                lost: None,
            },
        },
    )
}

/// The portal-1 connection (sda's, sdc's) retransmitted `consecutive` times in a row, as
/// the probe reports it at `now`.
fn retransmits(h: &mut Health, now: Ns, consecutive: u32) -> Output {
    h.handle(
        now,
        Input::Conn {
            conn: conn(40001, 1),
            at_ns: now,
            signal: ConnSignal::Retransmits { consecutive },
        },
    )
}

/// The target reset the portal-1 connection (sda's, sdc's) at `now`.
fn reset(h: &mut Health, now: Ns) -> Output {
    h.handle(
        now,
        Input::Conn {
            conn: conn(40001, 1),
            at_ns: now,
            signal: ConnSignal::Reset,
        },
    )
}

fn up(h: &mut Health, now: Ns, minor: u32) -> Output {
    h.handle(
        now,
        Input::Check {
            dev: dev(minor),
            verdict: CheckVerdict::Up {
                took: Duration::from_millis(3),
            },
        },
    )
}

/// The checker's command on `minor` got no answer in time.
fn timed_out(h: &mut Health, now: Ns, minor: u32) -> Output {
    h.handle(
        now,
        Input::Check {
            dev: dev(minor),
            verdict: CheckVerdict::Timeout,
        },
    )
}

fn failed_devs(o: &Output) -> Vec<DevT> {
    o.decisions
        .iter()
        .filter(|d| matches!(d.action, Action::Fail { .. }))
        .map(|d| d.dev)
        .collect()
}

/// The rescue hands the connection's commands back to device-mapper for a retry on
/// another path: if the target was heard from within twice the grace, it may still run
/// them after the retry (an old write over a newer one), so the path fails without it.
#[test]
fn no_rescue_while_the_target_still_talks() {
    let mut h = two_maps();
    let t = 11 * S;
    let talk = |h: &mut Health, now: Ns, rcv: Ns| {
        read(
            h,
            now,
            0,
            Reading {
                inflight: 1,
                last_rcv_ns: rcv,
                lost: None,
                ..Reading::default()
            },
        )
    };
    talk(&mut h, t - 20 * MS, t - 50 * MS);
    let error = BlockSignal::Error {
        class: ErrorClass::Path,
        errno: -67,
    };
    let o = block(&mut h, t, 0, error);
    let [d] = o.decisions.as_slice() else {
        panic!("{o:?}")
    };
    assert_eq!((d.dev, d.to), (dev(0), PathState::Failed));
    assert_eq!(d.action, Action::Fail { rescue: None }, "heard 50 ms ago");

    // Silent for twice the grace (400 ms): the rescue is safe.
    let mut h = two_maps();
    talk(&mut h, t - 20 * MS, t - 450 * MS);
    let o = block(&mut h, t, 0, error);
    assert!(
        matches!(o.decisions[0].action, Action::Fail { rescue: Some(_) }),
        "{o:?}"
    );
}

#[test]
fn a_path_error_fails_the_path_at_once_with_a_rescue_and_a_lun_error_fails_nothing() {
    let mut h = two_maps();
    let o = block(
        &mut h,
        10 * S,
        0,
        BlockSignal::Error {
            class: ErrorClass::Lun,
            errno: -61,
        },
    );
    assert!(o.decisions.is_empty(), "{o:?}");
    assert_eq!(h.view(dev(0)).unwrap().lun_errors, 1);

    let o = block(
        &mut h,
        11 * S,
        0,
        BlockSignal::Error {
            class: ErrorClass::Path,
            errno: -67,
        },
    );
    let [d] = o.decisions.as_slice() else {
        panic!("{o:?}")
    };
    assert_eq!(
        (d.dev, d.from, d.to),
        (dev(0), PathState::Active, PathState::Failed)
    );
    assert_eq!(d.signal_ns, 11 * S);
    assert_eq!(d.reason, Reason::PathError { errno: -67 });
    // sdb and sdd stay usable on portal 2: the I/O stuck on portal 1 may be handed back.
    assert_eq!(
        d.action,
        Action::Fail {
            rescue: Some(Rescue {
                session: "session1".into(),
                conn: conn(40001, 1)
            })
        }
    );
    // A second error on a failed path decides nothing.
    let o = block(
        &mut h,
        12 * S,
        0,
        BlockSignal::Error {
            class: ErrorClass::Path,
            errno: -67,
        },
    );
    assert!(o.decisions.is_empty(), "{o:?}");
}

#[test]
fn a_connection_reset_fails_every_path_it_carries_in_every_map_in_one_batch() {
    let mut h = two_maps();
    let o = h.handle(
        5 * S,
        Input::Conn {
            conn: conn(40001, 1),
            at_ns: 5 * S - MS,
            signal: ConnSignal::Reset,
        },
    );
    assert_eq!(failed_devs(&o), [dev(0), dev(32)]);
    let maps: Vec<&str> = o.decisions.iter().map(|d| d.map.as_str()).collect();
    assert_eq!(maps, ["a", "b"]);
    assert!(o.decisions.iter().all(|d| d.signal_ns == 5 * S - MS));
    // The reset closed the socket already: nothing to rescue.
    assert!(
        o.decisions
            .iter()
            .all(|d| d.action == Action::Fail { rescue: None })
    );
    assert_eq!(h.state(dev(16)), Some(PathState::Active));
    // Now portal 2 resets too: no map keeps a usable path elsewhere, so no rescue.
    let o = h.handle(
        6 * S,
        Input::Conn {
            conn: conn(40002, 2),
            at_ns: 6 * S,
            signal: ConnSignal::Left { new_state: 7 },
        },
    );
    assert_eq!(failed_devs(&o), [dev(16), dev(48)]);
    for d in &o.decisions {
        assert_eq!(d.action, Action::Fail { rescue: None }, "{d:?}");
    }
}

#[test]
fn a_stall_with_retransmissions_and_no_ack_progress_fails_the_path() {
    let mut h = two_maps();
    // Silent loss at t=10 s: the connection retransmits (tail-loss probe) at +10 ms...
    retransmits(&mut h, 10 * S + 10 * MS, 1);
    // ...a single retransmission run is no soft signal yet.
    assert_eq!(h.state(dev(0)), Some(PathState::Active));
    // A reading after the grace shows no ACK since...
    acked(&mut h, 10 * S + 240 * MS, 0, 1000, 9 * S);
    // ...and the probes report the stall 250 ms after the last completion.
    let o = block(&mut h, 10 * S + 250 * MS, 0, stalled(250));
    let f = failed_devs(&o);
    assert_eq!(f, [dev(0)], "{o:?}");
    let d = &o.decisions[0];
    assert!(
        matches!(d.reason, Reason::Stall { by, .. } if by.contains("retransmissions")),
        "{d:?}"
    );
    assert_eq!(d.signal_ns, 10 * S + 250 * MS);
    assert!(matches!(d.action, Action::Fail { rescue: Some(_) }));
    // The siblings of the stalled path are checked at once.
    assert_eq!(o.check_now, [dev(16)]);
}

#[test]
fn a_retransmission_just_now_waits_the_grace_for_ack_progress() {
    let mut h = two_maps();
    let t = 20 * S;
    let o = block(&mut h, t, 0, stalled(250));
    assert!(o.decisions.is_empty());
    retransmits(&mut h, t + MS, 1);
    assert!(h.tick(t + 20 * MS).decisions.is_empty(), "grace not over");
    // The retransmission got through: completions resume, the stall is over.
    completed(&mut h, t + 30 * MS, 0, t + 25 * MS);
    assert!(h.tick(t + 100 * MS).decisions.is_empty());
    assert_eq!(h.state(dev(0)), Some(PathState::Active));
    assert!(!h.wants_readings());
}

#[test]
fn a_stall_corroborated_by_a_sibling_fails_only_after_stall_sibling() {
    let mut h = two_maps();
    let t = 30 * S;
    let o = block(&mut h, t, 0, stalled(250));
    assert_eq!(o.check_now, [dev(16)]);
    assert!(h.wants_readings());
    // The sibling answers its check at once...
    let o = up(&mut h, t + 5 * MS, 16);
    assert!(
        o.decisions.is_empty(),
        "a 255 ms stall alone is not enough: {o:?}"
    );
    assert!(h.tick(t + 200 * MS).decisions.is_empty());
    // ...and once the stall lasted stall_sibling (500 ms), as a reading from then on
    // shows, the path fails.
    assert!(h.tick(t + 250 * MS).decisions.is_empty(), "no reading yet");
    let o = acked(&mut h, t + 252 * MS, 0, 1000, t - 400 * MS);
    assert_eq!(failed_devs(&o), [dev(0)]);
    assert!(matches!(o.decisions[0].reason, Reason::Stall { by, .. } if by.contains("sibling")));
}

/// A reading of `minor` with nothing completed and its connection's ACKs at `una`.
/// A reading of `minor` with nothing completed; its connection's ACKs last moved at
/// `ack_ns` (the probe's time) to `una`.
fn acked(h: &mut Health, now: Ns, minor: u32, una: u32, ack_ns: Ns) -> Output {
    h.handle(
        now,
        Input::Reading {
            dev: dev(minor),
            reading: Reading {
                inflight: 4,
                oldest: None,
                snd_una: Some(una),
                last_ack_ns: ack_ns,
                last_rcv_ns: 0,
                lost: None,
                ..Reading::default()
            },
        },
    )
}

#[test]
fn a_stall_on_a_slow_but_live_connection_is_not_a_dead_path() {
    // 150 ms of added delay at t: the oldest request is 250 ms old, the connection
    // retransmits spuriously, and the delayed ACKs keep arriving.
    let mut h = two_maps();
    let t = 35 * S;
    acked(&mut h, t - 300 * MS, 0, 1000, t - 310 * MS);
    assert!(block(&mut h, t, 0, stalled(250)).decisions.is_empty());
    retransmits(&mut h, t + 10 * MS, 2);
    up(&mut h, t + 20 * MS, 16);
    completed(&mut h, t + 40 * MS, 16, t + 35 * MS);
    acked(&mut h, t + 50 * MS, 0, 1000, t - 310 * MS);
    acked(&mut h, t + 100 * MS, 0, 1500, t + 90 * MS);
    acked(&mut h, t + 150 * MS, 0, 2000, t + 140 * MS);
    // Past the grace after the retransmission, and past stall_sibling, each judged on a
    // fresh reading: ACKs moved after both, so neither corroborates.
    let mut notes = Vec::new();
    for at in [t + 300 * MS, t + 600 * MS, t + 1500 * MS] {
        let una = 2000 + (at / MS) as u32;
        let o = acked(&mut h, at, 0, una, at - 20 * MS);
        assert!(o.decisions.is_empty(), "at +{} ms: {o:?}", (at - t) / MS);
        notes.extend(o.notes);
        let o = h.tick(at + MS);
        assert!(o.decisions.is_empty(), "at +{} ms: {o:?}", (at - t) / MS);
        notes.extend(o.notes);
    }
    // The wait is said once, with what it waits on (the stall began 250 ms before t).
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("need_ms=2000")
            && notes[0].contains("heard=+")
            && notes[0].contains("sibling_ok=true"),
        "{notes:?}"
    );
    // A request that still has not completed after stall_alive (2 s from its start)
    // while the sibling serves I/O: the path is broken though its transport lives.
    assert!(h.tick(t + 1740 * MS).decisions.is_empty());
    acked(&mut h, t + 1748 * MS, 0, 9000, t + 1700 * MS);
    completed(&mut h, t + 1750 * MS, 16, t + 1700 * MS);
    let o = acked(&mut h, t + 1752 * MS, 0, 9000, t + 1700 * MS);
    assert_eq!(failed_devs(&o), [dev(0)], "{o:?}");
    assert!(matches!(o.decisions[0].reason, Reason::Stall { by, .. } if by.contains("sibling")));
}

#[test]
fn an_ack_from_before_the_stall_does_not_make_a_dead_path_look_alive() {
    // The last reading before the fault was 1 s old: the first reading after the stall
    // sees snd_una moved, but by an ACK from before the fault.
    let mut h = two_maps();
    let t = 38 * S;
    acked(&mut h, t - 1000 * MS, 0, 1000, t - 1000 * MS);
    assert!(block(&mut h, t, 0, stalled(300)).decisions.is_empty());
    up(&mut h, t + 5 * MS, 16);
    completed(&mut h, t + 10 * MS, 16, t + 5 * MS);
    acked(&mut h, t + 50 * MS, 0, 2000, t - 310 * MS);
    completed(&mut h, t + 150 * MS, 16, t + 140 * MS);
    // The silent loss fails after stall_sibling, not stall_alive, once a reading after
    // that deadline shows no newer ACK.
    assert!(
        h.tick(t + 201 * MS).decisions.is_empty(),
        "no fresh reading yet"
    );
    let o = acked(&mut h, t + 205 * MS, 0, 2000, t - 310 * MS);
    assert_eq!(failed_devs(&o), [dev(0)], "{o:?}");
}

/// A reading of `minor` whose connection's ACKs are at `una` after `rtx` retransmissions.
fn lossy(h: &mut Health, now: Ns, minor: u32, una: u32, rtx: u64) -> Output {
    h.handle(
        now,
        Input::Reading {
            dev: dev(minor),
            reading: Reading {
                last_complete_ns: now,
                inflight: 4,
                oldest: None,
                completions: now / MS,
                ok_completions: now / MS,
                snd_una: Some(una),
                retransmits: rtx,
                ..Reading::default()
            },
        },
    )
}

#[test]
fn single_retransmissions_while_acks_move_demote_a_lossy_path() {
    // 5% loss: retransmissions, never two in a row, so no run event; ACKs keep moving.
    let mut h = two_maps();
    let t = 39 * S;
    lossy(&mut h, t, 0, 0, 0);
    assert!(lossy(&mut h, t + S, 0, 200_000, 4).decisions.is_empty());
    let o = lossy(&mut h, t + 2 * S, 0, 400_000, 9);
    assert_eq!(o.decisions.len(), 1, "{o:?}");
    assert_eq!(o.decisions[0].action, Action::Demote);
    assert!(matches!(o.decisions[0].reason, Reason::Loss { events: 9 }));
    // A few spurious tail-loss probes a second on a nearly idle connection are no loss
    // rate (seen in the lab: 2, 1, 3 against 30 KB acked a second demoted a healthy path).
    let mut h = two_maps();
    lossy(&mut h, t, 0, 0, 0);
    lossy(&mut h, t + S, 0, 30_000, 3);
    assert!(lossy(&mut h, t + 2 * S, 0, 60_000, 6).decisions.is_empty());
    // The same counts on a path whose ACKs stopped are the stall rules' business.
    let mut h = two_maps();
    lossy(&mut h, t, 0, 100, 0);
    lossy(&mut h, t + S, 0, 100, 5);
    assert!(lossy(&mut h, t + 2 * S, 0, 100, 9).decisions.is_empty());
    // The same count on a busy connection is under 2% of its traffic: noise.
    let mut h = two_maps();
    lossy(&mut h, t, 0, 0, 0);
    lossy(&mut h, t + S, 0, 5_000_000, 3);
    assert!(
        lossy(&mut h, t + 2 * S, 0, 10_000_000, 7)
            .decisions
            .is_empty()
    );
    // A burst in one reading (a timeout retransmitting a whole flight) is no loss rate.
    let mut h = two_maps();
    lossy(&mut h, t, 0, 100, 0);
    assert!(lossy(&mut h, t + S, 0, 200, 12).decisions.is_empty());
    assert!(lossy(&mut h, t + 2 * S, 0, 300, 12).decisions.is_empty());
    // A few retransmissions spread out are noise.
    let mut h = two_maps();
    for i in 0..10u64 {
        let o = lossy(&mut h, t + i * 3 * S, 0, 100 + i as u32, i * 3);
        assert!(o.decisions.is_empty(), "reading {i}: {o:?}");
    }
}

#[test]
fn a_stuck_request_then_no_completion_at_all_is_a_stall() {
    // Silent loss while four workers have I/O in flight: responses already on the wire
    // still complete for a moment, so the probe first reports one stuck request...
    let mut h = two_maps();
    let t = 36 * S;
    completed(&mut h, t - 400 * MS, 0, t - 400 * MS);
    let o = block(
        &mut h,
        t,
        0,
        BlockSignal::Stalled {
            oldest: Duration::from_millis(260),
            since_completion: Some(Duration::from_millis(40)),
            inflight: 4,
        },
    );
    assert!(o.decisions.is_empty(), "one stuck request alone: {o:?}");
    assert!(h.wants_readings());
    // ...then nothing completes: the readings show the last completion at t - 40 ms.
    let quiet = |h: &mut Health, now: Ns| {
        read(
            h,
            now,
            0,
            Reading {
                last_complete_ns: t - 40 * MS,
                inflight: 4,
                completions: 100,
                ok_completions: 100,
                ..Reading::default()
            },
        )
    };
    assert!(quiet(&mut h, t + 100 * MS).decisions.is_empty());

    let o = quiet(&mut h, t + 220 * MS);
    assert!(o.decisions.is_empty(), "{o:?}");
    assert_eq!(o.check_now, [dev(16)], "a stall now: siblings checked");
    // The connection retransmits without ACK progress: the stall is corroborated.
    retransmits(&mut h, t + 230 * MS, 2);
    let o = quiet(&mut h, t + 435 * MS);
    assert_eq!(failed_devs(&o), [dev(0)], "{o:?}");
}

#[test]
fn a_batch_of_readings_judges_a_stall_as_one_reading_at_a_time_does() {
    // The stall of `a_stuck_request_then_no_completion_at_all_is_a_stall`, with the
    // readings of every path handed over at once as the daemon does.
    let run = |batch: bool| {
        let mut h = two_maps();
        let t = 36 * S;
        completed(&mut h, t - 400 * MS, 0, t - 400 * MS);
        block(&mut h, t, 0, stalled(260));
        let quiet = Reading {
            last_complete_ns: t - 40 * MS,
            inflight: 4,
            completions: 100,
            ok_completions: 100,
            ..Reading::default()
        };
        let busy = |now: Ns| Reading {
            last_complete_ns: now - MS,
            inflight: 1,
            completions: now / MS,
            ok_completions: now / MS,
            ..Reading::default()
        };
        let mut outs = Vec::new();
        for (i, now) in [t + 100 * MS, t + 220 * MS, t + 435 * MS]
            .into_iter()
            .enumerate()
        {
            if i == 2 {
                retransmits(&mut h, t + 230 * MS, 2);
            }
            let all = [
                (dev(0), quiet),
                (dev(16), busy(now)),
                (dev(32), busy(now)),
                (dev(48), busy(now)),
            ];
            let o = if batch {
                h.handle_readings(now, all)
            } else {
                let mut o = Output::default();
                for (d, r) in all {
                    let x = h.handle(now, Input::Reading { dev: d, reading: r });
                    o.decisions.extend(x.decisions);
                    o.check_now.extend(x.check_now);
                }
                o
            };
            outs.push((failed_devs(&o), o.check_now));
        }
        outs
    };
    let one_by_one = run(false);
    assert_eq!(one_by_one[2].0, [dev(0)], "{one_by_one:?}");
    assert_eq!(run(true), one_by_one);
}

#[test]
fn retransmissions_after_the_last_ack_still_corroborate() {
    let mut h = two_maps();
    let t = 37 * S;
    acked(&mut h, t - 300 * MS, 0, 1000, t - 300 * MS);
    acked(&mut h, t - 100 * MS, 0, 2000, t - 120 * MS);
    assert!(block(&mut h, t, 0, stalled(250)).decisions.is_empty());
    retransmits(&mut h, t + 10 * MS, 2);
    acked(&mut h, t + 100 * MS, 0, 2000, t - 120 * MS);
    assert!(
        h.tick(t + 212 * MS).decisions.is_empty(),
        "no reading after the grace"
    );
    // The grace after the retransmission has passed, but the target was heard from only
    // 335 ms ago: a slower link's next answer may still come.
    let o = acked(&mut h, t + 215 * MS, 0, 2000, t - 120 * MS);
    assert!(o.decisions.is_empty(), "{o:?}");
    // Silent for twice the grace (400 ms): dead.
    let o = acked(&mut h, t + 285 * MS, 0, 2000, t - 120 * MS);
    assert_eq!(failed_devs(&o), [dev(0)], "{o:?}");
    assert!(
        matches!(o.decisions[0].reason, Reason::Stall { by, .. } if by.contains("retransmissions"))
    );
}

/// Found in CI: the kernel's tcp_probe tracepoint fires before a segment's ACK is
/// processed, so on a link that just got 150 ms slower the ACK of a spurious
/// retransmission showed as snd_una progress only with the next segment, after the grace:
/// the healthy path was failed. A segment heard from the target after the retransmission
/// keeps it.
#[test]
fn a_segment_heard_after_the_retransmission_is_a_live_path() {
    let mut h = two_maps();
    let t = 37 * S;
    acked(&mut h, t - 300 * MS, 0, 1000, t - 300 * MS);
    assert!(block(&mut h, t, 0, stalled(250)).decisions.is_empty());
    retransmits(&mut h, t + 10 * MS, 2);
    // The target's ACK arrives 160 ms after the retransmission; snd_una as the probe
    // saw it has not moved since before the stall.
    let heard = |h: &mut Health, now: Ns| {
        read(
            h,
            now,
            0,
            Reading {
                inflight: 4,
                snd_una: Some(1000),
                last_ack_ns: t - 300 * MS,
                last_rcv_ns: t + 170 * MS,
                lost: None,
                ..Reading::default()
            },
        )
    };
    for i in 0..15 {
        let now = t + 215 * MS + i * 100 * MS;
        let o = heard(&mut h, now);
        assert!(
            failed_devs(&o).is_empty(),
            "at +{} ms: {o:?}",
            (now - t) / MS
        );
        // The sibling serves I/O meanwhile: a live path waits `stall_alive` for it.
        let o = completed(&mut h, now + MS, 16, now);
        assert!(
            failed_devs(&o).is_empty(),
            "at +{} ms: {o:?}",
            (now - t) / MS
        );
    }
    assert_eq!(h.state(dev(0)), Some(PathState::Active));
    // The same retransmission with nothing heard since: dead.
    let mut h = two_maps();
    acked(&mut h, t - 300 * MS, 0, 1000, t - 300 * MS);
    block(&mut h, t, 0, stalled(250));
    retransmits(&mut h, t + 10 * MS, 2);
    let o = acked(&mut h, t + 215 * MS, 0, 1000, t - 300 * MS);
    assert_eq!(failed_devs(&o), [dev(0)], "{o:?}");
}

/// A tail-loss probe shortly after the link got 150 ms slower: its answer comes a whole
/// new round trip later, and under TCG later still. The target was heard from just before,
/// so the retransmission alone does not make the path dead until the target has been
/// silent for twice the grace.
#[test]
fn a_late_answer_to_a_tail_loss_probe_is_waited_for() {
    let mut h = two_maps();
    let t = 37 * S;
    let reading = |h: &mut Health, now: Ns, rcv: Ns| {
        read(
            h,
            now,
            0,
            Reading {
                inflight: 4,
                snd_una: Some(1000),
                last_ack_ns: t - 300 * MS,
                last_rcv_ns: rcv,
                lost: None,
                ..Reading::default()
            },
        )
    };
    reading(&mut h, t - 40 * MS, t - 50 * MS);
    assert!(block(&mut h, t, 0, stalled(250)).decisions.is_empty());
    retransmits(&mut h, t + 20 * MS, 2);
    let o = reading(&mut h, t + 225 * MS, t - 50 * MS);
    assert!(o.decisions.is_empty(), "heard 275 ms ago: {o:?}");
    let o = reading(&mut h, t + 300 * MS, t + 250 * MS);
    assert!(o.decisions.is_empty(), "answered: {o:?}");
    assert_eq!(h.state(dev(0)), Some(PathState::Active));
}

/// Seen in the lab: 150 ms of delay raised the smoothed RTT to 143 ms, then 151 ms, in
/// two readings; the engine learned them as the baseline (limit 8 x 18 ms, then
/// 8 x 35 ms) before the probe's event fired, and the path was never demoted. A sample
/// over the limit is a signal, never a lesson.
#[test]
fn a_slow_rtt_is_not_learned_and_demotes_from_the_reading() {
    let mut h = two_maps();
    let t = 20 * S;
    let rtt = |h: &mut Health, now: Ns, ms: f64| {
        read(
            h,
            now,
            0,
            Reading {
                last_complete_ns: now,
                inflight: 1,
                completions: now / MS,
                ok_completions: now / MS,
                ewma: Duration::from_millis(2),
                srtt: Duration::from_secs_f64(ms / 1000.0),
                ..Reading::default()
            },
        )
    };
    for i in 0..10 {
        assert!(rtt(&mut h, t + i * S, 0.6).decisions.is_empty());
    }
    let o = rtt(&mut h, t + 10 * S, 143.0);
    let [d] = o.decisions.as_slice() else {
        panic!("{o:?}")
    };
    assert_eq!((d.dev, d.to), (dev(0), PathState::Degraded));
    assert!(matches!(d.reason, Reason::SlowRtt { .. }), "{d:?}");
    // The limit is still the floor: the slow samples taught nothing.
    assert_eq!(h.limits(dev(0)).unwrap().rtt, Duration::from_millis(100));
}

/// Seen in the lab: 5% loss on the active path, a retransmission timeout (55 segments at
/// once), the target silent meanwhile, a stall reported between two readings that showed
/// the loss, and the sibling rule failed the lossy but live path at 532 ms. A path losing
/// packets just now waits `stall_alive` for the sibling rule, as a live one does.
#[test]
fn a_stall_right_after_loss_waits_as_a_live_path_does() {
    let mut h = two_maps();
    let t = 30 * S;
    let lossy = |h: &mut Health, now: Ns, una: u32, retransmits: u64| {
        read(
            h,
            now,
            0,
            Reading {
                inflight: 4,
                snd_una: Some(una),
                retransmits,
                ..Reading::default()
            },
        )
    };
    lossy(&mut h, t - 900 * MS, 1_000, 0);
    lossy(&mut h, t - 400 * MS, 60_000, 55);
    assert!(block(&mut h, t, 0, stalled(300)).decisions.is_empty());
    let o = lossy(&mut h, t + 50 * MS, 70_000, 63);
    assert!(failed_devs(&o).is_empty(), "{o:?}");
    for i in 1..=14 {
        let now = t + i * 100 * MS;
        let o = completed(&mut h, now, 16, now);
        assert!(
            failed_devs(&o).is_empty(),
            "at +{} ms: {o:?}",
            (now - t) / MS
        );
        let o = lossy(&mut h, now + MS, 70_000, 63);
        assert!(
            failed_devs(&o).is_empty(),
            "at +{} ms: {o:?}",
            (now - t) / MS
        );
    }
}

/// daemon-gray's 5% loss with 4 KB I/O: 2 to 5 retransmissions a second against 2 to
/// 3 MB acked, under the loss rule's share and no more than a healthy path's spurious
/// tail-loss probes under emulation. Then a retransmission timeout with the
/// retransmission lost too: the target silent for over 0.5 s, and the sibling rule failed
/// the path at 510 ms. What tells the two apart is the kernel's `tcp_info`: the target
/// D-SACKs every spurious probe (a healthy path's lost count stays put, 40 readings in
/// the lab), while a lossy path's lost count climbs (35 to 119 a second at 5%).
#[test]
fn a_stall_after_data_was_lost_waits_as_a_live_path_does_and_spurious_probes_do_not() {
    let reading = |una: u32, retransmits: u64, lost: u64| Reading {
        inflight: 4,
        snd_una: Some(una),
        retransmits,
        lost: Some(lost),
        ..Reading::default()
    };
    for (case, lost_per_s) in [("lossy", 3), ("healthy", 0)] {
        let mut h = two_maps();
        let t = 30 * S;
        for i in 0..4u64 {
            let at = t - (4 - i) * S + 100 * MS;
            let o = read(
                &mut h,
                at,
                0,
                reading(1 + i as u32 * 2_500_000, 3 * i, lost_per_s * i),
            );
            assert!(o.decisions.is_empty(), "{case}: {o:?}");
        }
        assert!(block(&mut h, t, 0, stalled(300)).decisions.is_empty());
        let mut failed_at = None;
        for i in 1..=14 {
            let now = t + i * 100 * MS;
            completed(&mut h, now, 16, now);
            let o = read(&mut h, now + MS, 0, reading(7_500_001, 9, lost_per_s * 3));
            if !failed_devs(&o).is_empty() {
                failed_at = Some(i * 100);
                break;
            }
        }
        match case {
            "lossy" => assert_eq!(failed_at, None, "lost data: waits stall_alive"),
            _ => assert_eq!(failed_at, Some(200), "spurious probes only: stall_sibling"),
        }
    }
}

/// The daemon ticks the engine 20 times a second only while it asks for it.
#[test]
fn fast_ticks_only_while_something_waits_for_corroboration() {
    let mut h = two_maps();
    assert!(!h.wants_ticks(), "idle");
    block(&mut h, 10 * S, 0, stalled(300));
    assert!(h.wants_ticks(), "a stall waits for corroboration");
    completed(&mut h, 10 * S + 100 * MS, 0, 10 * S + 90 * MS);
    assert!(!h.wants_ticks(), "the stall ended");
    // A connection retransmitting twice in a row on a path with no completion seen yet.
    let mut h = two_maps();
    retransmits(&mut h, 20 * S, 2);
    assert!(h.wants_ticks());
}

#[test]
fn the_same_stall_on_every_path_of_a_map_fails_nothing() {
    let mut h = two_maps();
    let t = 40 * S;
    block(&mut h, t, 0, stalled(250));
    block(&mut h, t + MS, 16, stalled(250));
    // Even with retransmissions on both connections (the array stopped answering).
    for (port, portal) in [(40001, 1), (40002, 2)] {
        h.handle(
            t + 2 * MS,
            Input::Conn {
                conn: conn(port, portal),
                at_ns: t + 2 * MS,
                signal: ConnSignal::Retransmits { consecutive: 1 },
            },
        );
    }
    for i in 1..100 {
        let o = h.tick(t + i * 100 * MS);
        assert!(failed_devs(&o).is_empty(), "{o:?}");
    }
    assert_eq!(h.state(dev(0)), Some(PathState::Active));
    assert_eq!(h.state(dev(16)), Some(PathState::Active));
}

#[test]
fn a_stall_on_the_last_usable_path_is_never_corroborated() {
    let mut h = two_maps();
    h.handle(
        S,
        Input::Conn {
            conn: conn(40002, 2),
            at_ns: S,
            signal: ConnSignal::Reset,
        },
    );
    let t = 50 * S;
    block(&mut h, t, 0, stalled(250));
    retransmits(&mut h, t + MS, 2);
    let o = h.tick(t + 2 * S);
    assert!(failed_devs(&o).is_empty(), "{o:?}");
    assert_eq!(h.state(dev(0)), Some(PathState::Active));
}

/// A reading of a path that completes I/O (`at`) with its oldest request `oldest_ms` old.
fn stuck_reading(h: &mut Health, now: Ns, minor: u32, oldest_ms: Option<u64>) -> Output {
    read(
        h,
        now,
        minor,
        Reading {
            last_complete_ns: now - MS,
            inflight: 4,
            oldest: oldest_ms.map(Duration::from_millis),
            completions: now / MS,
            ok_completions: now / MS,
            ..Reading::default()
        },
    )
}

fn stuck(h: &mut Health, now: Ns, minor: u32, oldest_ms: u64) -> Output {
    block(
        h,
        now,
        minor,
        BlockSignal::Stalled {
            oldest: Duration::from_millis(oldest_ms),
            since_completion: Some(Duration::from_millis(3)),
            inflight: 4,
        },
    )
}

#[test]
fn a_stuck_request_that_persists_while_the_path_completes_others_demotes_it() {
    let mut h = two_maps();
    let t = 60 * S;
    let o = stuck(&mut h, t, 0, 300);
    assert!(o.decisions.is_empty(), "not yet: {o:?}");
    // Still there in the first reading after the report...
    assert!(
        stuck_reading(&mut h, t + 20 * MS, 0, Some(320))
            .decisions
            .is_empty()
    );
    assert!(
        stuck_reading(&mut h, t + 50 * MS, 0, Some(350))
            .decisions
            .is_empty()
    );
    // ...and 50 ms later.
    let o = stuck_reading(&mut h, t + 70 * MS, 0, Some(370));
    let [d] = o.decisions.as_slice() else {
        panic!("{o:?}")
    };
    assert_eq!((d.to, &d.action), (PathState::Degraded, &Action::Demote));
    assert_eq!(
        d.reason,
        Reason::StuckRequest {
            oldest: Duration::from_millis(370)
        }
    );
    assert_eq!(d.signal_ns, t, "timed from the probe's report");
    assert_eq!(h.demoted().into_iter().collect::<Vec<_>>(), [dev(0)]);
}

#[test]
fn a_request_stuck_through_a_pause_of_the_host_demotes_nothing() {
    // The whole guest stalled half a second: one request on a healthy path was over the
    // limit when the probe looked, and done by the next reading.
    let mut h = two_maps();
    let t = 60 * S;
    assert!(stuck(&mut h, t, 16, 322).decisions.is_empty());
    // The loop ran late too: its first reading still saw the request, the next did not.
    assert!(
        stuck_reading(&mut h, t + 30 * MS, 16, Some(350))
            .decisions
            .is_empty()
    );
    for i in 1..=20 {
        let o = stuck_reading(&mut h, t + i * 100 * MS, 16, Some(20));
        assert!(o.decisions.is_empty(), "reading {i}: {o:?}");
        assert!(h.tick(t + i * 100 * MS).decisions.is_empty());
    }
    assert_eq!(h.state(dev(16)), Some(PathState::Active));
    // Another pause: over the limit again in one reading, gone in the next.
    assert!(stuck(&mut h, t + 3 * S, 16, 300).decisions.is_empty());
    assert!(
        stuck_reading(&mut h, t + 3 * S + 10 * MS, 16, Some(310))
            .decisions
            .is_empty()
    );
    assert!(
        stuck_reading(&mut h, t + 3 * S + 100 * MS, 16, None)
            .decisions
            .is_empty()
    );
    assert!(
        stuck_reading(&mut h, t + 3 * S + 200 * MS, 16, Some(260))
            .decisions
            .is_empty()
    );
    assert_eq!(h.state(dev(16)), Some(PathState::Active));
}

#[test]
fn a_soft_signal_never_demotes_the_last_active_path_of_a_map() {
    // sda is demoted (150 ms of delay); then sdb, the one active path left, has a
    // request stuck for half a second: demoting it would put I/O back on sda.
    let mut h = two_maps();
    let t = 60 * S;
    let slow = BlockSignal::Slow {
        latency: Duration::from_millis(150),
        count: 8,
    };
    assert_eq!(
        block(&mut h, t, 0, slow).decisions[0].action,
        Action::Demote
    );
    let later = t + 5 * S;
    assert!(stuck(&mut h, later, 16, 300).decisions.is_empty());
    for i in 1..=10 {
        let o = stuck_reading(&mut h, later + i * 50 * MS, 16, Some(300 + i * 50));
        assert!(o.decisions.is_empty(), "{o:?}");
    }
    assert_eq!(h.state(dev(16)), Some(PathState::Active));
    assert_eq!(h.demoted().into_iter().collect::<Vec<_>>(), [dev(0)]);
    // A hard signal still fails it: the rule is about soft ones.
    let o = block(
        &mut h,
        later + 2 * S,
        16,
        BlockSignal::Error {
            class: ErrorClass::Path,
            errno: -5,
        },
    );
    assert_eq!(failed_devs(&o), [dev(16)], "{o:?}");
}

#[test]
fn slow_completions_demote_persist_to_failed_and_never_fail_the_last_path() {
    let mut h = two_maps();
    let slow = BlockSignal::Slow {
        latency: Duration::from_millis(150),
        count: 3,
    };
    let o = block(&mut h, 70 * S, 0, slow);
    assert_eq!(o.decisions[0].action, Action::Demote);
    // Signals keep coming: after soft_persist (60 s) it fails, sdb being usable.
    let mut failed_at = None;
    for i in 1..=70 {
        let now = 70 * S + i * S;
        block(&mut h, now, 0, slow);
        if !failed_devs(&h.tick(now)).is_empty() {
            failed_at = Some(i);
            break;
        }
    }
    assert_eq!(failed_at, Some(60));
    // sdb is now the last usable path of map a: slow forever, it stays degraded.
    block(&mut h, 200 * S, 16, slow);
    assert_eq!(
        h.state(dev(16)),
        Some(PathState::Active),
        "nothing to move I/O to"
    );
    for i in 0..200 {
        let now = 200 * S + i * S;
        block(&mut h, now, 16, slow);
        assert!(failed_devs(&h.tick(now)).is_empty());
    }
}

#[test]
fn a_degraded_path_comes_back_after_a_quiet_period_with_a_clean_check() {
    let mut h = two_maps();
    let o = h.handle(
        80 * S,
        Input::Conn {
            conn: conn(40002, 2),
            at_ns: 80 * S,
            signal: ConnSignal::SlowRtt {
                srtt: Duration::from_millis(150),
            },
        },
    );
    // The RTT is the connection's: both paths on it are demoted.
    let demoted: Vec<DevT> = o.decisions.iter().map(|d| d.dev).collect();
    assert_eq!(demoted, [dev(16), dev(48)]);
    // Quiet for 10 s, but no check yet: still degraded.
    assert!(h.tick(91 * S).decisions.is_empty());
    // A slow check keeps it degraded and restarts the quiet period.
    h.handle(
        92 * S,
        Input::Check {
            dev: dev(16),
            verdict: CheckVerdict::Up {
                took: Duration::from_millis(400),
            },
        },
    );
    up(&mut h, 95 * S, 16);
    assert!(h.tick(100 * S).decisions.is_empty());
    let o = h.tick(102 * S);
    assert_eq!(o.decisions.len(), 1, "{o:?}");
    assert_eq!(
        (
            o.decisions[0].dev,
            o.decisions[0].to,
            &o.decisions[0].action
        ),
        (dev(16), PathState::Active, &Action::Restore)
    );
}

#[test]
fn repeated_retransmission_runs_are_a_soft_signal() {
    let mut h = two_maps();
    let c = conn(40001, 1);
    let mut decisions = Vec::new();
    for i in 0..3 {
        let at = 100 * S + i * 300 * MS;
        decisions.extend(
            h.handle(
                at,
                Input::Conn {
                    conn: c,
                    at_ns: at,
                    signal: ConnSignal::Retransmits { consecutive: 1 },
                },
            )
            .decisions,
        );
    }
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    assert!(decisions.iter().all(|d| d.to == PathState::Degraded));
    // Runs spread wider than the window are not.
    let mut h = two_maps();
    for i in 0..10 {
        let at = 100 * S + i * 3 * S;
        let o = h.handle(
            at,
            Input::Conn {
                conn: c,
                at_ns: at,
                signal: ConnSignal::Retransmits { consecutive: 1 },
            },
        );
        assert!(o.decisions.is_empty());
    }
}

#[test]
fn the_checker_fails_an_idle_path_and_reinstates_it_after_n_clean_checks() {
    let mut h = two_maps();
    let o = h.handle(
        10 * S,
        Input::Check {
            dev: dev(32),
            verdict: CheckVerdict::Down {
                why: "TUR: host byte DID_TRANSPORT_FAILFAST".into(),
                ambiguous: false,
            },
        },
    );
    assert_eq!(failed_devs(&o), [dev(32)]);
    // A checker failure is not a connection signal: no rescue.
    assert_eq!(o.decisions[0].action, Action::Fail { rescue: None });
    let o = timed_out(&mut h, 11 * S, 48);
    assert_eq!(failed_devs(&o), [dev(48)]);
    // Map b has no usable path left: both are checked every second from now.
    assert_eq!(h.pathless(), BTreeSet::from([dev(32), dev(48)]));
    // The first clean check of either brings it back at once: any path beats none.
    let o = up(&mut h, 15 * S, 32);
    assert_eq!(o.decisions.last().unwrap().action, Action::Reinstate);
    assert_eq!(h.state(dev(32)), Some(PathState::Active));
    assert!(h.pathless().is_empty());
    // With a sibling carrying the I/O again, the other one waits for probation.
    let o = up(&mut h, 16 * S, 48);
    assert_eq!(o.decisions[0].to, PathState::Probation);
    assert_eq!(o.decisions[0].action, Action::None, "still failed in dm");
    assert_eq!(h.held_down("b"), [dev(48)]);
    // Second clean check: reinstated (reinstate_checks = 2, no flap yet so no hold).
    let o = up(&mut h, 17 * S, 48);
    assert_eq!(o.decisions[0].action, Action::Reinstate);
    // A bad check in probation sends the path back.
    up(&mut h, 21 * S, 32);
    let o = timed_out(&mut h, 22 * S, 32);
    assert_eq!(failed_devs(&o), [dev(32)]);
    up(&mut h, 23 * S, 32);
    let o = timed_out(&mut h, 24 * S, 32);
    assert_eq!(o.decisions[0].to, PathState::Failed);
    assert_eq!(o.decisions[0].action, Action::None, "already failed in dm");
}

/// A flapping path is held back while a sibling carries the I/O, never while it is the
/// only path that could: then the hold would only lengthen the outage.
#[test]
fn the_flap_hold_never_keeps_a_map_without_any_path() {
    let mut h = two_maps();
    // sda flaps: failed, back after two checks, failed again within a second.
    reset(&mut h, 10 * S);
    up(&mut h, 11 * S, 0);
    assert_eq!(up(&mut h, 12 * S, 0).decisions[0].action, Action::Reinstate);
    reset(&mut h, 13 * S);
    // Back up, but held: sdb serves map a.
    up(&mut h, 14 * S, 0);
    let o = up(&mut h, 14 * S + 500 * MS, 0);
    assert!(o.decisions.is_empty(), "{o:?}");
    assert_eq!(h.state(dev(0)), Some(PathState::Probation));
    // sdb dies within the hold: map a has nothing but the held path, which comes back
    // on its next check.
    let o = timed_out(&mut h, 15 * S, 16);
    assert_eq!(failed_devs(&o), [dev(16)]);
    assert_eq!(h.pathless(), BTreeSet::from([dev(0), dev(16)]));
    let o = up(&mut h, 15 * S + 500 * MS, 0);
    assert_eq!(o.decisions[0].action, Action::Reinstate);
    assert_eq!(h.state(dev(0)), Some(PathState::Active));
}

#[test]
fn a_session_that_is_not_logged_in_fails_its_path() {
    let mut h = two_maps();
    let o = h.handle(
        S,
        Input::Session {
            dev: dev(32),
            logged_in: false,
        },
    );
    assert_eq!(failed_devs(&o), [dev(32)]);
    assert_eq!(o.decisions[0].reason, Reason::SessionDown);
    assert!(
        h.handle(
            2 * S,
            Input::Session {
                dev: dev(0),
                logged_in: true
            }
        )
        .decisions
        .is_empty()
    );
}

#[test]
fn a_path_flapping_every_second_is_failed_once_and_not_reinstated() {
    let mut h = two_maps();
    // Down/up every second for 60 s, checked every second: never two clean checks in a
    // row, so it is failed once and stays out of use.
    let mut dm_actions = 0;
    for sec in 0..60u64 {
        let now = 1000 * S + sec * S;
        let o = if sec % 2 == 0 {
            reset(&mut h, now)
        } else {
            up(&mut h, now, 0)
        };
        // What reaches device-mapper (and so the I/O) is what must stay bounded; moving
        // between failed and probation changes nothing there.
        dm_actions += o
            .decisions
            .iter()
            .filter(|d| d.dev == dev(0) && d.action != Action::None)
            .count();
    }
    assert_eq!(dm_actions, 1);
    assert_eq!(h.state(dev(0)), Some(PathState::Probation));
}

#[test]
fn a_path_that_keeps_failing_soon_after_it_came_back_waits_longer_each_time() {
    let mut h = two_maps();
    let mut reinstated = Vec::new();
    let mut active_since = None;
    for sec in 0..400u64 {
        let now = 1000 * S + sec * S;
        match (h.state(dev(0)), active_since) {
            // Each time it has served 1 s, it dies again.
            (Some(PathState::Active), Some(t)) if sec > t => {
                reset(&mut h, now);
                active_since = None;
            }
            (Some(PathState::Active), _) => {
                active_since.get_or_insert(sec);
            }
            _ => {
                let o = up(&mut h, now, 0);
                if o.decisions.iter().any(|d| d.action == Action::Reinstate) {
                    reinstated.push(sec);
                    active_since = Some(sec);
                }
            }
        }
    }
    let gaps: Vec<u64> = reinstated.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 5, "{reinstated:?}");
    // The hold doubles (2, 4, 8... s) up to flap_hold_max (120 s).
    assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
    assert!(gaps.last().unwrap() >= &64, "{gaps:?}");
    assert!(gaps.iter().all(|&g| g <= 125), "{gaps:?}");
    assert!(h.view(dev(0)).unwrap().flaps >= 5);
}

#[test]
fn admin_fail_sticks_until_admin_reinstate() {
    let mut h = two_maps();
    let o = h.handle(S, Input::AdminFail { dev: dev(0) });
    assert_eq!(o.decisions[0].to, PathState::AdminFailed);
    assert_eq!(o.decisions[0].action, Action::Fail { rescue: None });
    for i in 2..10 {
        assert!(up(&mut h, i * S, 0).decisions.is_empty());
    }
    assert_eq!(h.held_down("a"), [dev(0)]);
    let o = h.handle(10 * S, Input::AdminReinstate { dev: dev(0) });
    assert_eq!(o.decisions[0].action, Action::Reinstate);
    assert_eq!(h.state(dev(0)), Some(PathState::Active));
}

#[test]
fn a_generic_error_fails_the_path_only_when_a_sibling_serves_io() {
    let eio = BlockSignal::Error {
        class: ErrorClass::Generic,
        errno: -5,
    };
    // The LUN returns EIO on both paths (medium errors seen as EIO): nothing fails.
    let mut h = two_maps();
    let o = block(&mut h, 10 * S, 0, eio);
    assert!(o.decisions.is_empty());
    assert_eq!(o.check_now, [dev(16)]);
    let o = block(&mut h, 10 * S + MS, 16, eio);
    assert!(failed_devs(&o).is_empty(), "{o:?}");
    assert!(failed_devs(&h.tick(11 * S)).is_empty());
    assert_eq!(h.state(dev(0)), Some(PathState::Active));
    assert!(h.view(dev(0)).unwrap().lun_errors >= 1);
    // Only sda errs and sdb answers its check: sda fails.
    let mut h = two_maps();
    block(&mut h, 10 * S, 0, eio);
    let o = up(&mut h, 10 * S + 3 * MS, 16);
    assert_eq!(failed_devs(&o), [dev(0)]);
}

#[test]
fn the_kernel_failing_a_path_is_followed_without_a_message() {
    let mut h = two_maps();
    let o = h.handle(
        S,
        Input::DmState {
            dev: dev(0),
            failed: true,
            read_ns: S - MS,
        },
    );
    assert_eq!(o.decisions[0].to, PathState::Failed);
    assert_eq!(o.decisions[0].action, Action::None);
    assert_eq!(o.decisions[0].reason, Reason::KernelFailed);
    // A status read before mpathd reinstated the path is older than the reinstate.
    up(&mut h, 2 * S, 0);
    up(&mut h, 3 * S, 0);
    assert_eq!(h.state(dev(0)), Some(PathState::Active));
    let o = h.handle(
        3 * S + MS,
        Input::DmState {
            dev: dev(0),
            failed: true,
            read_ns: 3 * S - MS,
        },
    );
    assert!(o.decisions.is_empty(), "{o:?}");
    assert_eq!(h.state(dev(0)), Some(PathState::Active));
    // A new path that dm already has failed starts failed.
    h.set_paths(
        vec![PathInfo {
            dev: dev(64),
            name: "sde".into(),
            map: "c".into(),
            session: None,
            conn: None,
            dm_failed: true,
        }],
        2 * S,
    );
    assert_eq!(h.state(dev(64)), Some(PathState::Failed));
    assert_eq!(h.state(dev(0)), None, "paths not listed are forgotten");
}

#[test]
fn limits_are_learned_from_a_healthy_baseline_with_floors() {
    let mut h = two_maps();
    let floor = h.config().latency_floor;
    assert_eq!(h.limits(dev(0)).unwrap().latency, floor);
    // A path whose healthy latency is 40 ms gets a limit of 8 x 40 ms.
    for i in 1..200u64 {
        h.handle(
            i * S,
            Input::Reading {
                dev: dev(0),
                reading: Reading {
                    last_complete_ns: i * S,
                    inflight: 1,
                    oldest: None,
                    completions: i * 100,
                    ok_completions: i * 100,
                    ewma: Duration::from_millis(40),
                    srtt: Duration::from_millis(20),
                    snd_una: None,
                    retransmits: 0,
                    last_ack_ns: 0,
                    last_rcv_ns: 0,
                    lost: None,
                },
            },
        );
    }
    let Limits {
        latency: lat, rtt, ..
    } = h.limits(dev(0)).unwrap();
    assert!(
        lat > Duration::from_millis(300) && lat <= Duration::from_millis(320),
        "{lat:?}"
    );
    assert!(
        rtt > Duration::from_millis(150) && rtt <= Duration::from_millis(160),
        "{rtt:?}"
    );
    // A degraded path does not learn: slow must not become normal.
    block(
        &mut h,
        300 * S,
        0,
        BlockSignal::Slow {
            latency: Duration::from_secs(1),
            count: 3,
        },
    );
    for i in 301..400u64 {
        h.handle(
            i * S,
            Input::Reading {
                dev: dev(0),
                reading: Reading {
                    last_complete_ns: i * S,
                    inflight: 1,
                    oldest: None,
                    completions: i * 100,
                    ok_completions: i * 100,
                    ewma: Duration::from_secs(1),
                    srtt: Duration::from_millis(500),
                    snd_una: None,
                    retransmits: 0,
                    last_ack_ns: 0,
                    last_rcv_ns: 0,
                    lost: None,
                },
            },
        );
    }
    let l = h.limits(dev(0)).unwrap();
    assert_eq!((l.latency, l.rtt), (lat, rtt));
    // The stall limit follows the connection's RTT now: three round trips of 500 ms.
    assert_eq!(l.stall, Duration::from_millis(1500));
}

#[test]
fn every_state_has_a_name_and_only_active_and_degraded_are_usable() {
    let names: Vec<&str> = PathState::ALL.iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        ["active", "degraded", "failed", "probation", "admin-failed"]
    );
    let usable: Vec<PathState> = PathState::ALL.into_iter().filter(|s| s.usable()).collect();
    assert_eq!(usable, [PathState::Active, PathState::Degraded]);
    assert_eq!(
        serde_json::to_string(&PathState::AdminFailed).unwrap(),
        "\"admin-failed\""
    );
}

#[test]
fn an_ambiguous_checker_error_on_every_path_is_the_luns_and_fails_nothing() {
    let down = |h: &mut Health, now: Ns, minor: u32| {
        h.handle(
            now,
            Input::Check {
                dev: dev(minor),
                verdict: CheckVerdict::Down {
                    why: "read of block 0: Input/output error (os error 5)".into(),
                    ambiguous: true,
                },
            },
        )
    };
    // Both paths of map a read back EIO (the LUN's backend fails): nothing fails.
    let mut h = two_maps();
    let o = down(&mut h, 10 * S, 0);
    assert!(o.decisions.is_empty());
    assert_eq!(o.check_now, [dev(16)]);
    let o = down(&mut h, 10 * S + MS, 16);
    assert!(failed_devs(&o).is_empty(), "{o:?}");
    assert!(failed_devs(&h.tick(20 * S)).is_empty());
    assert_eq!(h.state(dev(0)), Some(PathState::Active));
    assert_eq!(h.state(dev(16)), Some(PathState::Active));
    // Only sda errs and sdb serves its check: sda fails, with the checker's words.
    let mut h = two_maps();
    down(&mut h, 10 * S, 0);
    let o = up(&mut h, 10 * S + 5 * MS, 16);
    assert_eq!(failed_devs(&o), [dev(0)]);
    assert!(
        matches!(&o.decisions[0].reason, Reason::CheckerDown { why } if why.contains("os error 5")),
        "{o:?}"
    );
    // A transport failure needs no sibling.
    let mut h = two_maps();
    let o = h.handle(
        S,
        Input::Check {
            dev: dev(0),
            verdict: CheckVerdict::Down {
                why: "opening /dev/sda: No such device or address".into(),
                ambiguous: false,
            },
        },
    );
    assert_eq!(failed_devs(&o), [dev(0)]);
}

#[test]
fn slow_completions_on_every_path_of_a_map_are_not_a_path_problem() {
    let slow = BlockSignal::Slow {
        latency: Duration::from_millis(180),
        count: 8,
    };
    // sdb alone slow: demoted.
    let mut h = two_maps();
    let o = block(&mut h, 10 * S, 16, slow);
    assert_eq!(o.decisions[0].to, PathState::Degraded);
    // sdd slow, then sdc within the window: sdd could not be told apart yet, but sdc
    // shows the whole map is slow (the host, the LUN) and stays in use.
    let mut h = two_maps();
    assert_eq!(block(&mut h, 9 * S, 48, slow).decisions.len(), 1);
    let o = block(&mut h, 9 * S + 100 * MS, 32, slow);
    assert!(o.decisions.is_empty(), "{o:?}");
    assert_eq!(h.state(dev(32)), Some(PathState::Active));
}

#[test]
fn on_a_slow_connection_a_long_gap_is_a_stuck_request_not_a_stall() {
    let mut h = two_maps();
    // sda's connection has a 150 ms RTT (a slow network, a long link).
    h.handle(
        S,
        Input::Reading {
            dev: dev(0),
            reading: Reading {
                last_complete_ns: S,
                inflight: 2,
                oldest: None,
                completions: 10,
                ok_completions: 10,
                ewma: Duration::from_millis(160),
                srtt: Duration::from_millis(150),
                snd_una: None,
                retransmits: 0,
                last_ack_ns: 0,
                last_rcv_ns: 0,
                lost: None,
            },
        },
    );
    assert_eq!(h.limits(dev(0)).unwrap().stall, Duration::from_millis(450));
    // A 300 ms gap with a retransmission is that network's normal, not a dead path.
    retransmits(&mut h, 2 * S, 2);
    let o = block(&mut h, 2 * S + 300 * MS, 0, stalled(300));
    assert!(failed_devs(&o).is_empty(), "{o:?}");
    assert!(failed_devs(&h.tick(2 * S + 400 * MS)).is_empty());
}

#[test]
fn after_a_restart_mid_fault_two_silent_retransmissions_fail_a_path_that_completed_nothing() {
    // The daemon restarted while sda's I/O was stuck: the probes never saw it issued, so
    // no stall comes; sda has completed nothing since it was watched.
    let mut h = two_maps();
    let t = 50 * S;
    acked(&mut h, t, 0, 1000, t - 2 * S);
    up(&mut h, t + 10 * MS, 16);
    completed(&mut h, t + 20 * MS, 16, t + 15 * MS);
    completed(&mut h, t + 30 * MS, 16, t + 25 * MS);
    let c = conn(40001, 1);
    let o = h.handle(
        t + 100 * MS,
        Input::Conn {
            conn: c,
            at_ns: t + 100 * MS,
            signal: ConnSignal::Retransmits { consecutive: 2 },
        },
    );
    assert!(failed_devs(&o).is_empty(), "{o:?}");
    // A reading after the grace, with no ACK since: dead.
    let o = acked(&mut h, t + 320 * MS, 0, 1000, t - 2 * S);
    assert_eq!(failed_devs(&o), [dev(0)], "{o:?}");
    assert_eq!(o.decisions[0].reason, Reason::ConnSilent { retransmits: 2 });
    // The same on a path that completed I/O since it was watched waits for a stall.
    let mut h = two_maps();
    completed(&mut h, t, 0, t - 5 * MS);
    up(&mut h, t + 10 * MS, 16);
    h.handle(
        t + 100 * MS,
        Input::Conn {
            conn: c,
            at_ns: t + 100 * MS,
            signal: ConnSignal::Retransmits { consecutive: 2 },
        },
    );
    assert!(failed_devs(&acked(&mut h, t + 320 * MS, 0, 1000, t - 2 * S)).is_empty());
}

#[test]
fn a_connection_silent_for_five_retransmissions_fails_its_idle_paths() {
    let mut h = two_maps();
    let c = conn(40001, 1);
    // Idle maps: no I/O stalls; only the connection's NOP-outs go unanswered.
    for (i, n) in [2u32, 3, 4].into_iter().enumerate() {
        let at = 10 * S + i as u64 * 400 * MS;
        let o = h.handle(
            at,
            Input::Conn {
                conn: c,
                at_ns: at,
                signal: ConnSignal::Retransmits { consecutive: n },
            },
        );
        assert!(failed_devs(&o).is_empty(), "{n}: {o:?}");
    }
    let o = h.handle(
        13 * S,
        Input::Conn {
            conn: c,
            at_ns: 13 * S,
            signal: ConnSignal::Retransmits { consecutive: 5 },
        },
    );
    assert_eq!(failed_devs(&o), [dev(0), dev(32)]);
    assert_eq!(o.decisions[0].reason, Reason::ConnSilent { retransmits: 5 });
    assert!(matches!(
        o.decisions[0].action,
        Action::Fail { rescue: Some(_) }
    ));
}

#[test]
fn a_batch_of_inputs_decides_what_the_same_inputs_one_at_a_time_do() {
    // One status poll: the kernel failed sda, sdc's session is down, the others are fine.
    let inputs = || {
        vec![
            Input::DmState {
                dev: dev(0),
                failed: true,
                read_ns: 10 * S,
            },
            Input::DmState {
                dev: dev(16),
                failed: false,
                read_ns: 10 * S,
            },
            Input::Session {
                dev: dev(32),
                logged_in: false,
            },
            Input::Session {
                dev: dev(48),
                logged_in: true,
            },
        ]
    };
    let mut one = two_maps();
    let mut each = Vec::new();
    for i in inputs() {
        each.extend(one.handle(10 * S, i).decisions);
    }
    let mut batch = two_maps();
    let all = batch.handle_batch(10 * S, inputs()).decisions;
    assert_eq!(all, each);
    assert_eq!(
        all.iter().map(|d| (d.dev, d.to)).collect::<Vec<_>>(),
        [(dev(0), PathState::Failed), (dev(32), PathState::Failed)]
    );
    for d in [0, 16, 32, 48] {
        assert_eq!(batch.state(dev(d)), one.state(dev(d)), "sd minor {d}");
    }
}
