//! The daemon's life in phases. Each phase is a type the next one consumes,
//! so the order that keeps enforcement gap-free is the compiler's to keep,
//! not a comment's:
//!
//! 1. [`preflight`]: root, descriptors, and the policy dir compiles — a bad
//!    directory refuses start-up before anything in the kernel changes;
//! 2. [`Kernel::load`]: programs and maps (adopting a previous daemon's
//!    pins), BPF LSM, the file observer, the [`Capabilities`], the enforcer;
//! 3. [`Kernel::start`]: the tasks — the enforcer actor, the event reader,
//!    the audit log, exporters, leases — then the first policy apply;
//! 4. [`Running::serve`]: the agent and control sockets, then READY;
//! 5. [`Serving::until_signal`], then [`Serving::shut_down`].

use std::{path::PathBuf, sync::Arc};

use agent_common::maps;
use anyhow::{Context as _, bail};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use super::{
    DaemonArgs, api, audit,
    capabilities::Capabilities,
    compile_dir, conn, dns, enforcer, events, hostcost, lease,
    lease::Leases,
    llaudit, loader, lsm,
    mechanism::{Mechanism, MechanismState},
    metrics, otlp, reload, reports,
    snapshot::Snapshot,
    watch::Watcher,
};

pub async fn preflight(args: &DaemonArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("corral daemon must run as root (it loads eBPF programs and creates cgroups)");
    }
    match conn::raise_nofile() {
        Ok(n) => info!(nofile = n, "descriptor limit"),
        Err(e) => warn!("cannot raise RLIMIT_NOFILE: {e}"),
    }
    let dir = args.policy_dir.clone();
    tokio::task::spawn_blocking(move || compile_dir(&dir))
        .await?
        .map_err(|e| anyhow::anyhow!("refusing to start, policy errors:\n{e}"))?;
    Ok(())
}

/// Programs loaded and attached, the enforcer built on them; nothing runs
/// yet.
pub struct Kernel {
    facts: Facts,
    caps: Arc<Capabilities>,
    enforcer: enforcer::Enforcer,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    ring: RingBuf<MapData>,
    drops: PerCpuArray<MapData, u64>,
}

/// What loading found, for `corral status`.
struct Facts {
    cg_root: PathBuf,
    parent: PathBuf,
    /// Maps and links came from a previous daemon's pins.
    adopted: bool,
    /// What the enforcer could attach, for the start-up log and status.
    mechanisms: Vec<Mechanism>,
}

impl Kernel {
    pub fn load(args: &DaemonArgs) -> anyhow::Result<Kernel> {
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
        let caps = Arc::new(capabilities(args, &mut ebpf));
        let ring = RingBuf::try_from(ebpf.take_map(maps::EVENTS).context("EVENTS map")?)?;
        let drops = PerCpuArray::<_, u64>::try_from(
            ebpf.take_map(maps::EVENT_DROPS).context("EVENT_DROPS")?,
        )?;

        let (snap_tx, snapshot) = watch::channel(Arc::default());
        let mut enforcer = enforcer::Enforcer::new(
            ebpf,
            parent.clone(),
            args.pin_dir.clone(),
            snap_tx,
            caps.clone(),
        )?;
        // AF_UNIX rules: programs aya 0.14 cannot load, assembled and loaded
        // by hand against the pinned maps; attached by readopt_links like the
        // rest.
        enforcer.set_unix(super::unix::Unix::load(&args.pin_dir));
        enforcer.readopt_links(&cg_root)?;
        enforcer.adopt_assigned(&args.state_dir, &cg_root);
        let mut mechanisms =
            api::status::mechanisms(true, enforcer.unix_unavailable().as_deref(), &caps);
        mechanisms.extend(enforcer.syscall_mechanisms());
        Ok(Kernel {
            facts: Facts {
                cg_root,
                parent,
                adopted,
                mechanisms,
            },
            caps,
            enforcer,
            snapshot,
            ring,
            drops,
        })
    }
}

/// Landlock's audit records as the file observer, where this host has
/// them; otherwise the reason, loudly, and the tracepoints take over.
fn file_audit(args: &DaemonArgs) -> Option<Arc<llaudit::Setup>> {
    if std::env::var("CORRAL_FILE_OBSERVER").is_ok_and(|v| v == "tracepoints") {
        return None;
    }
    let per_process = args.landlock_pids == super::LandlockPids::Process;
    match llaudit::Setup::start(&args.state_dir, per_process) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            warn!(
                "Landlock audit records unavailable ({e}): observing Landlock denials with syscall \
                 tracepoints, which every syscall on this host pays for"
            );
            None
        }
    }
}

