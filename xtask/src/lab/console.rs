//! Watches the guest console for the kernel saying it is in trouble (soft lockup, RCU
//! stall, hung task, BUG, Oops, panic), so a wedged guest fails its scenario at once with
//! the stacks instead of running into the scenario's timeout.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::vcpu::HostView;

/// What the guest kernel reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    SoftLockup,
    HardLockup,
    RcuStall,
    HungTask,
    /// `BUG: ...` and `kernel BUG at ...`.
    Bug,
    /// `Oops:`, general protection fault, invalid opcode (a BUG_ON).
    Oops,
    Panic,
    /// `WARNING: CPU: ...`: recorded, but the kernel goes on, and so does the scenario.
    Warning,
}

impl AlarmKind {
    pub fn describe(self) -> &'static str {
        match self {
            AlarmKind::SoftLockup => "soft lockup",
            AlarmKind::HardLockup => "hard lockup",
            AlarmKind::RcuStall => "RCU stall",
            AlarmKind::HungTask => "hung task",
            AlarmKind::Bug => "kernel BUG",
            AlarmKind::Oops => "kernel Oops",
            AlarmKind::Panic => "kernel panic",
            AlarmKind::Warning => "kernel warning",
        }
    }

    /// Whether the scenario stops: everything but a warning.
    pub fn is_fatal(self) -> bool {
        self != AlarmKind::Warning
    }
}

/// The kernel's part of a console line: the text after each printk timestamp
/// (`[  123.456789] `). The guest boots with printk.time=1, so every kernel line has one,
/// and the scenario's own output (which may print anything, "BUG:" included) has none.
/// A kernel message may also land in the middle of a line the scenario was writing.
fn kernel_texts(line: &str) -> impl Iterator<Item = &str> {
    line.match_indices('[').filter_map(|(i, _)| {
        let rest = &line[i + 1..];
        let end = rest.find(']')?;
        let stamp = rest[..end].trim_start();
        let (secs, frac) = stamp.split_once('.')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        (digits(secs) && digits(frac)).then(|| rest[end + 1..].trim_start())
    })
}

/// Classifies one console line.
pub fn classify(line: &str) -> Option<AlarmKind> {
    kernel_texts(line).find_map(classify_kernel_text)
}

fn classify_kernel_text(t: &str) -> Option<AlarmKind> {
    // Order matters: the lockup lines also start with "BUG:".
    if t.contains("BUG: soft lockup") {
        Some(AlarmKind::SoftLockup)
    } else if t.contains("Watchdog detected hard LOCKUP") {
        Some(AlarmKind::HardLockup)
    } else if t.starts_with("rcu: INFO: ") && t.contains(" stall") {
        // "rcu: INFO: rcu_preempt self-detected stall on CPU",
        // "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"
        Some(AlarmKind::RcuStall)
    } else if t.starts_with("INFO: task ") && t.contains(" blocked for more than ") {
        Some(AlarmKind::HungTask)
    } else if t.starts_with("Kernel panic - not syncing") {
        Some(AlarmKind::Panic)
    } else if t.starts_with("BUG: ") || t.starts_with("kernel BUG at ") {
        Some(AlarmKind::Bug)
    } else if t.contains(" [#")
        && (t.starts_with("Oops: ")
            || t.starts_with("general protection fault")
            || t.starts_with("invalid opcode: "))
    {
        Some(AlarmKind::Oops)
    } else if t.starts_with("WARNING: CPU: ") {
        Some(AlarmKind::Warning)
    } else {
        None
    }
}

/// A fatal alarm, with the console lines around it.
#[derive(Clone, Debug, Serialize)]
pub struct KernelAlarm {
    pub kind: AlarmKind,
    /// The console line that raised it.
    pub line: String,
    /// Seconds from QEMU's start.
    pub at_s: f64,
    /// Later alarm lines (other CPUs, repeats), in order.
    pub later: Vec<String>,
    /// Console lines from a little before the alarm to the end of the capture: the stacks.
    pub excerpt: Vec<String>,
    /// The host's /proc/loadavg when the alarm came: under TCG a starved vCPU can report a
    /// lockup that is no hang in the guest at all.
    pub host_loadavg: Option<String>,
    /// The host's CPU pressure (/proc/pressure/cpu "some" line) at the same moment.
    pub host_cpu_pressure: Option<String>,
    /// How much host CPU QEMU's vCPU threads got over the stall the kernel reported.
    pub host_vcpus: Option<HostView>,
}

/// Lines kept from before an alarm, for context.
const BEFORE: usize = 20;
/// The capture ends when the console has been quiet this long after an alarm...
const QUIET: Duration = Duration::from_secs(3);
/// ... or this long after the alarm, or at this many lines.
const MAX_CAPTURE: Duration = Duration::from_secs(20);
const MAX_LINES: usize = 600;

