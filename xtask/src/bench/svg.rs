//! Two small SVG plots for the benchmarks, written by hand (no plotting dependency): lines
//! of latency over time on a log axis, and grouped bars on a log axis.

use std::fmt::Write;

/// One line of a plot; a None point breaks the line (no IO in that bin).
pub struct Line {
    pub label: String,
    /// Which colour: the same series keeps its colour in every plot.
    pub series: usize,
    pub points: Vec<(f64, Option<f64>)>,
}

const W: f64 = 760.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
/// One colour per stack, the same in every plot (colour-blind safe).
const COLOURS: &[&str] = &["#7f7f7f", "#d95f02", "#1b6fb0"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn head(title: &str, subtitle: &str) -> String {
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        esc(title)
    );
    if !subtitle.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{LEFT}\" y=\"37\" fill=\"#555\">{}</text>",
            esc(subtitle)
        );
    }
    s
}

/// A log axis: value -> y pixel, between `lo` and `hi` (both > 0).
fn log_y(v: f64, lo: f64, hi: f64) -> f64 {
    let v = v.clamp(lo, hi);
    let f = (v.log10() - lo.log10()) / (hi.log10() - lo.log10());
    H - BOTTOM - f * (H - TOP - BOTTOM)
}

/// Ticks of a log axis in milliseconds, labelled in ms or s.
const MS_TICKS: &[(f64, &str)] = &[
    (1.0, "1 ms"),
    (10.0, "10 ms"),
    (100.0, "100 ms"),
    (1000.0, "1 s"),
    (10_000.0, "10 s"),
    (60_000.0, "60 s"),
];

fn legend(s: &mut String, labels: &[(usize, &str)]) {
    for (i, (series, l)) in labels.iter().enumerate() {
        let x = W - RIGHT - 130.0 * (labels.len() - i) as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"14\" height=\"4\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            H - 18.0,
            COLOURS[series % COLOURS.len()],
            x + 20.0,
            H - 13.0,
            esc(l)
        );
    }
}

/// Worst IO wait over time, one line per stack, time 0 at the fault; the fault's span
/// shaded. y: milliseconds, log scale from 1 ms to 60 s.
pub fn latency_plot(title: &str, subtitle: &str, lines: &[Line], fault_s: f64) -> String {
    let (lo, hi) = (1.0, 60_000.0);
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (x0, x1) = if x0 < x1 { (x0, x1) } else { (0.0, 1.0) };
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let mut s = head(title, subtitle);
    // The fault's span.
    let _ = writeln!(
        s,
        "<rect x=\"{:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{}\" fill=\"#f3d9d9\"/>\
         <text x=\"{:.1}\" y=\"{}\" fill=\"#a33\">fault</text>",
        px(0.0),
        (px(fault_s.min(x1)) - px(0.0)).max(0.0),
        H - TOP - BOTTOM,
        px(0.0) + 3.0,
        TOP + 12.0
    );
    for (v, label) in MS_TICKS {
        let y = log_y(*v, lo, hi);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let step = if x1 - x0 > 60.0 { 10.0 } else { 5.0 };
    let mut t = (x0 / step).ceil() * step;
    while t <= x1 {
        let x = px(t);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"#999\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{:.0}</text>",
            H - BOTTOM,
            H - BOTTOM + 4.0,
            H - BOTTOM + 17.0,
            t + 0.0 // no "-0"
        );
        t += step;
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#555\">seconds from the fault</text>",
        (LEFT + W - RIGHT) / 2.0,
        H - BOTTOM + 32.0
    );
    for l in lines {
        let i = l.series;
        // One polyline per run of points with IO.
        let mut run: Vec<String> = Vec::new();
        let flush = |s: &mut String, run: &mut Vec<String>| {
            if run.len() > 1 {
                let _ = writeln!(
                    s,
                    "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
                    COLOURS[i % COLOURS.len()],
                    run.join(" ")
                );
            }
            run.clear();
        };
        for &(x, y) in &l.points {
            match y {
                Some(y) => run.push(format!("{:.1},{:.1}", px(x), log_y(y, lo, hi))),
                None => flush(&mut s, &mut run),
            }
        }
        flush(&mut s, &mut run);
    }
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>",
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    let labels: Vec<(usize, &str)> = lines.iter().map(|l| (l.series, l.label.as_str())).collect();
    legend(&mut s, &labels);
    s.push_str("</svg>\n");
    s
}