/// BPF LSM (optional: the report says loudly what this kernel could not
/// run), the Landlock-denial observer where BPF LSM does not report file
/// denials itself, and the protected paths.
fn capabilities(args: &DaemonArgs, ebpf: &mut aya::Ebpf) -> Capabilities {
    let lsm_report = lsm::load_and_attach(ebpf, &args.pin_dir);
    lsm::log_report(&lsm_report);
    // `CORRAL_NO_FILE_OBSERVER=1` leaves the observer out (benchmarks
    // measure Landlock alone with it); `CORRAL_FILE_OBSERVER=tracepoints`
    // skips the audit records (benchmarks compare the two).
    let wanted =
        !lsm_report.files_enforced() && std::env::var_os("CORRAL_NO_FILE_OBSERVER").is_none();
    let file_audit = wanted.then(|| file_audit(args)).flatten();
    let file_observer = wanted.then(|| match &file_audit {
        Some(a) => {
            // Tracepoint links a daemon before this one pinned would still
            // make every syscall on the host pay.
            loader::detach_fileobs(&args.pin_dir);
            Ok(a.form())
        }
        None => {
            let r = hostcost::attach_measured(hostcost::Hook::FileObserver, || {
                loader::attach_fileobs(ebpf, &args.pin_dir)
            });
            if let Err(e) = &r {
                warn!(
                    "file denial observer not attached: Landlock denials will not reach `corral tail`: {e}"
                );
            }
            r.map(str::to_string).map_err(|e| e.to_string())
        }
    });
    // By real path: the kernel judges resolved paths.
    let real = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or(p.clone());
    let binary = std::env::current_exe().ok();
    Capabilities {
        lsm: lsm_report,
        file_observer,
        file_audit,
        protected: lsm::builtin::Protected::new(
            &real(&args.state_dir),
            &real(&args.policy_dir),
            binary.as_deref(),
        ),
    }
}

/// Every task running and the first policy applied; no socket served yet.
pub struct Running {
    facts: Facts,
    caps: Arc<Capabilities>,
    actor: JoinHandle<()>,
    reader: JoinHandle<anyhow::Result<()>>,
    cmd_tx: mpsc::Sender<enforcer::Command>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    hub: events::Hub,
    metrics: Arc<metrics::Metrics>,
    audit_log: Arc<audit::Audit>,
    otlp: Option<Arc<otlp::Otlp>>,
    leases: Arc<Leases>,
    trips: mpsc::UnboundedReceiver<lease::Trip>,
    reloader: Arc<reload::Reloader>,
    watcher: Option<Watcher>,
}

impl Kernel {
    pub async fn start(self, args: &DaemonArgs) -> anyhow::Result<Running> {
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let actor = tokio::spawn(self.enforcer.run(cmd_rx));
        let hub = events::Hub::new();
        let (metrics, audit_log, otlp) = subscribers(args, &hub)?;
        // Leases: a missing or corrupt store stops the start-up here,
        // before the first policy apply changes anything in the kernel.
        let leases = Arc::new(Leases::open(
            &lease::Options {
                state_dir: args.state_dir.clone(),
                reset: args.reset_leases,
                cg_root: self.facts.cg_root.clone(),
                files_lsm: self.caps.files_lsm(),
            },
            cmd_tx.clone(),
            self.snapshot.clone(),
            hub.tx.clone(),
        )?);
        let (trip_tx, trips) = mpsc::unbounded_channel();
        let lease_watch = Arc::new(lease::Watch {
            corr: leases.corr.clone(),
            snapshot: self.snapshot.clone(),
            trips: trip_tx,
        });
        // Launchers' reports of what they refuse, into the same pipeline as
        // the kernel's events.
        let (report_tx, report_rx) = mpsc::channel(4096);
        if let Some(a) = &self.caps.file_audit
            && let Some(fd) = a.take_listener()
        {
            tokio::spawn(llaudit::observe::run(
                a.clone(),
                fd,
                report_tx.clone(),
                self.snapshot.clone(),
                self.facts.cg_root.clone(),
            ));
        }
        if let Err(e) = reports::start(&args.state_dir, &args.pin_dir, report_tx) {
            warn!(
                "launcher report socket unavailable ({e}): syscalls refused by `corral run` launchers are not reported"
            );
        }
        let reader = tokio::spawn(events::run(
            self.ring,
            report_rx,
            self.drops,
            self.snapshot.clone(),
            hub.tx.clone(),
            hub.stats.clone(),
            Some(lease_watch),
        ));
        let reloader = Arc::new(
            reload::Reloader::new(
                args.policy_dir.clone(),
                cmd_tx.clone(),
                dns::Config::new(args.dns_refresh),
                Arc::new(self.caps.protected.clone()),
            )
            .with_events(hub.tx.clone()),
        );
        let watcher = watcher(args);
        // Live grants reach the enforcer before the first apply, so a
        // restart never drops one.
        leases.prime().await;
        reloader
            .reload(None, "start")
            .await
            .map_err(|e| anyhow::anyhow!("initial policy apply failed: {e}"))?;
        Ok(Running {
            facts: self.facts,
            caps: self.caps,
            actor,
            reader,
            cmd_tx,
            snapshot: self.snapshot,
            hub,
            metrics,
            audit_log,
            otlp,
            leases,
            trips,
            reloader,
            watcher,
        })
    }
}