/// Feeds on console lines; says when a fatal alarm has been captured in full.
pub struct Watch {
    recent: VecDeque<String>,
    alarm: Option<(KernelAlarm, Instant)>,
    last_line: Instant,
    /// Headlines of non-fatal warnings, in order.
    pub warnings: Vec<String>,
}

/// What the caller should do after a line (or a tick).
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// A fatal alarm just started: ask the guest for more stacks (sysrq) and keep reading.
    Started(AlarmKind),
    /// The capture is complete: kill the VM.
    Done,
}

impl Watch {
    pub fn new(now: Instant) -> Self {
        Watch {
            recent: VecDeque::with_capacity(BEFORE),
            alarm: None,
            last_line: now,
            warnings: Vec::new(),
        }
    }

    /// One console line, seen at `now`, `at_s` seconds after QEMU started.
    pub fn line(&mut self, line: &str, now: Instant, at_s: f64) -> Verdict {
        self.last_line = now;
        let kind = classify(line);
        if let Some((a, _)) = &mut self.alarm {
            if a.excerpt.len() < MAX_LINES {
                a.excerpt.push(line.to_string());
            }
            if kind.is_some() && a.later.len() < 50 {
                a.later.push(line.to_string());
            }
            return self.tick(now);
        }
        match kind {
            Some(k) if k.is_fatal() => {
                let mut excerpt: Vec<String> = self.recent.drain(..).collect();
                excerpt.push(line.to_string());
                self.alarm = Some((
                    KernelAlarm {
                        kind: k,
                        line: line.to_string(),
                        at_s,
                        later: Vec::new(),
                        excerpt,
                        host_loadavg: read_trimmed("/proc/loadavg"),
                        host_cpu_pressure: read_trimmed("/proc/pressure/cpu")
                            .and_then(|p| p.lines().next().map(str::to_string)),
                        host_vcpus: None,
                    },
                    now,
                ));
                Verdict::Started(k)
            }
            other => {
                if other == Some(AlarmKind::Warning) && self.warnings.len() < 20 {
                    self.warnings.push(line.to_string());
                }
                if self.recent.len() == BEFORE {
                    self.recent.pop_front();
                }
                self.recent.push_back(line.to_string());
                Verdict::Fine
            }
        }
    }

    /// No line for a while: is the capture over?
    pub fn tick(&self, now: Instant) -> Verdict {
        match &self.alarm {
            Some((a, since))
                if now.duration_since(self.last_line) >= QUIET
                    || now.duration_since(*since) >= MAX_CAPTURE
                    || a.excerpt.len() >= MAX_LINES =>
            {
                Verdict::Done
            }
            _ => Verdict::Fine,
        }
    }

    /// Adds what the host saw of the vCPUs to the alarm being captured.
    pub fn set_host_view(&mut self, v: Option<HostView>) {
        if let Some((a, _)) = &mut self.alarm {
            a.host_vcpus = v;
        }
    }

    pub fn alarm(&self) -> Option<&KernelAlarm> {
        self.alarm.as_ref().map(|(a, _)| a)
    }

