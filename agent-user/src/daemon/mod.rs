//! `corral daemon`: loads and pins the programs, applies the policy
//! directory, serves the API and streams events.

mod api;
mod audit;
pub mod btf;
mod capabilities;
mod conn;
mod dns;
mod enforcer;
mod events;
mod fileobs;
#[doc(hidden)]
pub mod harness;
#[cfg(test)]
mod harness_seeds;
mod hostcost;
mod inspect;
pub mod lease;
mod loader;
mod lsm;
mod mechanism;
mod metrics;
#[cfg(test)]
mod object_names;
mod otlp;
mod pins;
#[cfg(test)]
mod prop_files;
#[cfg(test)]
mod prop_net;
mod reload;
mod reports;
mod snapshot;
mod state_files;
mod syscall_need;
mod syscalls;
mod unix;
mod watch;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use agent_common::maps;
use anyhow::{Context as _, bail};
use aya::maps::{PerCpuArray, RingBuf};
use tokio::{
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info, warn};

pub use loader::{object_is_stub, unload};
pub use lsm::kernel_probe as lsm_kernel_probe;
pub use reload::compile_dir;
pub use syscalls::task_offsets;
pub use unix::kernel_support as unix_kernel_support;

#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Directory of policy files, one identity per `*.toml`.
    #[arg(long, default_value = "/etc/corral/policies")]
    pub policy_dir: PathBuf,
    /// Group allowed to use the API socket (mode becomes 0660).
    #[arg(long)]
    pub socket_group: Option<String>,
    #[arg(long, default_value = "/var/lib/corral")]
    pub state_dir: PathBuf,
    /// Where maps and links are pinned (on bpffs; mounted if missing).
    #[arg(long, default_value = "/sys/fs/bpf/corral")]
    pub pin_dir: PathBuf,
    /// The daemon's cgroup, relative to the cgroup v2 root; identities get
    /// one child each.
    #[arg(long, default_value = "corral")]
    pub cgroup_parent: String,
    /// Ring buffer size in bytes (power of two, at least 16 MiB by default).
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_parser = parse_ringbuf)]
    pub ringbuf_size: u32,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Detach programs and remove pins and empty cgroups on exit. Without
    /// it, enforcement stays in force while the daemon is down (restart,
    /// upgrade) — the default for a service.
    #[arg(long)]
    pub unload_on_exit: bool,
    /// Do not watch the policy dir (reload with SIGHUP or `corral policy
    /// apply` only).
    #[arg(long)]
    pub no_watch: bool,
    /// Quiet time that ends a burst of policy dir changes (one reload per
    /// burst).
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub watch_debounce: std::time::Duration,
    /// How often host names in rules are resolved again (clamped to
    /// 5s..10min; `CORRAL_DNS_REFRESH_FLOOR` lowers the floor, for tests). A
    /// name that stops resolving keeps its last addresses for 10 intervals
    /// (at most 1h), then its allow rules are dropped.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub dns_refresh: std::time::Duration,
    /// The agent socket, where processes of an identity ask for their own
    /// leases (mode 0666: the kernel attests the caller). Default:
    /// `lease.sock` beside the control socket.
    #[arg(long)]
    pub lease_socket: Option<PathBuf>,
    /// Start with an empty lease store when it is missing or corrupt,
    /// instead of refusing to start (every lease is dropped).
    #[arg(long)]
    pub reset_leases: bool,
    /// Open connections the agent socket admits, all callers together.
    #[arg(long, default_value_t = 256)]
    pub lease_max_connections: u32,
    /// Open connections the agent socket admits from one uid.
    #[arg(long, default_value_t = 32)]
    pub lease_max_connections_per_uid: u32,
    /// Requests per second one identity may make on the agent socket
    /// (bursts of twice that); more get 429 and a `rate-limited` event.
    #[arg(long, default_value_t = 20)]
    pub lease_rate: u32,
    /// A connection waiting longer than this for a request's headers (idle
    /// keep-alive included) is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_idle_timeout: std::time::Duration,
    #[command(flatten)]
    pub audit: audit::AuditArgs,
    #[command(flatten)]
    pub otlp: otlp::OtlpArgs,
    /// Also serve `GET /metrics` (Prometheus) on this TCP address, e.g.
    /// 127.0.0.1:9477; nothing else is served there. Program run counts
    /// need `sysctl kernel.bpf_stats_enabled=1`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_ringbuf(s: &str) -> Result<u32, String> {
    let (num, mul) = match s.strip_suffix(['M', 'm']) {
        Some(n) => (n, 1024 * 1024),
        None => match s.strip_suffix(['K', 'k']) {
            Some(n) => (n, 1024),
            None => (s, 1),
        },
    };
    let v: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 16M)"))?;
    let v = v * mul;
    if !v.is_power_of_two() || !(4096..=(1 << 30)).contains(&v) {
        return Err(format!(
            "ring buffer size {v} must be a power of two between 4K and 1G"
        ));
    }
    Ok(v as u32)
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

