//! How much host CPU each of QEMU's vCPU threads got: under TCG a vCPU that the host does
//! not run for 20 s looks to the guest's watchdog exactly like a CPU stuck for 20 s, so a
//! lockup report is only a guest hang if the vCPU was really running.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

/// One vCPU thread's counters from /proc/PID/task/TID/schedstat.
#[derive(Clone, Debug, PartialEq)]
struct Counters {
    name: String,
    /// Nanoseconds on a host CPU, and waiting on a host run queue.
    ran_ns: u64,
    waited_ns: u64,
}

/// What one vCPU thread did over a window before an alarm.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VcpuUse {
    /// QEMU's thread name, e.g. "CPU 0/TCG".
    pub thread: String,
    pub ran_s: f64,
    /// Runnable but not running: the host had no CPU for it.
    pub waited_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct HostView {
    /// The window looked at (the stall the kernel reported, capped by the samples kept).
    pub window_s: f64,
    pub vcpus: Vec<VcpuUse>,
    /// A reading of the figures: were the vCPUs running at all?
    pub verdict: String,
}

/// Samples the vCPU threads of one QEMU once a second, keeping a minute.
pub struct Sampler {
    pid: u32,
    samples: VecDeque<(Instant, Vec<Counters>)>,
}

const KEEP: usize = 90;

impl Sampler {
    pub fn new(pid: u32) -> Self {
        Sampler {
            pid,
            samples: VecDeque::with_capacity(KEEP),
        }
    }

    /// Takes a sample if the last one is a second old.
    pub fn maybe_sample(&mut self, now: Instant) {
        if self
            .samples
            .back()
            .is_some_and(|(t, _)| now.duration_since(*t) < Duration::from_secs(1))
        {
            return;
        }
        let c = read_vcpus(self.pid);
        if c.is_empty() {
            return;
        }
        if self.samples.len() == KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back((now, c));
    }

    /// What the vCPUs got from the host over the `window` before `now`.
    pub fn view(&mut self, now: Instant, window: Duration) -> Option<HostView> {
        // A fresh sample, so the window ends at the alarm.
        let last = self.samples.back().map(|(t, _)| *t);
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_millis(200)) {
            let c = read_vcpus(self.pid);
            if !c.is_empty() {
                if self.samples.len() == KEEP {
                    self.samples.pop_front();
                }
                self.samples.push_back((now, c));
            }
        }
        let (t1, end) = self.samples.back()?;
        let start_at = t1.checked_sub(window).unwrap_or(*t1);
        // The oldest sample still inside the window (or the oldest there is).
        let (t0, begin) = self
            .samples
            .iter()
            .find(|(t, _)| *t >= start_at)
            .or(self.samples.front())?;
        let secs = t1.duration_since(*t0).as_secs_f64();
        if secs < 1.0 {
            return None;
        }
        Some(judge(secs, begin, end))
    }
}

fn judge(secs: f64, begin: &[Counters], end: &[Counters]) -> HostView {
    let vcpus: Vec<VcpuUse> = end
        .iter()
        .filter_map(|e| {
            let b = begin.iter().find(|b| b.name == e.name)?;
            Some(VcpuUse {
                thread: e.name.clone(),
                ran_s: e.ran_ns.saturating_sub(b.ran_ns) as f64 / 1e9,
                waited_s: e.waited_ns.saturating_sub(b.waited_ns) as f64 / 1e9,
            })
        })
        .collect();
    let most = vcpus.iter().map(|v| v.ran_s).fold(0.0, f64::max);
    let wait = vcpus.iter().map(|v| v.waited_s).fold(0.0, f64::max);
    // A vCPU that runs a guest spinning in the kernel uses its host CPU all the time.
    let verdict = if most >= 0.5 * secs {
        format!(
            "a vCPU ran {most:.1} s of the {secs:.1} s: the guest was executing, a real hang or spin in the guest"
        )
    } else if wait >= 0.25 * secs {
        format!(
            "no vCPU ran more than {most:.1} s of the {secs:.1} s and one waited {wait:.1} s for a host CPU: \
             the busy host starved the VM, so the lockup report may be no guest bug"
        )
    } else {
        format!(
            "no vCPU ran more than {most:.1} s of the {secs:.1} s, nor waited for a host CPU: \
             the vCPU threads were blocked inside QEMU (its global lock, or host IO behind the 9p root), \
             so the lockup report may be no guest bug"
        )
    };
    HostView {
        window_s: secs,
        vcpus,
        verdict,
    }
}

