//! The lab VM: Debian's kernel from /boot under QEMU (TCG), a busybox initramfs, the host
//! root shared read-only over 9p and one writable output dir. One VM per scenario.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::console::{AlarmKind, KernelAlarm, Verdict, Watch};
use super::vcpu::{Sampler, stuck_for};

/// The guest's PID 1; a change to it rebuilds the initramfs (its hash is in the file name).
const INIT: &str = include_str!("init.sh");
/// What the initramfs loads so that /init can mount the host root.
const INITRD_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// A kernel from /boot with its modules installed.
pub struct Kernel {
    pub version: String,
    vmlinuz: PathBuf,
}

impl Kernel {
    /// The newest /boot/vmlinuz-* that has /lib/modules/<version>.
    pub fn find() -> Result<Self> {
        let mut found: Vec<(Vec<u64>, String)> = Vec::new();
        for e in std::fs::read_dir("/boot").context("listing /boot")? {
            let name = e?.file_name().to_string_lossy().into_owned();
            let Some(v) = name.strip_prefix("vmlinuz-") else {
                continue;
            };
            if !Path::new("/lib/modules")
                .join(v)
                .join("modules.dep")
                .exists()
            {
                continue;
            }
            // Numeric version order, so 6.1.0-100 sorts after 6.1.0-56.
            let key = v
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|p| p.parse().ok())
                .collect();
            found.push((key, v.to_string()));
        }
        found.sort();
        let Some((_, version)) = found.pop() else {
            bail!(
                "no /boot/vmlinuz-* with modules in /lib/modules: install linux-image-amd64 (cargo xtask bootstrap)"
            );
        };
        Ok(Kernel {
            vmlinuz: PathBuf::from(format!("/boot/vmlinuz-{version}")),
            version,
        })
    }
}