    pub fn into_alarm(self) -> Option<KernelAlarm> {
        self.alarm.map(|(a, _)| a)
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_kernel_alarms() {
        let cases: &[(&str, Option<AlarmKind>)] = &[
            (
                "[  301.123456] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [iscsi_ttx:1234]",
                Some(AlarmKind::SoftLockup),
            ),
            (
                "[  301.2] rcu: INFO: rcu_preempt self-detected stall on CPU",
                Some(AlarmKind::RcuStall),
            ),
            (
                "[  301.2] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
                Some(AlarmKind::RcuStall),
            ),
            (
                "[  250.000001] INFO: task labio:812 blocked for more than 60 seconds.",
                Some(AlarmKind::HungTask),
            ),
            (
                "[   12.5] BUG: kernel NULL pointer dereference, address: 0000000000000008",
                Some(AlarmKind::Bug),
            ),
            (
                "[   12.5] kernel BUG at drivers/target/iscsi/iscsi_target.c:4321!",
                Some(AlarmKind::Bug),
            ),
            (
                "[   12.6] Oops: 0002 [#1] PREEMPT SMP NOPTI",
                Some(AlarmKind::Oops),
            ),
            (
                "[   12.6] general protection fault, probably for non-canonical address 0xdead: 0000 [#1] PREEMPT SMP NOPTI",
                Some(AlarmKind::Oops),
            ),
            (
                "[   12.6] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI",
                Some(AlarmKind::Oops),
            ),
            (
                "[   13.0] Kernel panic - not syncing: Fatal exception",
                Some(AlarmKind::Panic),
            ),
            (
                "[    9.1] watchdog: Watchdog detected hard LOCKUP on cpu 1",
                Some(AlarmKind::HardLockup),
            ),
            (
                "[    9.1] WARNING: CPU: 1 PID: 33 at net/core/sock.c:123 foo+0x1/0x2",
                Some(AlarmKind::Warning),
            ),
            // A kernel message that lands mid-way through a line of the scenario's output.
            (
                "[lab +12.000s] step: drop[  301.1] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [kworker/1:2:99]",
                Some(AlarmKind::SoftLockup),
            ),
            // Ordinary kernel and scenario lines.
            ("[   40.1] connection1:0: detected conn error (1020)", None),
            (
                "[   40.1] session1: session recovery timed out after 5 secs",
                None,
            ),
            (
                "[   40.1] sd 2:0:0:0: rejecting I/O to offline device",
                None,
            ),
            // The scenario's own output has no printk timestamp: never an alarm.
            ("BUG: this is a scenario echo", None),
            (
                "[lab +3.100s] fail: step 'x': INFO: task blocked for more than 5 s",
                None,
            ),
            ("grep: BUG: soft lockup - CPU#0 stuck", None),
            ("[ 1.2.3] BUG: not a timestamp", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(classify(line), *want, "{line:?}");
        }
    }

    #[test]
    fn alarm_captures_context_and_stack_then_ends_when_quiet() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0);
        for i in 0..30 {
            let l = format!("[lab +{i}.000s] step: {i}");
            assert_eq!(w.line(&l, t0, i as f64), Verdict::Fine);
        }
        let head = "[  301.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [iscsi_ttx:1234]";
        assert_eq!(
            w.line(head, t0, 31.0),
            Verdict::Started(AlarmKind::SoftLockup)
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(w.line("[  301.2] Call Trace:", t1, 32.0), Verdict::Fine);
        assert_eq!(
            w.line(
                "[  301.3] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [kworker/1:1:50]",
                t1,
                32.0
            ),
            Verdict::Fine
        );
        // Still within the quiet period: go on reading.
        assert_eq!(w.tick(t1 + Duration::from_secs(2)), Verdict::Fine);
        assert_eq!(w.tick(t1 + QUIET), Verdict::Done);
        let a = w.into_alarm().unwrap();
        assert_eq!(a.kind, AlarmKind::SoftLockup);
        assert_eq!(a.line, head);
        assert_eq!(a.at_s, 31.0);
        assert_eq!(a.later.len(), 1);
        assert!(a.later[0].contains("CPU#1"));
        // BEFORE lines of context, the alarm, the two after it.
        assert_eq!(a.excerpt.len(), BEFORE + 3);
        assert_eq!(a.excerpt[0], "[lab +10.000s] step: 10");
        assert_eq!(a.excerpt[BEFORE], head);
        assert_eq!(a.excerpt[BEFORE + 1], "[  301.2] Call Trace:");
    }

    #[test]
    fn a_guest_that_keeps_printing_is_cut_off() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0);
        w.line(
            "[  5.0] rcu: INFO: rcu_preempt self-detected stall on CPU",
            t0,
            5.0,
        );
        let mut verdict = Verdict::Fine;
        for i in 0..MAX_LINES {
            // One line every 10 ms never leaves the console quiet.
            let now = t0 + Duration::from_millis(10 * i as u64);
            verdict = w.line("[  5.1]  ? do_idle+0x1/0x2", now, 5.1);
            if verdict == Verdict::Done {
                break;
            }
        }
        assert_eq!(verdict, Verdict::Done);
        assert_eq!(w.alarm().unwrap().excerpt.len(), MAX_LINES);
        // Time alone ends it too.
        let mut w = Watch::new(t0);
        w.line("[  5.0] Kernel panic - not syncing: x", t0, 5.0);
        w.line(
            "[  5.1] more",
            t0 + MAX_CAPTURE - Duration::from_secs(1),
            5.0,
        );
        assert_eq!(w.tick(t0 + MAX_CAPTURE), Verdict::Done);
    }

    #[test]
    fn warnings_are_kept_but_do_not_stop_the_scenario() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0);
        let warn = "[ 7.0] WARNING: CPU: 0 PID: 1 at kernel/x.c:1 f+0x0/0x1";
        assert_eq!(w.line(warn, t0, 7.0), Verdict::Fine);
        assert_eq!(w.tick(t0 + Duration::from_secs(60)), Verdict::Fine);
        assert_eq!(w.warnings, [warn]);
        assert!(w.into_alarm().is_none());
    }
}
