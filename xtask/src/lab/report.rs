//! report.json: the verdict, the guest's timeline (events.tsv) and the verifier's figures.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::Scenario;
use super::console::KernelAlarm;
use super::vm::VmResult;

#[derive(Serialize)]
pub struct Report {
    pub scenario: String,
    pub file: String,
    pub passed: bool,
    /// Which step failed and why, when it did.
    pub failure: Option<String>,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The guest kernel's soft lockup, RCU stall, hung task, BUG, Oops or panic, with the
    /// console lines (stacks) around it.
    pub kernel_alarm: Option<KernelAlarm>,
    /// `WARNING: CPU: ...` lines; they did not stop the scenario.
    pub kernel_warnings: Vec<String>,
    /// On a timeout, the console after sysrq asked for every CPU's backtrace and the
    /// blocked tasks.
    pub timeout_dump: Vec<String>,
    pub wall_s: f64,
    /// QEMU start to the scenario script starting.
    pub boot_s: Option<f64>,
    pub console_log: String,
    /// Timestamped events from the guest, in order (fault injected, dm path state changes,
    /// IO stall and resume from the verifier, ...).
    pub timeline: Vec<Event>,
    /// labio's JSON report, as written.
    pub labio: Option<Value>,
}

#[derive(Serialize, Clone)]
pub struct Event {
    /// Guest wall clock, seconds since the epoch.
    pub t: f64,
    /// Seconds since the first event of the scenario.
    pub t_rel: f64,
    pub kind: String,
    pub msg: String,
}

impl Report {
    pub(super) fn build(
        s: &Scenario,
        out_dir: &Path,
        res: &VmResult,
        failure: Option<String>,
    ) -> Self {
        let mut timeline: Vec<Event> = std::fs::read_to_string(out_dir.join("events.tsv"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, '\t');
                let t = f.next()?.parse().ok()?;
                Some(Event {
                    t,
                    t_rel: 0.0,
                    kind: f.next()?.to_string(),
                    msg: f.next().unwrap_or("").to_string(),
                })
            })
            .collect();
        timeline.sort_by(|a, b| a.t.total_cmp(&b.t));
        let t0 = timeline.first().map_or(0.0, |e| e.t);
        for e in &mut timeline {
            e.t_rel = ((e.t - t0) * 1000.0).round() / 1000.0;
        }
        let labio = std::fs::read_to_string(out_dir.join("labio.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        Report {
            scenario: s.name.clone(),
            file: s.path.display().to_string(),
            passed: failure.is_none(),
            failure,
            exit_code: res.exit_code,
            timed_out: res.timed_out,
            kernel_alarm: res.alarm.clone(),
            kernel_warnings: res.warnings.clone(),
            timeout_dump: res.timeout_dump.clone(),
            wall_s: res.wall.as_secs_f64(),
            boot_s: res.boot_s,
            console_log: out_dir.join("console.log").display().to_string(),
            timeline,
            labio,
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }

    fn num(&self, ptr: &str) -> Option<f64> {
        self.labio.as_ref()?.pointer(ptr)?.as_f64()
    }

    /// "longest IO stall 15.2 s, 1234 IOs, 0 IO errors, 0 mismatches".
    pub fn labio_summary(&self) -> Option<String> {
        Some(format!(
            "longest IO stall {:.2} s, {} IOs, {} app IO errors, {} mismatches, p99 {:.1} ms",
            self.num("/longest_stall/seconds")?,
            self.num("/ops")?,
            self.num("/io_errors/count")?,
            self.num("/mismatches/count")?,
            self.num("/latency_ms/p99")?,
        ))
    }

    /// Events of the given kinds between the step event `marker` and the next
    /// `phase:` step, relative to the phase's first fault.
    pub fn print_phase_timeline(&self, marker: &str, kinds: &[&str]) {
        let Some(start) = self
            .timeline
            .iter()
            .position(|e| e.kind == "step" && e.msg.starts_with(marker))
        else {
            println!("  (no such phase in the timeline)");
            return;
        };
        let end = self.timeline[start + 1..]
            .iter()
            .position(|e| e.kind == "step" && e.msg.starts_with("phase:"))
            .map_or(self.timeline.len(), |i| start + 1 + i);
        let phase = &self.timeline[start..end];
        let zero = phase
            .iter()
            .find(|e| e.kind == "fault")
            .map_or(phase[0].t, |e| e.t);
        for e in phase.iter().filter(|e| kinds.contains(&e.kind.as_str())) {
            println!("  {:>+9.3} s  {:<8} {}", e.t - zero, e.kind, e.msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timeline_is_sorted_and_relative() {
        let dir = std::env::temp_dir().join(format!("lab-rep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The watcher and labio append out of order; a message may contain tabs.
        std::fs::write(
            dir.join("events.tsv"),
            "100.5\tfault\tlink p1 down\n100.0\tstep\tgo\nbad line\n101.25\tdm\tpath\tF\n",
        )
        .unwrap();
        let s = Scenario {
            name: "x".into(),
            path: dir.join("x.sh"),
            description: String::new(),
            timeout: None,
            baseline: false,
        };
        let res = VmResult {
            exit_code: Some(0),
            timed_out: false,
            alarm: None,
            warnings: Vec::new(),
            timeout_dump: Vec::new(),
            boot_s: Some(3.0),
            wall: Duration::from_secs(9),
        };
        let r = Report::build(&s, &dir, &res, None);
        std::fs::remove_dir_all(&dir).ok();
        let got: Vec<(f64, &str, &str)> = r
            .timeline
            .iter()
            .map(|e| (e.t_rel, e.kind.as_str(), e.msg.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (0.0, "step", "go"),
                (0.5, "fault", "link p1 down"),
                (1.25, "dm", "path\tF")
            ]
        );
        assert!(r.passed && r.labio.is_none() && r.labio_summary().is_none());
    }
}
