//! A [`Snapshot`] as Prometheus text (format 0.0.4), through prometheus-client's encoder.
//!
//! The registry is made for one render and holds only a collector over the snapshot:
//! nothing survives from one scrape to the next.

use std::{collections::HashMap, fmt};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use super::*;
use crate::ebpf::{Dir, ErrorClass};

/// Renders a snapshot as Prometheus text, with HELP and TYPE for every family in
/// [`FAMILIES`] (a family with nothing to show has them alone). Takes the snapshot by
/// value: prometheus-client's registry owns what it encodes.
pub fn render(s: Snapshot) -> String {
    let mut out = String::with_capacity(256 + s.paths.len() * 6 * 1024);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(s)));
    // Writing to a String cannot fail, and the collector returns only the writer's errors.
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("rendering into a String");
    out
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        encode(&self.0, &mut enc)
    }
}

/// Upper bounds of the path latency histogram, as powers of two of microseconds: the
/// kernel's buckets are `[2^i, 2^(i+1))` us, so any `2^e` us is an exact bound. Every
/// other power (x4) from 32 us to 33.5 s keeps a scrape of 1024 paths small.
const LATENCY_EXPS: &[u32] = &[5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25];
/// The ring-buffer lag's: 16 us to 4.2 s.
const LAG_EXPS: &[u32] = &[4, 6, 8, 10, 12, 14, 16, 18, 20, 22];

/// Log2 microsecond buckets (`hist[i]` counts `[2^i, 2^(i+1))` us, the first also below
/// 1 us, the last open-ended) as (upper bound in seconds, count in that bucket alone)
/// for the bounds `2^e` us, +Inf last; and the total count.
pub(crate) fn log2_us_buckets(hist: &[u64], exps: &[u32]) -> (Vec<(f64, u64)>, u64) {
    let mut out = Vec::with_capacity(exps.len() + 1);
    let mut i = 0;
    for &e in exps {
        // Bucket i lies below 2^e us when i + 1 <= e; the last bucket is open-ended and
        // never lies below a finite bound.
        let end = (e as usize).min(hist.len().saturating_sub(1));
        let n: u64 = hist[i.min(end)..end].iter().sum();
        i = i.max(end);
        out.push(((1u64 << e) as f64 / 1e6, n));
    }
    let rest: u64 = hist[i..].iter().sum();
    out.push((f64::INFINITY, rest));
    (out, hist.iter().sum())
}

fn descriptor<'a>(
    enc: &'a mut DescriptorEncoder,
    f: &Family,
) -> Result<MetricEncoder<'a>, fmt::Error> {
    // The encoder appends `_total` to counters itself.
    let name = match f.kind {
        MetricType::Counter => f.name.strip_suffix("_total").unwrap_or(f.name),
        _ => f.name,
    };
    enc.encode_descriptor(name, f.help, None, f.kind)
}