type Subscribers = (
    Arc<metrics::Metrics>,
    Arc<audit::Audit>,
    Option<Arc<otlp::Otlp>>,
);

/// The hub's standing subscribers, subscribed before the event reader
/// starts: the log misses nothing.
fn subscribers(args: &DaemonArgs, hub: &events::Hub) -> anyhow::Result<Subscribers> {
    let metrics = Arc::new(metrics::Metrics::default());
    tokio::spawn(metrics.clone().run(hub.tx.subscribe()));
    let audit_log = Arc::new(
        audit::Audit::start(&args.state_dir, args.audit.clone(), &hub.tx)
            .context("opening the audit log")?,
    );
    let otlp = otlp::Otlp::start(&args.otlp, hub.tx.subscribe())
        .context("starting the OTLP exporter")?
        .map(Arc::new);
    Ok((metrics, audit_log, otlp))
}

/// Watches are set before the first apply, so no edit in between is lost.
fn watcher(args: &DaemonArgs) -> Option<Watcher> {
    if args.no_watch {
        return None;
    }
    Watcher::new(&args.policy_dir, args.watch_debounce)
        .inspect_err(|e| {
            warn!(dir = %args.policy_dir.display(), "cannot watch the policy dir ({e}): reload with SIGHUP or `corral policy apply`");
        })
        .ok()
}

/// Both sockets served; the daemon is ready.
pub struct Serving {
    actor: JoinHandle<()>,
    reader: JoinHandle<anyhow::Result<()>>,
    server: JoinHandle<()>,
    reloader: Arc<reload::Reloader>,
    audit_log: Arc<audit::Audit>,
    otlp: Option<Arc<otlp::Otlp>>,
    socket: PathBuf,
    lease_socket: PathBuf,
    parent: PathBuf,
    /// Put back what the audit observer changed on the host.
    file_audit: Option<Arc<llaudit::Setup>>,
}