pub fn run(args: DaemonArgs, socket: PathBuf) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(main(args, socket))
}

async fn main(args: DaemonArgs, socket: PathBuf) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("corral daemon must run as root (it loads eBPF programs and creates cgroups)");
    }
    match conn::raise_nofile() {
        Ok(n) => info!(nofile = n, "descriptor limit"),
        Err(e) => warn!("cannot raise RLIMIT_NOFILE: {e}"),
    }
    // Policy first: a bad directory refuses start-up before anything changes.
    let dir = args.policy_dir.clone();
    let initial = tokio::task::spawn_blocking(move || compile_dir(&dir))
        .await?
        .map_err(|e| anyhow::anyhow!("refusing to start, policy errors:\n{e}"))?;
    drop(initial);

    let cg_root = crate::cgroup::cgroup2_root()?;
    let parent = crate::cgroup::join(&cg_root, &args.cgroup_parent)?;
    crate::cgroup::ensure(&parent)?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating state dir {}", args.state_dir.display()))?;

    let adopted = loader::has_pins(&args.pin_dir);
    let mut ebpf = loader::load(&args.pin_dir, args.ringbuf_size, std::process::id())?;
    if adopted {
        info!(pin_dir = %args.pin_dir.display(), "adopting maps and links left by a previous daemon");
    }
    // BPF LSM (`[files]` in the kernel, self-protection): optional; the
    // report says loudly what this kernel could not run.
    let lsm_report = lsm::load_and_attach(&mut ebpf, &args.pin_dir);
    lsm::log_report(&lsm_report);
    // Landlock-denial observer, only where the BPF-LSM file layer is not in
    // force (it reports its own denials). `CORRAL_NO_FILE_OBSERVER=1` leaves
    // it out (benchmarks measure Landlock alone with it).
    let file_observer = (!lsm_report.files_enforced()
        && std::env::var_os("CORRAL_NO_FILE_OBSERVER").is_none())
    .then(|| {
        let r = hostcost::attach_measured(hostcost::Hook::FileObserver, || {
            loader::attach_fileobs(&mut ebpf, &args.pin_dir)
        });
        if let Err(e) = &r {
            warn!(
                "file denial observer not attached: Landlock denials will not reach `corral tail`: {e}"
            );
        }
        r.map(str::to_string).map_err(|e| e.to_string())
    });
    // By real path: the kernel judges resolved paths.
    let state_real = std::fs::canonicalize(&args.state_dir).unwrap_or(args.state_dir.clone());
    let policy_real = std::fs::canonicalize(&args.policy_dir).unwrap_or(args.policy_dir.clone());
    let binary = std::env::current_exe().ok();
    let caps = Arc::new(capabilities::Capabilities {
        lsm: lsm_report,
        file_observer,
        protected: lsm::builtin::Protected::new(&state_real, &policy_real, binary.as_deref()),
    });
    let ring = RingBuf::try_from(ebpf.take_map(maps::EVENTS).context("EVENTS map")?)?;
    let drops =
        PerCpuArray::<_, u64>::try_from(ebpf.take_map(maps::EVENT_DROPS).context("EVENT_DROPS")?)?;

    let (snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::default());
    let mut enforcer = enforcer::Enforcer::new(
        ebpf,
        parent.clone(),
        args.pin_dir.clone(),
        snap_tx,
        caps.clone(),
    )?;
    // AF_UNIX rules: programs aya 0.14 cannot load, assembled and loaded by
    // hand against the pinned maps; attached by readopt_links like the rest.
    enforcer.set_unix(unix::Unix::load(&args.pin_dir));
    enforcer.readopt_links(&cg_root)?;
    enforcer.adopt_assigned(&args.state_dir, &cg_root);
    let unix_unavailable = enforcer.unix_unavailable();
    let syscall_mechanisms = enforcer.syscall_mechanisms();
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let mut actor = tokio::spawn(enforcer.run(cmd_rx));

    let hub = events::Hub::new();
    let metrics = Arc::new(metrics::Metrics::default());
    tokio::spawn(metrics.clone().run(hub.tx.subscribe()));
    // Subscribed before the reader starts: the log misses nothing.
    let audit_log = Arc::new(
        audit::Audit::start(&args.state_dir, args.audit.clone(), &hub.tx)
            .context("opening the audit log")?,
    );
    let otlp = otlp::Otlp::start(&args.otlp, hub.tx.subscribe())
        .context("starting the OTLP exporter")?
        .map(Arc::new);
    // Leases: a missing or corrupt store stops the start-up here, before
    // the first policy apply changes anything in the kernel.
    let leases = Arc::new(lease::Leases::open(
        &lease::Options {
            state_dir: args.state_dir.clone(),
            reset: args.reset_leases,
            cg_root: cg_root.clone(),
            files_lsm: caps.files_lsm(),
        },
        cmd_tx.clone(),
        snap_rx.clone(),
        hub.tx.clone(),
    )?);
    let (trip_tx, trip_rx) = mpsc::unbounded_channel();
    let lease_watch = Arc::new(lease::Watch {
        corr: leases.corr.clone(),
        snapshot: snap_rx.clone(),
        trips: trip_tx,
    });
    // Launchers' reports of what they refuse (`reports`), into the same
    // pipeline as the kernel's events.
    let (report_tx, report_rx) = mpsc::channel(4096);
    if let Err(e) = reports::start(&args.state_dir, &args.pin_dir, report_tx) {
        warn!(
            "launcher report socket unavailable ({e}): syscalls refused by `corral run` launchers are not reported"
        );
    }
    let mut reader = tokio::spawn(events::run(
        ring,
        report_rx,
        drops,
        snap_rx.clone(),
        hub.tx.clone(),
        hub.stats.clone(),
        Some(lease_watch),
    ));

    let reloader = Arc::new(
        reload::Reloader::new(
            args.policy_dir.clone(),
            cmd_tx.clone(),
            dns::Config::new(args.dns_refresh),
        )
        .with_events(hub.tx.clone()),
    );
    // Watches are set before the first apply, so no edit in between is lost.
    let watcher = if args.no_watch {
        None
    } else {
        match watch::Watcher::new(&args.policy_dir, args.watch_debounce) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(dir = %args.policy_dir.display(), "cannot watch the policy dir ({e}): reload with SIGHUP or `corral policy apply`");
                None
            }
        }
    };
    // Live grants reach the enforcer before the first apply, so a restart
    // never drops one.
    leases.prime().await;
    reloader
        .reload(None, "start")
        .await
        .map_err(|e| anyhow::anyhow!("initial policy apply failed: {e}"))?;
    let lease_socket = args
        .lease_socket
        .clone()
        .unwrap_or_else(|| socket.with_file_name("lease.sock"));
    // Any local process may connect (mode 0666); the kernel attests who.
    let agent_listener = conn::bind::bind(&lease_socket, 0o666, None)?;
    tokio::spawn(leases.clone().run(trip_rx));
    let sockets = api::Sockets::new(
        conn::Limits {
            max_conns: args.lease_max_connections,
            per_uid: args.lease_max_connections_per_uid,
            header_timeout: args.lease_idle_timeout,
        },
        args.lease_rate,
        hub.tx.clone(),
    );
    conn::spawn_isolated(
        "corral-agent-api",
        api::lease::serve_agent(
            agent_listener,
            sockets.agent.clone(),
            leases.clone(),
            sockets.rate.clone(),
        ),
    )
    .context("starting the agent socket's thread")?;
    if let Some(w) = watcher {
        tokio::spawn(w.run(reloader.clone()));
    }
    tokio::spawn(reload::refresh_hosts(reloader.clone()));

    let mut mechanisms = api::status::mechanisms(true, unix_unavailable.as_deref(), &caps);
    mechanisms.extend(syscall_mechanisms);
    for m in &mechanisms {
        if m.state == mechanism::MechanismState::Enforcing {
            info!(mechanism = m.name, "{}", m.detail);
        } else {
            warn!(mechanism = m.name, state = m.state.name(), "{}", m.detail);
        }
    }
    let info = api::status::DaemonInfo {
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        started: crate::clock::now_rfc3339(),
        policy_dir: args.policy_dir.clone(),
        socket: socket.clone(),
        pin_dir: args.pin_dir.clone(),
        state_dir: args.state_dir.clone(),
        cgroup_root: cg_root.clone(),
        cgroup_parent: parent.clone(),
        ringbuf_bytes: args.ringbuf_size,
        adopted_pins: adopted,
        mechanisms,
    };
    let listener = bind_socket(&socket, args.socket_group.as_deref())?;
    let ctx = Arc::new(api::Ctx {
        enforcer: cmd_tx.clone(),
        snapshot: snap_rx,
        events: hub.tx.clone(),
        event_stats: hub.stats.clone(),
        reloader: reloader.clone(),
        info,
        sockets,
        audit: audit_log.clone(),
        otlp: otlp.clone(),
        metrics,
        leases: leases.clone(),
        caps,
    });
    if let Some(addr) = args.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-listen {addr}"))?;
        info!(%addr, "serving /metrics");
        tokio::spawn(api::serve_metrics(l, ctx.clone()));
    }
    let server = tokio::spawn(api::serve(listener, ctx));
    sd_notify("READY=1\nSTATUS=enforcing");
    info!(socket = %socket.display(), parent = %parent.display(), "corral is ready");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let outcome = loop {
        tokio::select! {
            _ = term.recv() => break Ok("SIGTERM"),
            _ = int.recv() => break Ok("SIGINT"),
            _ = hup.recv() => {
                let _ = reloader.reload(None, "SIGHUP").await;
            }
            r = &mut actor => break Err(anyhow::anyhow!("enforcer task ended: {r:?}")),
            r = &mut reader => break Err(anyhow::anyhow!("event reader ended: {r:?}")),
        }
    };
    sd_notify("STOPPING=1");
    server.abort();
    // The event reader hands over what it already took from the ring (the
    // rest stays there for the next daemon), then the log is sealed.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Both bounded: a collector that is away costs at most its deadline.
    match &otlp {
        Some(o) => tokio::join!(audit_log.shutdown(), o.shutdown()).0,
        None => audit_log.shutdown().await,
    }
    let _ = std::fs::remove_file(&socket);
    // The agent socket's thread ends with the process.
    let _ = std::fs::remove_file(&lease_socket);
    match &outcome {
        Ok(sig) => info!("{sig}: shutting down"),
        Err(e) => error!("{e}"),
    }
    if args.unload_on_exit {
        actor.abort();
        reader.abort();
        // Let the aborted tasks drop their map and link handles first.
        tokio::task::yield_now().await;
        unload(&args.pin_dir).context("unloading pins")?;
        let busy = crate::cgroup::remove_tree(&parent);
        if busy.is_empty() {
            info!("programs detached, pins and cgroups removed");
        } else {
            warn!(
                ?busy,
                "programs detached; cgroups that still hold processes were left"
            );
        }
    } else {
        info!(pin_dir = %args.pin_dir.display(), "pins kept: enforcement stays in force until the next daemon adopts it");
    }
    outcome.map(|_| ())
}

fn bind_socket(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    let gid = match group {
        None => None,
        Some(g) => Some(
            nix::unistd::Group::from_name(g)?
                .with_context(|| format!("socket group `{g}` does not exist"))?
                .gid,
        ),
    };
    conn::bind::bind(path, if gid.is_some() { 0o660 } else { 0o600 }, gid)
}

/// systemd readiness (Type=notify), without a libsystemd dependency.
fn sd_notify(msg: &str) {
    let Some(sock) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let s = sock.to_string_lossy();
    let addr = if let Some(abs) = s.strip_prefix('@') {
        nix::sys::socket::UnixAddr::new_abstract(abs.as_bytes())
    } else {
        nix::sys::socket::UnixAddr::new(s.as_ref())
    };
    let Ok(addr) = addr else { return };
    let Ok(fd) = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return;
    };
    let _ = nix::sys::socket::sendto(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        msg.as_bytes(),
        &addr,
        nix::sys::socket::MsgFlags::empty(),
    );
}
