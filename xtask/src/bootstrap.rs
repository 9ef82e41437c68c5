//! Installs what the build and the tests need, once, and says what it is doing.
//! Debian packages, nightly rust-src, bpf-linker, cargo-fuzz, cargo-deb, and a venv with
//! grafana-foundation-sdk under target/.
//!
//! Every check is cheap (a dpkg-query, a rustup listing, a `--version`), so running this
//! before every command costs well under a second when everything is present.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// What a command needs. Kept as a type so a later command can ask for less.
#[derive(Clone, Copy)]
pub enum Need {
    All,
}

/// Debian packages, with why each is here.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("clang", "C toolchain for -sys crates"),
    ("libclang-dev", "bindgen for the devicemapper crate"),
    ("libdevmapper-dev", "device-mapper library"),
    ("libudev-dev", "udev monitoring"),
    ("pkg-config", "finding C libraries"),
    (
        "bpftool",
        "inspecting loaded eBPF programs and their run-time stats",
    ),
    ("fio", "IO load in tests and benchmarks"),
    (
        "bpftrace",
        "biolatency.bt, the block-latency tool `bench compare` measures mpathd's probes against",
    ),
    ("util-linux", "losetup for the loop-device tests"),
    ("e2fsprogs", "mkfs.ext4 for the IO-error tests"),
    ("qemu-system-x86", "the lab VM"),
    ("linux-image-amd64", "the lab guest's kernel and modules"),
    ("open-iscsi", "the lab's iSCSI initiator"),
    ("busybox-static", "the lab's initramfs"),
    ("cpio", "packing the lab's initramfs"),
    ("kmod", "modprobe in the lab guest"),
    ("nftables", "silent-loss fault injection"),
    ("iproute2", "veth portals, netns and netem in the lab"),
    ("dmsetup", "device-mapper tables in the lab"),
    ("sg3-utils", "SCSI inquiries in the lab"),
    (
        "multipath-tools",
        "`multipath -r`, the baseline of `cargo xtask bench startup` (run only in the lab \
         guest; its multipathd is kept off on the host, see keep_multipathd_off)",
    ),
    (
        "prometheus",
        "promtool and a real Prometheus for the alerting tests",
    ),
    (
        "python3-venv",
        "the venv for grafana-foundation-sdk, which loads the dashboards in the tests",
    ),
    ("systemd", "systemd-analyze verify and security on the unit"),
];

/// bpf-linker 0.11+ wants a system LLVM >= 21 that Debian 12 lacks; 0.10.x links with
/// nightly's own libLLVM.
const BPF_LINKER_VERSION: &str = "0.10.4";

/// cargo-fuzz, for `cargo xtask fuzz` and the fuzz stage of `cargo xtask test`. Its
/// Cargo.lock pins an old rustix that today's nightly refuses (`rustc_*` attributes), so
/// it is built with stable; it runs the fuzz builds with nightly itself.
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// cargo-deb, for `cargo xtask package`; 3.8 builds with Rust 1.85 and up.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// grafana-foundation-sdk (PyPI), pinned: its Python models load the dashboards in
/// `cargo xtask test`. Versions are `<build epoch>!<Grafana version>`.
const GRAFANA_SDK: &str = "grafana-foundation-sdk==1769699379!11.6.0";

pub fn ensure(root: &Path, need: Need) -> Result<()> {
    match need {
        Need::All => {
            debian_packages()?;
            keep_multipathd_off()?;
            nightly_rust_src()?;
            bpf_linker()?;
            cargo_fuzz()?;
            cargo_deb()?;
            grafana_sdk(root)?;
        }
    }
    Ok(())
}

/// The Python of the venv with grafana-foundation-sdk.
pub fn grafana_venv_python(root: &Path) -> std::path::PathBuf {
    root.join("target/venv-grafana/bin/python")
}

/// A venv under target/ with the pinned SDK; a marker file records what it holds, so a
/// changed pin reinstalls.
fn grafana_sdk(root: &Path) -> Result<()> {
    let venv = root.join("target/venv-grafana");
    let marker = venv.join("mpathd-installed");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == GRAFANA_SDK) {
        return Ok(());
    }
    eprintln!(
        "bootstrap: installing {GRAFANA_SDK} in {} (loads the dashboards in the tests)",
        venv.display()
    );
    // Debian's python3: the venv must not depend on whichever python3 is first in PATH.
    run_quiet(
        Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv),
        &format!("/usr/bin/python3 -m venv {}", venv.display()),
    )?;
    run_quiet(
        Command::new(venv.join("bin/pip")).args(["install", "--quiet", GRAFANA_SDK]),
        &format!("{}/bin/pip install {GRAFANA_SDK}", venv.display()),
    )?;
    std::fs::write(&marker, GRAFANA_SDK)?;
    Ok(())
}

