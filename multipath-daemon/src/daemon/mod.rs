//! `mpathd daemon`: the long-running service. Owns an [`Engine`] and feeds it: the first
//! scan at start, udev events for paths coming and going (debounced, so a login of 128
//! LUNs is one pass), a slow periodic rescan as a safety net, the path checker, control
//! socket requests and signals.
//!
//! Exiting never touches the maps: a stopped or crashed daemon leaves every map as it
//! was, serving I/O on the paths it has.

mod engine;

pub use engine::{Engine, Summary};

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    control::{Request, Response},
    dm::{DmBackend, KernelDm},
    topology::Sysfs,
};

/// Where the daemon looks for its config unless told otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/mpathd/mpathd.toml";

#[derive(Clone, Debug)]
pub struct Options {
    /// The config file; when it is the default path and missing, built-in defaults apply.
    pub config: PathBuf,
    /// Overrides the config's `socket`.
    pub socket: Option<PathBuf>,
    /// Rescan even without udev events this often (udev may not run, or miss events).
    pub rescan_interval: Duration,
    /// The path checker's interval.
    pub check_interval: Duration,
    /// Gathers udev events for this long before a rescan.
    pub debounce: Duration,
}

/// Reads the config for the daemon: a missing file at the default path means defaults;
/// any other problem is an error with every line and column.
pub fn load_config(path: &Path) -> Result<Config> {
    if path == Path::new(DEFAULT_CONFIG) && !path.exists() {
        info!("no {DEFAULT_CONFIG}: using built-in defaults");
        return Ok(Config::default());
    }
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

pub async fn run(opts: Options) -> Result<()> {
    let t0 = Instant::now();
    let cfg = load_config(&opts.config)?;
    let socket_path = opts
        .socket
        .clone()
        .unwrap_or_else(|| cfg.defaults.socket.clone());
    let listener = bind_socket(&socket_path)?;
    let dm = KernelDm::new().context("opening device-mapper")?;
    let engine = Engine::new(cfg, Sysfs::default(), dm)?;
    let r = serve_engine(opts, engine, listener, t0, std::future::pending()).await;
    let _ = std::fs::remove_file(&socket_path);
    r
}

/// The daemon's loop around an engine on any device-mapper backend, until SIGTERM,
/// SIGINT or `stop` (tests) completes.
pub async fn serve_engine<D: DmBackend>(
    opts: Options,
    mut engine: Engine<D>,
    listener: UnixListener,
    t0: Instant,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    debug!(
        ms = t0.elapsed().as_millis(),
        "config, socket and device-mapper open"
    );
    let sum = engine.reconcile();
    info!(
        "ready maps={} paths={} created={} reloaded={} errors={} elapsed_ms={} (scan {} ms, read dm {} ms, create/reload {} ms)",
        sum.maps,
        sum.paths,
        sum.created.len(),
        sum.reloaded.len(),
        sum.errors.len(),
        t0.elapsed().as_millis(),
        sum.scan_ms,
        sum.read_dm_ms,
        sum.apply_ms
    );
    sd_notify("READY=1");

    let (req_tx, mut req_rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(16);
    tokio::spawn(accept_loop(listener, req_tx));
    let mut udev = match udev_monitor() {
        Ok(m) => Some(m),
        Err(e) => {
            warn!("no udev monitor ({e}): relying on the periodic rescan");
            None
        }
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut rescan = tokio::time::interval(opts.rescan_interval);
    rescan.tick().await;
    let mut check = tokio::time::interval(opts.check_interval);
    check.tick().await;
    let mut pending: Option<tokio::time::Instant> = None;
    let mut stop = std::pin::pin!(stop);
    loop {
        let debounce = async {
            match pending {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((req, reply)) = req_rx.recv() => {
                let resp = match req {
                    Request::Reconfigure => reconfigure(&mut engine, &opts.config),
                    other => engine.handle(other),
                };
                let _ = reply.send(resp);
            }
            ev = next_udev(&mut udev) => {
                match ev {
                    Some(name) => {
                        debug!(device = %name, "udev event");
                        pending.get_or_insert_with(|| tokio::time::Instant::now() + opts.debounce);
                    }
                    None => {
                        warn!("udev monitor failed: relying on the periodic rescan");
                        udev = None;
                    }
                }
            }
            _ = debounce => {
                pending = None;
                engine.reconcile();
            }
            _ = rescan.tick() => { engine.reconcile(); }
            _ = check.tick() => { engine.check(); }
            _ = hup.recv() => { let r = reconfigure(&mut engine, &opts.config); info!("SIGHUP: {r:?}"); }
            _ = term.recv() => { info!("SIGTERM: exiting; maps are left as they are"); break; }
            _ = int.recv() => { info!("SIGINT: exiting; maps are left as they are"); break; }
            _ = &mut stop => { info!("stopped; maps are left as they are"); break; }
        }
    }
    Ok(())
}

fn reconfigure<D: DmBackend>(engine: &mut Engine<D>, path: &Path) -> Response {
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(e) => {
            warn!("reconfigure: {e:#}; keeping the running config");
            return Response::Error {
                message: format!("{e:#}; the running config stays"),
            };
        }
    };
    if let Err(e) = engine.set_config(cfg) {
        return Response::Error {
            message: format!("{e:#}"),
        };
    }
    let s = engine.reconcile();
    Response::Ok {
        message: format!(
            "config re-read: {} maps, {} created, {} reloaded, {} errors",
            s.maps,
            s.created.len(),
            s.reloaded.len(),
            s.errors.len()
        ),
    }
}

/// Binds the control socket, root-only. A socket left by a dead daemon is replaced; one
/// a live daemon answers on is an error (two daemons must not drive the same maps).
pub fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another mpathd is running (it answers on {}): stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(l)
}

async fn accept_loop(
    listener: UnixListener,
    tx: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, tx).await {
                debug!("control connection: {e}");
            }
        });
    }
}