fn counter(m: &mut MetricEncoder, v: u64) -> fmt::Result {
    m.encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

fn histogram(m: &mut MetricEncoder, h: &Histogram) -> fmt::Result {
    m.encode_histogram::<NoLabelSet>(h.sum(), h.count(), &h.buckets(), None)
}

fn bool_gauge(b: bool) -> i64 {
    i64::from(b)
}

type Labels<'a> = [(&'static str, &'a str); 5];

fn encode(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let devs: Vec<String> = s.paths.iter().map(|p| p.dev.to_string()).collect();
    let labels: Vec<Labels> = s
        .paths
        .iter()
        .zip(&devs)
        .map(|(p, dev)| {
            [
                ("map", p.map.as_str()),
                ("wwid", p.wwid.as_str()),
                ("path", p.path.as_str()),
                ("dev", dev.as_str()),
                ("portal", p.portal.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    let readings: HashMap<DevT, &PathReading> = s.readings.iter().map(|r| (r.dev, r)).collect();
    let paths = || s.paths.iter().zip(&labels);
    let probed = || paths().filter_map(|(p, l)| readings.get(&p.dev).map(|r| (*r, l)));

    // Per path, from the daemon.
    let mut fam = descriptor(enc, &PATH_STATE)?;
    for (p, l) in paths() {
        for st in PathState::ALL {
            let extra = [("state", st.name())];
            fam.encode_family(&(&l[..], extra))?
                .encode_gauge(&bool_gauge(p.state == st))?;
        }
    }
    let mut fam = descriptor(enc, &PATH_DM_FAILED)?;
    for (p, l) in paths() {
        fam.encode_family(l)?
            .encode_gauge(&bool_gauge(p.dm_failed))?;
    }
    let mut fam = descriptor(enc, &PATH_FLAPS)?;
    for (p, l) in paths() {
        fam.encode_family(l)?.encode_gauge(&p.flaps)?;
    }
    let mut fam = descriptor(enc, &PATH_LUN_ERRORS)?;
    for (p, l) in paths() {
        counter(&mut fam.encode_family(l)?, p.lun_errors)?;
    }
    let mut fam = descriptor(enc, &PATH_LATENCY_LIMIT)?;
    for (p, l) in paths() {
        fam.encode_family(l)?
            .encode_gauge(&p.latency_limit.as_secs_f64())?;
    }
    let mut fam = descriptor(enc, &PATH_RTT_LIMIT)?;
    for (p, l) in paths() {
        fam.encode_family(l)?
            .encode_gauge(&p.rtt_limit.as_secs_f64())?;
    }

    // Per path, from the probes' kernel counters.
    const OPS: [(&str, Dir); 3] = [
        ("read", Dir::Read),
        ("write", Dir::Write),
        ("other", Dir::Other),
    ];
    let mut fam = descriptor(enc, &PATH_COMPLETIONS)?;
    for (r, l) in probed() {
        for (op, d) in OPS {
            let v = r.block.stats.dir[d as usize].completions;
            counter(&mut fam.encode_family(&(&l[..], [("op", op)]))?, v)?;
        }
    }
    let mut fam = descriptor(enc, &PATH_ERRORS)?;
    for (r, l) in probed() {
        for (class, c) in [
            ("path", ErrorClass::Path),
            ("generic", ErrorClass::Generic),
            ("lun", ErrorClass::Lun),
        ] {
            let v = r.block.errors_by_class(c);
            counter(&mut fam.encode_family(&(&l[..], [("class", class)]))?, v)?;
        }
    }
    let mut fam = descriptor(enc, &PATH_BYTES)?;
    for (r, l) in probed() {
        for (op, d) in &OPS[..2] {
            let v = r.block.stats.dir[*d as usize].bytes;
            counter(&mut fam.encode_family(&(&l[..], [("op", *op)]))?, v)?;
        }
    }
    let mut fam = descriptor(enc, &PATH_LATENCY)?;
    for (r, l) in probed() {
        let mut hist = [0u64; multipath_common::block::LATENCY_BUCKETS];
        let mut sum_ns = 0u64;
        for d in &r.block.stats.dir {
            for (h, v) in hist.iter_mut().zip(d.latency_hist.iter()) {
                *h += v;
            }
            sum_ns = sum_ns.saturating_add(d.latency_sum_ns);
        }
        let (buckets, count) = log2_us_buckets(&hist, LATENCY_EXPS);
        fam.encode_family(l)?.encode_histogram::<NoLabelSet>(
            sum_ns as f64 / 1e9,
            count,
            &buckets,
            None,
        )?;
    }
    let mut fam = descriptor(enc, &PATH_INFLIGHT)?;
    for (r, l) in probed() {
        fam.encode_family(l)?.encode_gauge(&r.block.inflight())?;
    }
    let mut fam = descriptor(enc, &PATH_OLDEST)?;
    for (r, l) in probed() {
        let v = r.block.oldest.map(|d| d.as_secs_f64()).unwrap_or(0.0);
        fam.encode_family(l)?.encode_gauge(&v)?;
    }
    let mut fam = descriptor(enc, &PATH_REQUEUES)?;
    for (r, l) in probed() {
        counter(&mut fam.encode_family(l)?, r.block.stats.requeues)?;
    }
    let conns = || probed().filter_map(|(r, l)| r.conn.map(|(_, c)| (c, l)));
    let mut fam = descriptor(enc, &PATH_RETRANSMITS)?;
    for (c, l) in conns() {
        counter(&mut fam.encode_family(l)?, c.retransmits)?;
    }
    let mut fam = descriptor(enc, &PATH_LOST)?;
    for (r, l) in probed() {
        if let Some(v) = r.conn.and_then(|(conn, _)| s.tcp_lost.get(&conn)) {
            counter(&mut fam.encode_family(l)?, *v)?;
        }
    }
    let mut fam = descriptor(enc, &PATH_RESETS)?;
    for (c, l) in conns() {
        counter(&mut fam.encode_family(l)?, c.resets)?;
    }
    let mut fam = descriptor(enc, &PATH_SRTT)?;
    for (c, l) in conns() {
        fam.encode_family(l)?.encode_gauge(&c.srtt.as_secs_f64())?;
    }

    // Per map.
    let mut by_map: HashMap<&str, [u32; PathState::ALL.len()]> = HashMap::new();
    for p in &s.paths {
        let i = PathState::ALL
            .iter()
            .position(|st| *st == p.state)
            .expect("ALL lists every state");
        by_map.entry(p.map.as_str()).or_default()[i] += 1;
    }
    let none = [0u32; PathState::ALL.len()];
    let map_labels = |m: &'_ MapMetrics| [("map", m.name.clone()), ("wwid", m.wwid.clone())];
    let mut fam = descriptor(enc, &MAP_PATHS)?;
    for m in &s.maps {
        let counts = by_map.get(m.name.as_str()).unwrap_or(&none);
        let ml = map_labels(m);
        for (st, n) in PathState::ALL.iter().zip(counts) {
            fam.encode_family(&(&ml[..], [("state", st.name().to_owned())]))?
                .encode_gauge(n)?;
        }
    }
    let mut fam = descriptor(enc, &MAP_USABLE)?;
    for m in &s.maps {
        let counts = by_map.get(m.name.as_str()).unwrap_or(&none);
        let usable: u32 = PathState::ALL
            .iter()
            .zip(counts)
            .filter(|(st, _)| st.usable())
            .map(|(_, n)| n)
            .sum();
        fam.encode_family(&map_labels(m))?.encode_gauge(&usable)?;
    }
    let mut fam = descriptor(enc, &MAP_ACTIVE_GROUP)?;
    for m in &s.maps {
        if let Some(g) = m.active_group {
            fam.encode_family(&map_labels(m))?.encode_gauge(&g)?;
        }
    }
    for (f, get) in [
        (
            &MAP_QUEUEING,
            (|m: &MapMetrics| m.queue_if_no_path) as fn(&MapMetrics) -> bool,
        ),
        (&MAP_EXPIRED, |m| m.no_path_retry_expired),
        (&MAP_STALLED, |m| m.io_stalled),
    ] {
        let mut fam = descriptor(enc, f)?;
        for m in &s.maps {
            fam.encode_family(&map_labels(m))?
                .encode_gauge(&bool_gauge(get(m)))?;
        }
    }

    // Decisions.
    let st = &s.stats;
    let mut fam = descriptor(enc, &DECISIONS)?;
    for ((action, reason), n) in &st.decisions {
        counter(
            &mut fam.encode_family(&[("action", *action), ("reason", *reason)])?,
            *n,
        )?;
    }
    histogram(
        &mut descriptor(enc, &SIGNAL_TO_DECISION)?,
        &st.signal_to_decision,
    )?;
    let mut fam = descriptor(enc, &SIGNAL_TO_DONE)?;
    for (action, h) in &st.signal_to_done {
        histogram(&mut fam.encode_family(&[("action", *action)])?, h)?;
    }
    let mut fam = descriptor(enc, &RESCUES)?;
    counter(&mut fam.encode_family(&[("result", "ok")])?, st.rescues_ok)?;
    counter(
        &mut fam.encode_family(&[("result", "failed")])?,
        st.rescues_failed,
    )?;
    let mut fam = descriptor(enc, &RECOVERY_TMO)?;
    counter(
        &mut fam.encode_family(&[("result", "ok")])?,
        st.recovery_tmo_ok,
    )?;
    counter(
        &mut fam.encode_family(&[("result", "failed")])?,
        st.recovery_tmo_failed,
    )?;

    // The daemon itself.
    let b = &s.build;
    descriptor(enc, &BUILD_INFO)?
        .encode_family(&[
            ("version", b.version.as_str()),
            ("commit", b.commit.as_deref().unwrap_or("")),
        ])?
        .encode_gauge(&1i64)?;
    descriptor(enc, &PROBES_LOADED)?.encode_gauge(&bool_gauge(s.watcher.is_some()))?;
    let w = s.watcher.as_ref();
    let mut fam = descriptor(enc, &PROBE_EVENTS)?;
    if let Some(w) = w {
        counter(&mut fam, w.events)?;
    }
    let mut fam = descriptor(enc, &PROBE_LOST)?;
    if let Some(w) = w {
        counter(
            &mut fam.encode_family(&[("reason", "ring_full")])?,
            w.ring_full,
        )?;
        counter(
            &mut fam.encode_family(&[("reason", "queue_full")])?,
            w.dropped,
        )?;
    }
    let mut fam = descriptor(enc, &PROBE_SUPPRESSED)?;
    if let Some(w) = w {
        counter(&mut fam, w.suppressed)?;
    }
    let mut fam = descriptor(enc, &PROBE_MISSES)?;
    if let Some(w) = w {
        counter(&mut fam, w.recursion_misses)?;
    }
    let mut fam = descriptor(enc, &PROBE_LAG)?;
    if let Some(w) = w {
        let (buckets, _) = log2_us_buckets(&w.lag.buckets, LAG_EXPS);
        fam.encode_histogram::<NoLabelSet>(w.lag.sum.as_secs_f64(), w.lag.count, &buckets, None)?;
    }
    let mut fam = descriptor(enc, &EVENTS)?;
    for (kind, n) in &st.events {
        counter(&mut fam.encode_family(&[("kind", *kind)])?, *n)?;
    }
    let mut fam = descriptor(enc, &CHECKS)?;
    for ((checker, outcome), n) in &st.checks {
        counter(
            &mut fam.encode_family(&[("checker", *checker), ("outcome", *outcome)])?,
            *n,
        )?;
    }
    let mut fam = descriptor(enc, &CHECK_DURATION)?;
    for (checker, h) in &st.check_duration {
        histogram(&mut fam.encode_family(&[("checker", *checker)])?, h)?;
    }
    let mut fam = descriptor(enc, &DM_CALLS)?;
    for (op, n) in &st.dm_calls {
        counter(&mut fam.encode_family(&[("op", *op)])?, *n)?;
    }
    let mut fam = descriptor(enc, &DM_ERRORS)?;
    // Every op that was called has an error count, zero or not, so rates divide cleanly.
    for op in st.dm_calls.keys() {
        let n = st.dm_errors.get(op).copied().unwrap_or(0);
        counter(&mut fam.encode_family(&[("op", *op)])?, n)?;
    }
    let mut fam = descriptor(enc, &DM_DURATION)?;
    for (op, h) in &st.dm_duration {
        histogram(&mut fam.encode_family(&[("op", *op)])?, h)?;
    }
    counter(&mut descriptor(enc, &PASSES)?, st.passes)?;
    counter(&mut descriptor(enc, &PASS_ERRORS)?, st.pass_errors)?;
    histogram(&mut descriptor(enc, &PASS_DURATION)?, &st.pass_duration)?;
    let mut fam = descriptor(enc, &REQUESTS)?;
    for (req, n) in &st.requests {
        counter(&mut fam.encode_family(&[("request", *req)])?, *n)?;
    }
    Ok(())
}