impl Running {
    pub async fn serve(self, args: &DaemonArgs, socket: PathBuf) -> anyhow::Result<Serving> {
        let Facts {
            cg_root,
            parent,
            adopted,
            mechanisms,
        } = self.facts;
        tokio::spawn(self.leases.clone().run(self.trips));
        let (lease_socket, sockets) = serve_agents(args, &socket, &self.leases, &self.hub)?;
        if let Some(w) = self.watcher {
            tokio::spawn(w.run(self.reloader.clone()));
        }
        tokio::spawn(reload::refresh_hosts(self.reloader.clone()));
        log_mechanisms(&mechanisms);
        let info = api::status::DaemonInfo {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            started: crate::clock::now_rfc3339(),
            policy_dir: args.policy_dir.clone(),
            socket: socket.clone(),
            pin_dir: args.pin_dir.clone(),
            state_dir: args.state_dir.clone(),
            cgroup_root: cg_root,
            cgroup_parent: parent.clone(),
            ringbuf_bytes: args.ringbuf_size,
            adopted_pins: adopted,
            mechanisms,
        };
        let listener = super::bind_socket(&socket, args.socket_group.as_deref())?;
        let file_audit = self.caps.file_audit.clone();
        let ctx = Arc::new(api::Ctx {
            enforcer: self.cmd_tx,
            snapshot: self.snapshot,
            events: self.hub.tx.clone(),
            event_stats: self.hub.stats.clone(),
            reloader: self.reloader.clone(),
            info,
            sockets,
            audit: self.audit_log.clone(),
            otlp: self.otlp.clone(),
            metrics: self.metrics,
            leases: self.leases,
            caps: self.caps,
        });
        if let Some(addr) = args.metrics_listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --metrics-listen {addr}"))?;
            info!(%addr, "serving /metrics");
            tokio::spawn(api::serve_metrics(l, ctx.clone()));
        }
        let server = tokio::spawn(api::serve(listener, ctx));
        super::sd_notify("READY=1\nSTATUS=enforcing");
        info!(socket = %socket.display(), parent = %parent.display(), "corral is ready");
        Ok(Serving {
            actor: self.actor,
            reader: self.reader,
            server,
            reloader: self.reloader,
            audit_log: self.audit_log,
            otlp: self.otlp,
            socket,
            lease_socket,
            parent,
            file_audit,
        })
    }
}

/// The agent socket, on its own thread and runtime (`conn::spawn_isolated`):
/// its load cannot delay the control socket. Any local process may connect
/// (mode 0666); the kernel attests who.
fn serve_agents(
    args: &DaemonArgs,
    socket: &std::path::Path,
    leases: &Arc<Leases>,
    hub: &events::Hub,
) -> anyhow::Result<(PathBuf, api::Sockets)> {
    let lease_socket = args
        .lease_socket
        .clone()
        .unwrap_or_else(|| socket.with_file_name("lease.sock"));
    let listener = conn::bind::bind(&lease_socket, 0o666, None)?;
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
            listener,
            sockets.agent.clone(),
            leases.clone(),
            sockets.rate.clone(),
        ),
    )
    .context("starting the agent socket's thread")?;
    Ok((lease_socket, sockets))
}

fn log_mechanisms(mechanisms: &[Mechanism]) {
    for m in mechanisms {
        if m.state == MechanismState::Enforcing {
            info!(mechanism = m.name, "{}", m.detail);
        } else {
            warn!(mechanism = m.name, state = m.state.name(), "{}", m.detail);
        }
    }
}

impl Serving {
    /// Until SIGTERM/SIGINT (`Ok`, the signal's name) or a task that must
    /// not end does (`Err`); SIGHUP reloads the policies meanwhile.
    pub async fn until_signal(&mut self) -> anyhow::Result<&'static str> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok("SIGTERM"),
                _ = int.recv() => return Ok("SIGINT"),
                _ = hup.recv() => {
                    let _ = self.reloader.reload(None, "SIGHUP").await;
                }
                r = &mut self.actor => bail!("enforcer task ended: {r:?}"),
                r = &mut self.reader => bail!("event reader ended: {r:?}"),
            }
        }
    }

    pub async fn shut_down(
        self,
        args: &DaemonArgs,
        outcome: anyhow::Result<&'static str>,
    ) -> anyhow::Result<()> {
        super::sd_notify("STOPPING=1");
        self.server.abort();
        if let Some(a) = &self.file_audit {
            a.restore();
        }
        // The event reader hands over what it already took from the ring
        // (the rest stays there for the next daemon), then the log is sealed.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // Both bounded: a collector that is away costs at most its deadline.
        match &self.otlp {
            Some(o) => tokio::join!(self.audit_log.shutdown(), o.shutdown()).0,
            None => self.audit_log.shutdown().await,
        }
        let _ = std::fs::remove_file(&self.socket);
        // The agent socket's thread ends with the process.
        let _ = std::fs::remove_file(&self.lease_socket);
        match &outcome {
            Ok(sig) => info!("{sig}: shutting down"),
            Err(e) => error!("{e}"),
        }
        if args.unload_on_exit {
            self.actor.abort();
            self.reader.abort();
            // Let the aborted tasks drop their map and link handles first.
            tokio::task::yield_now().await;
            loader::unload(&args.pin_dir).context("unloading pins")?;
            let busy = crate::cgroup::remove_tree(&self.parent);
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
}