async fn serve(
    stream: UnixStream,
    tx: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
) -> Result<()> {
    // Root only (or the daemon's own user, for tests): the socket can fail paths.
    let cred = stream.peer_cred()?;
    let me = unsafe { libc::geteuid() };
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    // A request is one short line; cap it so a client cannot make us buffer without end.
    let n = BufReader::new(rd.take_limit(64 * 1024))
        .read_line(&mut line)
        .await?;
    let resp = if cred.uid() != 0 && cred.uid() != me {
        Response::Error {
            message: "permission denied: the control socket is for root".into(),
        }
    } else if n == 0 {
        return Ok(());
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let (rtx, rrx) = oneshot::channel();
                tx.send((req, rtx)).await?;
                rrx.await?
            }
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        }
    };
    let mut out = serde_json::to_string(&resp)?;
    out.push('\n');
    wr.write_all(out.as_bytes()).await?;
    Ok(())
}

trait TakeLimit: Sized {
    fn take_limit(self, n: u64) -> tokio::io::Take<Self>;
}

impl<T: tokio::io::AsyncRead> TakeLimit for T {
    fn take_limit(self, n: u64) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, n)
    }
}

type Udev = tokio::io::unix::AsyncFd<tokio_udev::MonitorSocket>;

/// Block-disk events from udevd (after its rules ran, so WWIDs and nodes are in place).
fn udev_monitor() -> std::io::Result<Udev> {
    let sock = tokio_udev::MonitorBuilder::new()?
        .match_subsystem_devtype("block", "disk")?
        .listen()?;
    // SAFETY: the monitor socket owns its fd and lives inside the AsyncFd.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// The next event for a SCSI disk (sd*); `None` if the monitor failed.
async fn next_udev(udev: &mut Option<Udev>) -> Option<String> {
    let Some(fd) = udev else {
        return std::future::pending().await;
    };
    loop {
        let mut guard = fd.readable_mut().await.ok()?;
        while let Some(ev) = guard.get_inner_mut().iter().next() {
            let name = ev.sysname().to_string_lossy().into_owned();
            // Our own dm-N changes come here too: only paths matter.
            if name.starts_with("sd") {
                return Some(format!("{:?} {name}", ev.event_type()));
            }
        }
        guard.clear_ready();
    }
}

/// Tells systemd (Type=notify) we are up, when started by it.
fn sd_notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let p = PathBuf::from(&path);
    let r = if let Some(abs) = path.to_str().and_then(|s| s.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes())
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &p)
    };
    if let Err(e) = r {
        warn!("sd_notify {msg}: {e}");
    }
}
