//! `cargo xtask fuzz`: the cargo-fuzz (libFuzzer) targets in `fuzz/`.
//!
//! Each target is seeded from its committed corpus, `fuzz/corpus/NAME`, copied first to
//! `target/fuzz-corpus/NAME` so that a run adds what it learns there and never writes into
//! the repository; that corpus is kept between runs, as is the build in `target/fuzz`.
//! Every run limits memory and time per input, so an input that makes a parser allocate
//! without bound or hang fails the run like a panic does. libFuzzer writes a failing
//! input to `fuzz/artifacts/NAME/` (ignored by git).

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::bootstrap;

/// The targets, with what each one checks.
pub const TARGETS: &[(&str, &str)] = &[
    (
        "dm_table",
        "multipath table params: parse, print, parse again to an equal table",
    ),
    (
        "dm_status",
        "multipath status params: parse, print, parse again to an equal status",
    ),
    (
        "config_toml",
        "mpathd.toml: Config::from_toml_str never panics",
    ),
    (
        "multipath_conf",
        "multipath.conf: parse and import; an import's TOML is a valid config",
    ),
    (
        "sysfs",
        "the sysfs readers on a sysfs tree made from the input",
    ),
];

/// libFuzzer's limits: RSS for the whole process, one allocation, one input's run time.
const RSS_LIMIT_MB: u32 = 512;
const MALLOC_LIMIT_MB: u32 = 512;
const INPUT_TIMEOUT_S: u32 = 5;

/// Longest input libFuzzer makes up (it still takes longer seeds whole).
const MAX_LEN: u32 = 4096;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// `list`, a target's name, or `all`.
    name: String,
    /// How long to fuzz each target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

/// One target's run.
pub struct Outcome {
    pub passed: bool,
    /// Why it failed, with the input and the command that reproduces it.
    pub detail: String,
    pub wall: Duration,
}

pub fn run(root: &Path, args: FuzzArgs) -> Result<()> {
    let names: Vec<&str> = match args.name.as_str() {
        "list" => {
            for (name, what) in TARGETS {
                println!("{name:<16} {what}");
            }
            return Ok(());
        }
        "all" => TARGETS.iter().map(|(n, _)| *n).collect(),
        n if TARGETS.iter().any(|(t, _)| *t == n) => vec![n],
        n => bail!("no fuzz target {n:?}; `cargo xtask fuzz list` lists them"),
    };
    bootstrap::ensure(root, bootstrap::Need::All)?;
    build(root, false)?;
    let mut failed = Vec::new();
    for name in names {
        let o = run_target(root, name, args.seconds, false)?;
        eprintln!(
            "xtask fuzz: {name}: {} ({:.0} s)",
            if o.passed { "ok" } else { "FAILED" },
            o.wall.as_secs_f64()
        );
        if !o.passed {
            eprintln!("{}", o.detail);
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz target(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

/// `cargo +nightly fuzz` with the options every call shares.
fn cargo_fuzz(root: &Path, sub: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "+nightly",
        "fuzz",
        sub,
        "--fuzz-dir",
        "fuzz",
        "--target-dir",
    ])
    .arg(root.join("target/fuzz"))
    .current_dir(root)
    // The fuzz crate has its own workspace and toolchain: nothing of the outer
    // `cargo xtask` build may leak into it.
    .env_remove("CARGO_TARGET_DIR")
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env_remove("RUSTUP_TOOLCHAIN")
    .env_remove("CARGO");
    cmd
}

/// Builds every target once; `quiet` keeps cargo's output unless the build fails.
pub fn build(root: &Path, quiet: bool) -> Result<()> {
    let mut cmd = cargo_fuzz(root, "build");
    let what = "cargo +nightly fuzz build";
    if quiet {
        let out = cmd
            .output()
            .with_context(|| format!("cannot run `{what}`"))?;
        if !out.status.success() {
            bail!(
                "`{what}` failed ({}):\n{}",
                out.status,
                tail(&String::from_utf8_lossy(&out.stderr), 60)
            );
        }
    } else if !cmd
        .status()
        .with_context(|| format!("cannot run `{what}`"))?
        .success()
    {
        bail!("`{what}` failed");
    }
    Ok(())
}

/// Fuzzes one target for `seconds`. `quiet` sends libFuzzer's output to
/// `target/fuzz-logs/NAME.log` instead of the terminal.
pub fn run_target(root: &Path, name: &str, seconds: u64, quiet: bool) -> Result<Outcome> {
    let start = Instant::now();
    let corpus = seed_corpus(root, name)?;
    let artifacts = root.join("fuzz/artifacts").join(name);
    let before = files_in(&artifacts);

    let mut cmd = cargo_fuzz(root, "run");
    cmd.arg(name)
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg(format!("-max_len={MAX_LEN}"))
        .arg("-print_final_stats=1")
        // Its own process group, so that the watchdog below ends the fuzzer with it.
        .process_group(0);
    let log = root.join("target/fuzz-logs").join(format!("{name}.log"));
    if quiet {
        fs::create_dir_all(log.parent().expect("has a parent"))?;
        let f = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdout(f.try_clone()?).stderr(f);
    }
    cmd.stdin(Stdio::null());
    let mut child = cmd.spawn().context("cannot run cargo +nightly fuzz run")?;
    // libFuzzer stops itself after max_total_time; this only catches a stuck build or a
    // fuzzer that ignores its own limits.
    let deadline = Duration::from_secs(seconds + 300);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if start.elapsed() > deadline {
            // SAFETY: plain syscall on the process group this function started.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let wall = start.elapsed();
    let passed = status.is_some_and(|s| s.success());
    let mut detail = String::new();
    if !passed {
        match status {
            None => detail.push_str(&format!(
                "{name}: still running after {} s, killed\n",
                deadline.as_secs()
            )),
            Some(s) => detail.push_str(&format!("{name}: cargo fuzz run exited with {s}\n")),
        }
        let new: Vec<PathBuf> = files_in(&artifacts)
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        for a in &new {
            let rel = a.strip_prefix(root).unwrap_or(a);
            detail.push_str(&format!(
                "failing input: {}\nreproduce with: cargo +nightly fuzz run --fuzz-dir fuzz \
                 --target-dir target/fuzz {name} {}\n",
                rel.display(),
                rel.display()
            ));
        }
        if new.is_empty() {
            detail.push_str("no failing input was written (a build error, or killed)\n");
        }
        if quiet {
            let text = fs::read_to_string(&log).unwrap_or_default();
            detail.push_str(&format!(
                "last lines of {}:\n{}",
                log.display(),
                tail(&text, 40)
            ));
        }
    }
    Ok(Outcome {
        passed,
        detail,
        wall,
    })
}

/// `target/fuzz-corpus/NAME`, with the committed seeds copied in (what earlier runs found
/// stays).
fn seed_corpus(root: &Path, name: &str) -> Result<PathBuf> {
    let dst = root.join("target/fuzz-corpus").join(name);
    fs::create_dir_all(&dst).with_context(|| format!("creating {}", dst.display()))?;
    for seed in files_in(&root.join("fuzz/corpus").join(name)) {
        let to = dst.join(seed.file_name().expect("a file"));
        fs::copy(&seed, &to)
            .with_context(|| format!("copying {} to {}", seed.display(), to.display()))?;
    }
    Ok(dst)
}

/// The files in a directory, sorted; none when it does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