/// Grouped bars: per group (fault) one bar per series (stack), seconds on a log axis from
/// 10 ms to 100 s, each bar labelled with its value; a missing value is marked "n/a".
pub fn stall_bars(title: &str, series: &[&str], groups: &[(String, Vec<Option<f64>>)]) -> String {
    let (lo, hi) = (10.0, 100_000.0); // ms
    let mut s = head(title, "seconds, log scale");
    let ticks = [
        (10.0, "10 ms"),
        (100.0, "100 ms"),
        (1000.0, "1 s"),
        (10_000.0, "10 s"),
        (100_000.0, "100 s"),
    ];
    for (v, label) in &ticks {
        let y = log_y(*v, lo, hi);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let gw = (W - LEFT - RIGHT) / groups.len().max(1) as f64;
    let bw = (gw - 20.0) / series.len().max(1) as f64;
    let base = H - BOTTOM;
    for (g, (name, vals)) in groups.iter().enumerate() {
        let gx = LEFT + g as f64 * gw + 10.0;
        for (i, v) in vals.iter().enumerate() {
            let x = gx + i as f64 * bw;
            match v {
                Some(v) => {
                    let y = log_y((v * 1000.0).max(lo), lo, hi);
                    let label = if *v >= 10.0 {
                        format!("{v:.1}")
                    } else {
                        format!("{v:.2}")
                    };
                    let _ = writeln!(
                        s,
                        "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\
                         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{label}</text>",
                        bw - 2.0,
                        base - y,
                        COLOURS[i % COLOURS.len()],
                        x + bw / 2.0 - 1.0,
                        y - 3.0
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">n/a</text>",
                        x + bw / 2.0,
                        base - 3.0
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            gx + (gw - 20.0) / 2.0,
            base + 16.0,
            esc(name)
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{base}\" y2=\"{base}\" stroke=\"#333\"/>",
        W - RIGHT
    );
    let labels: Vec<(usize, &str)> = series.iter().copied().enumerate().collect();
    legend(&mut s, &labels);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_plot_breaks_lines_where_no_io_ran() {
        let l = Line {
            label: "a<b".into(),
            series: 2,
            points: vec![
                (-1.0, Some(5.0)),
                (0.0, Some(10.0)),
                (1.0, None),
                (2.0, Some(20.0)),
                (3.0, Some(30_000.0)),
            ],
        };
        let s = latency_plot("t", "sub", &[l], 2.0);
        assert_eq!(s.matches("<polyline").count(), 2);
        assert_eq!(
            s.matches(COLOURS[2]).count(),
            3,
            "both pieces and the legend in series 2's colour"
        );
        assert!(s.contains("a&lt;b"), "labels are escaped");
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        // Log axis: 1 ms at the bottom, 60 s at the top of the plot area.
        assert_eq!(log_y(1.0, 1.0, 60_000.0), H - BOTTOM);
        assert_eq!(log_y(60_000.0, 1.0, 60_000.0), TOP);
    }

    #[test]
    fn bars_label_each_value_and_missing_ones() {
        let s = stall_bars(
            "x",
            &["kernel", "mpathd"],
            &[
                ("cut".into(), vec![Some(15.3), Some(0.42)]),
                ("loss".into(), vec![None, Some(0.05)]),
            ],
        );
        assert_eq!(
            s.matches("<rect x=").count(),
            3 + 2,
            "3 bars + 2 legend keys"
        );
        assert!(s.contains(">15.3<") && s.contains(">0.42<") && s.contains(">n/a<"));
    }
}
