//! `cargo xtask package`: the Debian package, built with cargo-deb.
//!
//! 1. `cargo build --release -p multipath-daemon`, with the git commit in
//!    `MPATHD_GIT_COMMIT` (shown by `mpathd_build_info`);
//! 2. the man page and shell completions from the clap definition, by the `gen-docs`
//!    example (clap_mangen, clap_complete) into target/release/mpathd-docs/;
//! 3. `cargo deb --no-build` with the assets listed in multipath-daemon/Cargo.toml
//!    ([package.metadata.deb]); then the package's file list is checked.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Files the package must hold (dpkg-deb -c paths, without the leading `.`).
pub const EXPECTED: &[&str] = &[
    "/usr/sbin/mpathd",
    "/etc/mpathd/mpathd.toml",
    "/usr/lib/systemd/system/mpathd.service",
    "/usr/share/man/man8/mpathd.8.gz",
    "/usr/share/bash-completion/completions/mpathd",
    "/usr/share/zsh/vendor-completions/_mpathd",
    "/usr/share/fish/vendor_completions.d/mpathd.fish",
    "/usr/share/mpathd/grafana/mpathd.json",
    "/usr/share/mpathd/grafana/mpathd-fleet.json",
    "/usr/share/mpathd/prometheus/alerts.yml",
    "/usr/share/mpathd/prometheus/rules.yml",
    "/usr/share/doc/mpathd/operations.md",
    "/usr/share/doc/mpathd/metrics.md",
];

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn status(cmd: &mut Command, what: &str) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("cannot start `{what}`"))?;
    if !st.success() {
        bail!("`{what}` failed ({st}); its output is above");
    }
    Ok(())
}

/// Builds the package and returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    eprintln!("package: building mpathd (release, commit {commit:?})");
    status(
        Command::new(cargo())
            .args([
                "build",
                "--release",
                "-p",
                "multipath-daemon",
                "--bin",
                "mpathd",
            ])
            .env("MPATHD_GIT_COMMIT", &commit)
            .current_dir(root),
        "cargo build --release -p multipath-daemon --bin mpathd",
    )?;

    // Under target/release/, where cargo-deb finds built files (CARGO_TARGET_DIR too).
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let gen_dir = target.join("release/mpathd-docs");
    let _ = std::fs::remove_dir_all(&gen_dir);
    eprintln!("package: man page and completions from the clap definition");
    status(
        Command::new(cargo())
            .args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "multipath-daemon",
                "--features",
                "gen-docs",
                "--example",
                "gen-docs",
                "--",
            ])
            .arg(&gen_dir)
            .env("MPATHD_GIT_COMMIT", &commit)
            .current_dir(root),
        "cargo run -p multipath-daemon --features gen-docs --example gen-docs",
    )
    .context(
        "generating the man page and completions (they need `mpathd::cli::command()`, the \
         daemon's clap definition exposed by the library)",
    )?;
    let man = gen_dir.join("man/mpathd.8");
    // Debian ships man pages compressed; -n keeps the build reproducible (no timestamp).
    status(
        Command::new("gzip").args(["-9", "-n", "-f"]).arg(&man),
        "gzip -9n mpathd.8",
    )?;

    let out_dir = root.join("target/debian");
    eprintln!("package: cargo deb");
    let out = Command::new(cargo())
        .args(["deb", "-p", "multipath-daemon", "--no-build", "--output"])
        .arg(&out_dir)
        .current_dir(root)
        .output()
        .context("cannot start `cargo deb`: run `cargo xtask bootstrap` to install cargo-deb")?;
    if !out.status.success() {
        bail!(
            "cargo deb failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb named no .deb on its output")?;
    check_contents(&deb)?;
    eprintln!("package: {}", deb.display());
    Ok(deb)
}

/// The package holds every file in [`EXPECTED`], and its unit is the one in packaging/.
fn check_contents(deb: &Path) -> Result<()> {
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
        .output()
        .context("running dpkg-deb -c")?;
    if !out.status.success() {
        bail!("dpkg-deb -c {} failed", deb.display());
    }
    let list = String::from_utf8_lossy(&out.stdout);
    let files: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.'))
        .collect();
    let missing: Vec<&&str> = EXPECTED.iter().filter(|e| !files.contains(e)).collect();
    if !missing.is_empty() {
        bail!("{} lacks {:?}; its files:\n{list}", deb.display(), missing);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_expected_file_is_an_asset_of_the_package() {
        // The unit comes from systemd-units; the rest must be listed as assets.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap();
        let toml = std::fs::read_to_string(root.join("multipath-daemon/Cargo.toml")).unwrap();
        for f in super::EXPECTED {
            let dest = f.trim_start_matches('/');
            let listed = toml.contains(&format!("\"{dest}\""))
                || (dest.starts_with("usr/share/doc/mpathd/")
                    && toml.contains("\"usr/share/doc/mpathd/\""))
                || dest == "usr/lib/systemd/system/mpathd.service";
            assert!(listed, "{f} is not among the package's assets");
        }
    }
}