/// The counters of QEMU's vCPU threads (named "CPU N/TCG" with -name debug-threads=on).
fn read_vcpus(pid: u32) -> Vec<Counters> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<Counters> = dir
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let name = std::fs::read_to_string(p.join("comm")).ok()?;
            let name = name.trim();
            if !name.starts_with("CPU ") {
                return None;
            }
            let (ran_ns, waited_ns) =
                parse_schedstat(&std::fs::read_to_string(p.join("schedstat")).ok()?)?;
            Some(Counters {
                name: name.to_string(),
                ran_ns,
                waited_ns,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// /proc/.../schedstat: "time on CPU (ns) time waiting on a run queue (ns) timeslices".
fn parse_schedstat(s: &str) -> Option<(u64, u64)> {
    let mut f = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// The stall a lockup line reports ("stuck for 22s!"), if it says.
pub fn stuck_for(line: &str) -> Option<Duration> {
    let rest = &line[line.find("stuck for ")? + "stuck for ".len()..];
    let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
    n.parse().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, ran_s: f64, waited_s: f64) -> Counters {
        Counters {
            name: name.into(),
            ran_ns: (ran_s * 1e9) as u64,
            waited_ns: (waited_s * 1e9) as u64,
        }
    }

    #[test]
    fn a_spinning_vcpu_is_a_guest_hang() {
        let v = judge(
            20.0,
            &[c("CPU 0/TCG", 100.0, 5.0), c("CPU 1/TCG", 50.0, 5.0)],
            &[c("CPU 0/TCG", 119.0, 6.0), c("CPU 1/TCG", 51.0, 6.0)],
        );
        assert_eq!(v.vcpus[0].thread, "CPU 0/TCG");
        assert!((v.vcpus[0].ran_s - 19.0).abs() < 1e-6);
        assert!((v.vcpus[1].waited_s - 1.0).abs() < 1e-6);
        assert!(v.verdict.contains("real hang"), "{}", v.verdict);
    }

    #[test]
    fn vcpus_that_did_not_run_mean_host_starvation() {
        let v = judge(
            22.0,
            &[c("CPU 0/TCG", 100.0, 5.0), c("CPU 1/TCG", 50.0, 5.0)],
            &[c("CPU 0/TCG", 101.0, 20.0), c("CPU 1/TCG", 50.5, 9.0)],
        );
        assert!(v.verdict.contains("starved"), "{}", v.verdict);
        assert!(v.verdict.contains("waited 15.0 s"), "{}", v.verdict);
        // Neither running nor runnable: blocked in QEMU.
        let v = judge(
            22.0,
            &[c("CPU 0/TCG", 100.0, 5.0)],
            &[c("CPU 0/TCG", 100.5, 5.5)],
        );
        assert!(v.verdict.contains("blocked inside QEMU"), "{}", v.verdict);
    }

    #[test]
    fn schedstat_and_stuck_for() {
        assert_eq!(
            parse_schedstat("402726 5483792 2\n"),
            Some((402726, 5483792))
        );
        assert_eq!(parse_schedstat("x"), None);
        assert_eq!(
            stuck_for("[ 1.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [iscsi_ttx:1]"),
            Some(Duration::from_secs(22))
        );
        assert_eq!(
            stuck_for("rcu: INFO: rcu_preempt self-detected stall on CPU"),
            None
        );
    }

    #[test]
    fn samples_a_busy_thread_by_name() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let (started, wait_start) = std::sync::mpsc::channel();
        // Named like a QEMU vCPU thread; it spins as a vCPU running a stuck guest would.
        let spinner = std::thread::Builder::new()
            .name("CPU 7/test".into())
            .spawn(move || {
                // The name is set by now.
                started.send(()).unwrap();
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
            .unwrap();
        wait_start.recv().unwrap();
        let mut s = Sampler::new(std::process::id());
        let t0 = Instant::now();
        s.maybe_sample(t0);
        std::thread::sleep(Duration::from_millis(1500));
        let v = s.view(Instant::now(), Duration::from_secs(20));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinner.join().unwrap();
        let v = v.expect("two samples of the spinning thread");
        assert_eq!(v.vcpus.len(), 1);
        assert_eq!(v.vcpus[0].thread, "CPU 7/test");
        // It ran, or waited for a CPU on a busy machine: the two cover the time it wanted.
        let wanted = v.vcpus[0].ran_s + v.vcpus[0].waited_s;
        assert!(wanted > 0.8 * v.window_s, "{v:?}");
    }
}
