//! The command line refuses bad numbers with a message naming the option, never a panic.

use std::process::Command;

fn mpathd(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mpathd"))
        .args(args)
        .output()
        .expect("run mpathd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_negative_or_endless_probe_duration_is_refused_before_anything_is_loaded() {
    for bad in ["-1", "0", "inf", "NaN", "1e30"] {
        let (ok, err) = mpathd(&["probe", &format!("--duration={bad}"), "/nonexistent/sdq"]);
        assert!(!ok, "{bad}: {err}");
        assert!(
            err.contains("--duration must be a positive number of seconds"),
            "{bad}: {err}"
        );
        assert!(!err.contains("panicked"), "{bad}: {err}");
    }
}

#[test]
fn the_daemon_refuses_a_zero_or_negative_interval_by_name() {
    for (opt, bad) in [("--rescan-secs", "0"), ("--check-secs", "-2")] {
        let (ok, err) = mpathd(&["daemon", &format!("{opt}={bad}")]);
        assert!(!ok, "{opt}={bad}: {err}");
        assert!(
            err.contains(&format!("{opt} must be a positive number of seconds")),
            "{opt}={bad}: {err}"
        );
        assert!(!err.contains("panicked"), "{opt}={bad}: {err}");
    }
}