/// Unpacks the bzImage's xz payload to an ELF vmlinux that QEMU boots directly (PVH),
/// cached as target/lab/vmlinux-<version>.
pub fn ensure_vmlinux(lab_dir: &Path, k: &Kernel) -> Result<PathBuf> {
    let out = lab_dir.join(format!("vmlinux-{}", k.version));
    if out.exists() {
        return Ok(out);
    }
    eprintln!(
        "lab: extracting {} to {}",
        k.vmlinuz.display(),
        out.display()
    );
    let tmp = out.with_extension("tmp");
    // python3's lzma saves a Rust xz dependency; python3 is on every lab machine.
    let script = r#"
import lzma, sys
d = open(sys.argv[1], 'rb').read()
i = d.find(b'\xfd7zXZ\x00')
if i < 0: sys.exit('no xz payload in ' + sys.argv[1])
out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[i:])
if out[:4] != b'\x7fELF': sys.exit('the xz payload of %s is not an ELF kernel' % sys.argv[1])
open(sys.argv[2], 'wb').write(out)
"#;
    let st = Command::new("python3")
        .args(["-c", script])
        .arg(&k.vmlinuz)
        .arg(&tmp)
        .status()
        .context("running python3 to unpack the kernel (is python3 installed?)")?;
    if !st.success() {
        bail!(
            "unpacking {} failed ({st}); is it readable?",
            k.vmlinuz.display()
        );
    }
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Builds (or reuses) target/lab/initramfs-<version>-<hash>.cpio.gz: busybox-static, the
/// modules for 9p + overlay, and init.sh as /init.
pub fn ensure_initramfs(lab_dir: &Path, k: &Kernel) -> Result<PathBuf> {
    let hash = crc32fast::hash(format!("{INIT}{INITRD_MODULES:?}").as_bytes());
    let out = lab_dir.join(format!("initramfs-{}-{hash:08x}.cpio.gz", k.version));
    if out.exists() {
        return Ok(out);
    }
    eprintln!("lab: building {}", out.display());
    let d = lab_dir.join("initramfs.tmp");
    let _ = std::fs::remove_dir_all(&d);
    for sub in ["bin", "mods", "proc", "sys", "dev", "newroot"] {
        std::fs::create_dir_all(d.join(sub))?;
    }
    let busybox = Path::new("/bin/busybox");
    std::fs::copy(busybox, d.join("bin/busybox"))
        .context("copying /bin/busybox: install busybox-static")?;
    let mut order = Vec::<String>::new();
    for m in INITRD_MODULES {
        let o = Command::new("modprobe")
            .args(["-S", &k.version, "--show-depends", m])
            .output()
            .context("running modprobe (kmod)")?;
        if !o.status.success() {
            bail!(
                "modprobe -S {} --show-depends {m}: {}",
                k.version,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let Some(ko) = line.strip_prefix("insmod ").map(str::trim) else {
                continue;
            };
            let base = Path::new(ko)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if !order.contains(&base) {
                std::fs::copy(ko, d.join("mods").join(&base))
                    .with_context(|| format!("copying {ko}"))?;
                order.push(base);
            }
        }
    }
    std::fs::write(d.join("mods.order"), order.join("\n") + "\n")?;
    std::fs::write(d.join("init"), INIT)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let tmp = out.with_extension("tmp");
    let st = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
        .arg(&tmp)
        .current_dir(&d)
        .status()
        .context("running cpio | gzip")?;
    if !st.success() {
        bail!("building the initramfs with cpio failed ({st}): install cpio");
    }
    std::fs::rename(&tmp, &out)?;
    std::fs::remove_dir_all(&d).ok();
    // Drop initramfs images of older init scripts or kernels; they are never used again.
    for e in std::fs::read_dir(lab_dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("initramfs-") && n.ends_with(".cpio.gz") && e.path() != out {
            std::fs::remove_file(e.path()).ok();
        }
    }
    Ok(out)
}

/// Set by SIGINT/SIGTERM so the wait loop can kill QEMU and return.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catch Ctrl-C: QEMU runs in its own process group (so it never sees the terminal's
/// SIGINT) and we must kill it ourselves.
fn install_signal_handlers() {
    let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
}

/// A running QEMU; Drop kills its whole process group, whatever happened.
struct Qemu {
    child: Child,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscall; the group is QEMU's own (process_group(0) at spawn).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

pub struct VmSpec<'a> {
    pub vmlinux: &'a Path,
    pub initramfs: &'a Path,
    /// Writable share, mounted in the guest at the same path; holds run.sh.
    pub out_dir: &'a Path,
    pub console_log: &'a Path,
    pub timeout: Duration,
}

pub struct VmResult {
    /// The guest script's exit code, None if the VM ended without reporting one.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The kernel reported a lockup, stall, hung task, BUG, Oops or panic: the VM was
    /// stopped once its stacks were read.
    pub alarm: Option<KernelAlarm>,
    /// Kernel warnings (`WARNING: CPU: ...`) that did not stop the VM.
    pub warnings: Vec<String>,
    /// On a timeout: what the guest printed after sysrq asked it for every CPU's
    /// backtrace and the blocked tasks.
    pub timeout_dump: Vec<String>,
    /// Seconds from QEMU start to the guest's init handing over to the scenario.
    pub boot_s: Option<f64>,
    pub wall: Duration,
}

/// Boots the VM, streams the console to `console_log` and every line to `on_line`,
/// and returns when the guest powers off, the timeout passes or the user interrupts.
pub fn run_vm(spec: &VmSpec, mut on_line: impl FnMut(&str)) -> Result<VmResult> {
    install_signal_handlers();
    let mut log = std::fs::File::create(spec.console_log)
        .with_context(|| format!("creating {}", spec.console_log.display()))?;
    let out = spec
        .out_dir
        .to_str()
        .context("the output dir path is not UTF-8")?;
    if out.contains([',', ' ']) {
        bail!(
            "the output dir {out} contains a comma or space, which QEMU's -virtfs cannot take: use another target dir"
        );
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "1024",
        "-nographic",
        "-no-reboot",
        // Names the vCPU threads ("CPU 0/TCG") so the harness can see what the host gave them.
        "-name",
        "lab,debug-threads=on",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(spec.vmlinux)
    .arg("-initrd")
    .arg(spec.initramfs)
    .args([
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ])
    .arg("-virtfs")
    .arg(format!(
        "local,path={out},mount_tag=labout,security_model=none,multidevs=remap"
    ))
    .arg("-append")
    .arg(format!("{KERNEL_ARGS} lab.out={out}"))
    // A pipe, not a tty, so QEMU leaves the terminal alone; through it the harness sends
    // the serial break + key that make a magic sysrq in the guest (see sysrq()).
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    // SAFETY: prctl is async-signal-safe. If xtask itself is SIGKILLed (no Drop runs),
    // the kernel still kills QEMU; the group kill in Drop covers every other exit.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .context("starting qemu-system-x86_64: install qemu-system-x86 (cargo xtask bootstrap)")?;
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut vcpus = Sampler::new(child.id());
    let qemu = Qemu { child };
    let (tx, rx) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    // Readers on threads, so the wait loop below can also watch the clock and Ctrl-C.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let s = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx2.send(format!("qemu: {line}")).is_err() {
                break;
            }
        }
    });
    let mut res = VmResult {
        exit_code: None,
        timed_out: false,
        alarm: None,
        warnings: Vec::new(),
        timeout_dump: Vec::new(),
        boot_s: None,
        wall: Duration::ZERO,
    };
    let mut watch = Watch::new(Instant::now());
    // Set once the timeout has passed and sysrq asked the guest for its stacks.
    let mut dumping_since: Option<Instant> = None;
    let mut last_line = Instant::now();
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            drop(qemu);
            bail!(
                "interrupted; the VM was killed (console log: {})",
                spec.console_log.display()
            );
        }
        if let Some(since) = dumping_since {
            let quiet = last_line.elapsed() >= TIMEOUT_DUMP_QUIET;
            if since.elapsed() >= TIMEOUT_DUMP_MAX
                || (quiet && since.elapsed() >= TIMEOUT_DUMP_QUIET)
            {
                break;
            }
        } else if t0.elapsed() > spec.timeout && watch.alarm().is_none() {
            res.timed_out = true;
            eprintln!(
                "lab: timed out after {} s; asking the guest kernel for its stacks (sysrq l, w) before stopping it",
                spec.timeout.as_secs()
            );
            sysrq(&mut stdin, b"9lw");
            dumping_since = Some(Instant::now());
        }
        vcpus.maybe_sample(Instant::now());
        if watch.tick(Instant::now()) == Verdict::Done {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                last_line = Instant::now();
                if dumping_since.is_some() && res.timeout_dump.len() < TIMEOUT_DUMP_LINES {
                    res.timeout_dump.push(line.clone());
                }
                match watch.line(&line, last_line, t0.elapsed().as_secs_f64()) {
                    Verdict::Fine => {}
                    Verdict::Started(kind) => {
                        eprintln!(
                            "lab: guest kernel {} at {:.1} s: {line}",
                            kind.describe(),
                            t0.elapsed().as_secs_f64()
                        );
                        eprintln!(
                            "lab: reading the stacks from the console (sysrq l, w), then stopping the VM"
                        );
                        // The stall the kernel reports, else its usual thresholds.
                        let window = stuck_for(&line).unwrap_or(match kind {
                            AlarmKind::HungTask => Duration::from_secs(60),
                            _ => Duration::from_secs(21),
                        });
                        let view = vcpus.view(Instant::now(), window);
                        if let Some(v) = &view {
                            eprintln!("lab: host side: {}", v.verdict);
                        }
                        watch.set_host_view(view);
                        // After a panic the kernel takes no more input.
                        if kind != AlarmKind::Panic {
                            sysrq(&mut stdin, b"9lw");
                        }
                    }
                    Verdict::Done => {
                        on_line(&line);
                        break;
                    }
                }
                // Markers may follow firmware output on the same line: search, don't anchor.
                if line.contains("LAB-INIT-DONE") {
                    res.boot_s = Some(t0.elapsed().as_secs_f64());
                }
                if let Some(i) = line.find("LAB-EXIT-CODE=") {
                    let rest = &line[i + "LAB-EXIT-CODE=".len()..];
                    res.exit_code = rest.split_whitespace().next().and_then(|c| c.parse().ok());
                }
                on_line(&line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Both pipes closed: QEMU has exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(qemu);
    res.wall = t0.elapsed();
    res.warnings = std::mem::take(&mut watch.warnings);
    res.alarm = watch.into_alarm();
    log.flush()?;
    Ok(res)
}

/// The guest kernel's command line, beyond the console and the lab's own settings:
/// - loglevel=5: warnings and default-level messages reach the console, and with them the
///   stacks that come with a soft lockup or an RCU stall (`quiet` alone hides them).
/// - softlockup_all_cpu_backtrace=1: a soft lockup dumps every CPU, not only the stuck one.
/// - hung_task_timeout_secs=60: a task blocked that long is reported with its stack (the
///   kernel's default waits 120 s). A scenario that blocks IO longer on purpose raises it
///   with `sysctl kernel.hung_task_timeout_secs=...`.
/// - sysrq_always_enabled: the harness asks for backtraces through the serial console.
/// - printk.time=1: the console watch tells kernel lines by their timestamp.
const KERNEL_ARGS: &str = "console=ttyS0 quiet loglevel=5 panic=-1 printk.time=1 \
    softlockup_all_cpu_backtrace=1 sysctl.kernel.hung_task_timeout_secs=60 sysrq_always_enabled";

/// After a timeout's sysrq the harness reads the console until it is quiet this long...
const TIMEOUT_DUMP_QUIET: Duration = Duration::from_secs(3);
/// ... or for this long at most, and keeps this many lines of it.
const TIMEOUT_DUMP_MAX: Duration = Duration::from_secs(10);
const TIMEOUT_DUMP_LINES: usize = 2000;

/// Sends magic sysrq keys to the guest: on a serial console a sysrq is a break followed by
/// the key, and QEMU's -nographic console sends a break for Ctrl-A b. '9' raises the
/// console loglevel so what follows is printed in full, 'l' backtraces every CPU, 'w'
/// lists the blocked (D state) tasks with their stacks.
fn sysrq(stdin: &mut Option<ChildStdin>, keys: &[u8]) {
    let Some(s) = stdin else { return };
    for &k in keys {
        // If QEMU is gone the write fails; there is nothing more to ask then.
        if s.write_all(&[0x01, b'b', k])
            .and_then(|()| s.flush())
            .is_err()
        {
            return;
        }
        // One key per break; give the guest's serial interrupt a moment for each.
        std::thread::sleep(Duration::from_millis(150));
    }
}