fn cargo_deb() -> Result<()> {
    let have = installed_version("cargo-deb");
    // `cargo-deb --version` prints "cargo-deb 3.8.0" (maybe with more after it).
    if have.split_whitespace().nth(1) == Some(CARGO_DEB_VERSION) {
        return Ok(());
    }
    let what = or_not_found(have);
    eprintln!(
        "bootstrap: installing cargo-deb {CARGO_DEB_VERSION} (have: {what}); this compiles it, a few minutes"
    );
    run_quiet(
        Command::new("cargo").args([
            "+stable",
            "install",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
            "--locked",
            "--force",
        ]),
        &format!("cargo +stable install cargo-deb --version {CARGO_DEB_VERSION} --locked"),
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let cmd = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!(
            "missing Debian packages: {}\nInstall them as root: {cmd}",
            missing.join(" ")
        );
    }
    for p in &missing {
        let why = DEBIAN_PACKAGES
            .iter()
            .find(|(n, _)| n == p)
            .map(|(_, w)| *w);
        eprintln!("bootstrap: installing {p} ({})", why.unwrap_or(""));
    }
    run_quiet(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    run_quiet(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
    .with_context(|| format!("installing Debian packages failed; try by hand: {cmd}"))?;
    let still: Vec<&str> = missing.into_iter().filter(|p| !dpkg_installed(p)).collect();
    if !still.is_empty() {
        bail!(
            "apt-get reported success but these are still missing: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// multipath-tools is here for the lab only, where the bench runs `multipath` itself. On a
/// host with systemd its postinst enables multipathd.service (sysinit.target) and
/// multipathd.socket and starts them: a multipathd would then claim the host's SCSI disks
/// (and would fight mpathd when both run). Stop and mask both, once. The lab guest is
/// unaffected: it runs no service manager, and the package's udev rules
/// (60-multipath.rules: `multipath -u` per disk, which only reads) matter only in
/// scenarios that start udevd.
fn keep_multipathd_off() -> Result<()> {
    let units = ["multipathd.socket", "multipathd.service"];
    if !dpkg_installed("multipath-tools") {
        return Ok(());
    }
    if !Path::new("/run/systemd/system").exists() {
        // No systemd (a container, a sysvinit host): the postinst's invoke-rc.d may have
        // started the init script's multipathd, unless a policy-rc.d denied it.
        let running = Command::new("pidof")
            .arg("multipathd")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if running && is_root() && Path::new("/etc/init.d/multipath-tools").exists() {
            eprintln!(
                "bootstrap: stopping multipathd (multipath-tools is for the lab's bench only)"
            );
            run_quiet(
                Command::new("/etc/init.d/multipath-tools").arg("stop"),
                "/etc/init.d/multipath-tools stop",
            )?;
            run_quiet(
                Command::new("update-rc.d").args(["multipath-tools", "disable"]),
                "update-rc.d multipath-tools disable",
            )?;
        }
        return Ok(());
    }
    let masked = units.iter().all(|u| {
        Command::new("systemctl")
            .args(["is-enabled", u])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "masked")
            .unwrap_or(false)
    });
    if masked {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "multipath-tools' multipathd is not masked; as root: systemctl disable --now {u} && systemctl mask {u}",
            u = units.join(" ")
        );
    }
    eprintln!(
        "bootstrap: stopping and masking multipathd (multipath-tools is for the lab's bench only)"
    );
    run_quiet(
        Command::new("systemctl")
            .args(["disable", "--now"])
            .args(units),
        "systemctl disable --now multipathd.socket multipathd.service",
    )?;
    run_quiet(
        Command::new("systemctl").arg("mask").args(units),
        "systemctl mask multipathd.socket multipathd.service",
    )
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn nightly_rust_src() -> Result<()> {
    let listed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup: the eBPF build needs rustup with a nightly toolchain")?;
    if !listed.status.success() {
        eprintln!("bootstrap: installing the nightly toolchain with rust-src (eBPF build)");
        return run_quiet(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
            "rustup toolchain install nightly",
        );
    }
    if String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("bootstrap: adding rust-src to nightly (eBPF programs build core from source)");
    run_quiet(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "rustup component add rust-src --toolchain nightly",
    )
}

fn bpf_linker() -> Result<()> {
    let have = installed_version("bpf-linker");
    if have.starts_with("bpf-linker 0.10.") {
        return Ok(());
    }
    let what = or_not_found(have);
    eprintln!(
        "bootstrap: installing bpf-linker {BPF_LINKER_VERSION} (have: {what}); this compiles it, a few minutes"
    );
    run_quiet(
        Command::new("cargo").args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ]),
        &format!("cargo +nightly install bpf-linker --version {BPF_LINKER_VERSION} --locked"),
    )
}

/// What `BIN --version` prints, or "" when it cannot run.
fn installed_version(bin: impl AsRef<std::ffi::OsStr>) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn or_not_found(have: String) -> String {
    if have.is_empty() {
        "not found".to_owned()
    } else {
        have
    }
}

fn cargo_fuzz() -> Result<()> {
    let have = installed_version("cargo-fuzz");
    if have == format!("cargo-fuzz {CARGO_FUZZ_VERSION}") {
        return Ok(());
    }
    let what = or_not_found(have);
    eprintln!(
        "bootstrap: installing cargo-fuzz {CARGO_FUZZ_VERSION} (have: {what}); this compiles it, under a minute"
    );
    run_quiet(
        Command::new("cargo").args([
            "+stable",
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
            "--force",
        ]),
        &format!("cargo +stable install cargo-fuzz --version {CARGO_FUZZ_VERSION} --locked"),
    )
}

/// Runs a command, showing its output only when it fails.
fn run_quiet(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
