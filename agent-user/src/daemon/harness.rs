//! The daemon's request and event paths without a kernel, for the fuzz
//! targets (`fuzz/`): both HTTP APIs driven over an in-memory duplex, and
//! ring-buffer records through the decoder and the event enrichment.
//!
//! Everything above the kernel is the daemon's own code: routing, body
//! parsing, the lease service with its store and key on disk. The enforcer
//! is a channel whose task answers `Counters` with nothing and drops every
//! other command, so its callers see "enforcer task is gone" (a real error
//! path) instead of a map write.

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use agent_common::identity::Mode;
use hyper::{Request, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    runtime::Runtime,
    sync::{broadcast, mpsc, watch},
};

use super::{
    api::{self, Ctx},
    dns,
    enforcer::Command,
    events::{self, EventStats},
    lease::{self, Leases, Requester},
    reload::Reloader,
    snapshot::{IdentityView, Snapshot},
};
use crate::{event::Event, policy};

/// How long (runtime time) a client waits for a whole response. Streaming
/// routes (`/v1/events`, long polls) end here; with a paused clock this
/// costs no wall time.
const RESPONSE_WAIT: Duration = Duration::from_secs(700);
/// Response bytes kept: enough for every head and most bodies.
const RESPONSE_CAP: usize = 1 << 20;

/// Host names in policies resolve without DNS: deterministic addresses,
/// including the unspecified ones.
pub fn fake_resolve(host: &str) -> io::Result<Vec<IpAddr>> {
    let h = host
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    Ok(match h % 5 {
        0 => vec![IpAddr::from([0u8; 4])],
        1 => vec![IpAddr::from([0u8; 16])],
        2 => vec![IpAddr::from([10, 20, (h >> 8) as u8, (h >> 16) as u8])],
        3 => vec![
            IpAddr::from([192, 0, 2, h as u8]),
            IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, h as u16]),
        ],
        _ => return Err(io::Error::other("no such host (fake resolver)")),
    })
}

/// A policy file's text through everything the daemon computes before the
/// kernel: parse and check, the network tables (also with every lease scope
/// live, under two leases of different ends), the decisions they replay, and
/// the `[files]` LPM entries. The number of table entries, or the errors.
pub fn compile_policy(text: &str) -> Result<usize, String> {
    let p = policy::parse_str(Path::new("fuzz.toml"), text, &fake_resolve)
        .map_err(|e| e.to_string())?;
    let mut entries = 0;
    let mut policies = vec![p.clone()];
    if let Some(lp) = &p.leases {
        let live = [
            policy::LiveGrant {
                lease: "a".into(),
                scopes: lp.scopes.clone(),
                expires_ns: 2_000,
            },
            policy::LiveGrant {
                lease: "b".into(),
                scopes: lp.scopes.iter().rev().cloned().collect(),
                expires_ns: 1_000,
            },
        ];
        let (granted, _) = policy::with_grants(&p, &live, 500).map_err(|e| e.to_string())?;
        policies.push(granted);
    }
    for p in &policies {
        let t = policy::compile_network(p).map_err(|e| e.to_string())?;
        for class in 1..=4 {
            for ip in [IpAddr::from([10, 20, 9, 4]), IpAddr::from([0u8; 16])] {
                let _ = policy::decide(&t, class, ip, 443);
            }
        }
        entries += t.v4.len() + t.v6.len();
        if let Some(rules) = super::lsm::compile::rules_of(&p.files) {
            let files = super::lsm::compile(&rules).map_err(|e| e.to_string())?;
            entries += files.len();
        }
    }
    Ok(entries)
}

/// A daemon without a kernel (see the module comment).
pub struct Harness {
    rt: Runtime,
    ctx: Arc<Ctx>,
    leases: Arc<Leases>,
    names: Vec<String>,
    state_dir: PathBuf,
}

/// Every identity of `set` as applied, ids in name order.
fn snapshot_of(set: policy::PolicySet, state_dir: &Path) -> Snapshot {
    let mut snap = Snapshot::default();
    for (i, (name, p)) in set.identities.into_iter().enumerate() {
        let id = i as u32 + 1;
        let view = IdentityView {
            id,
            name: name.clone(),
            mode: Mode::Enforce,
            cgroup: state_dir.join("cgroup").join(&name),
            assigned: Vec::new(),
            policy: Some(Arc::new(p)),
            ruleset: id,
            v4_entries: 0,
            v6_entries: 0,
            unix_entries: 0,
            file_entries: 0,
            unix_enforced: false,
        };
        snap.by_id.insert(id, Arc::new(view));
    }
    snap
}

fn info_of(
    state_dir: &Path,
    reloader: &Reloader,
    caps: &super::capabilities::Capabilities,
) -> api::status::DaemonInfo {
    api::status::DaemonInfo {
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        started: crate::clock::now_rfc3339(),
        policy_dir: reloader.policy_dir.clone(),
        socket: state_dir.join("corral.sock"),
        pin_dir: state_dir.join("pins"),
        state_dir: state_dir.join("state"),
        cgroup_root: state_dir.join("cgroup"),
        cgroup_parent: state_dir.join("cgroup"),
        ringbuf_bytes: 1 << 20,
        adopted_pins: false,
        mechanisms: api::status::mechanisms(false, Some("no kernel (harness)"), caps),
    }
}

impl Harness {
    /// Identities from `policy_dir` (host names through [`fake_resolve`]);
    /// lease state in a fresh directory removed on drop. `rt` should be a
    /// current-thread runtime with a paused clock (tokio `test-util`), so
    /// long polls and event streams end without waiting.
    pub fn new(policy_dir: &Path, rt: Runtime) -> anyhow::Result<Harness> {
        let set = policy::load_dir_with(policy_dir, &fake_resolve)
            .map_err(|e| anyhow::anyhow!("{}: {e}", policy_dir.display()))?;
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let state_dir = base.join(format!("corral-harness-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(state_dir.join("policies"))?;
        std::fs::create_dir_all(state_dir.join("state"))?;

        let snap = snapshot_of(set, &state_dir);
        let names = snap.names();
        let (_snap_tx, snap_rx) = watch::channel(Arc::new(snap));
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(1024);
        let ctx = rt.block_on(async {
            tokio::spawn(fake_enforcer(cmd_rx, _snap_tx));
            let leases = Arc::new(Leases::open(
                &lease::Options {
                    state_dir: state_dir.join("state"),
                    reset: true,
                    cg_root: state_dir.join("cgroup"),
                    files_lsm: false,
                },
                cmd_tx.clone(),
                snap_rx.clone(),
                events.clone(),
            )?);
            let reloader = Arc::new(Reloader::new(
                state_dir.join("policies"),
                cmd_tx.clone(),
                dns::Config::new(Duration::from_secs(30)),
                Arc::new(crate::policy::compiled::NoGuard),
            ));
            let caps = Arc::new(super::capabilities::Capabilities::none(
                "no kernel (harness)",
            ));
            let info = info_of(&state_dir, &reloader, &caps);
            let sockets = super::api::Sockets::new(
                super::conn::Limits {
                    max_conns: 256,
                    per_uid: 32,
                    header_timeout: Duration::from_secs(10),
                },
                20,
                events.clone(),
            );
            let audit = Arc::new(super::audit::Audit::start(
                &state_dir.join("state"),
                super::audit::AuditArgs::default(),
                &events,
            )?);
            let ctx = Arc::new(Ctx {
                enforcer: cmd_tx,
                snapshot: snap_rx,
                events,
                event_stats: Arc::new(EventStats::default()),
                reloader,
                info,
                sockets,
                audit,
                otlp: None,
                metrics: Arc::default(),
                leases: leases.clone(),
                caps,
            });
            Ok::<_, anyhow::Error>((ctx, leases))
        })?;
        let (ctx, leases) = ctx;
        Ok(Harness {
            rt,
            ctx,
            leases,
            names,
            state_dir,
        })
    }

    /// Identity names of the snapshot.
    pub fn identities(&self) -> &[String] {
        &self.names
    }

    /// Raw bytes on a control-socket connection; the raw response bytes.
    pub fn control(&self, request: &[u8]) -> Vec<u8> {
        let ctx = self.ctx.clone();
        self.exchange(request, move |req| {
            let ctx = ctx.clone();
            async move { api::route(req, &ctx).await }
        })
    }

    /// Raw bytes on a lease-socket connection from a process attested as
    /// `identity` (attestation needs a real peer; what follows it is the
    /// agent route as served).
    pub fn lease(&self, identity: &str, request: &[u8]) -> Vec<u8> {
        let leases = self.leases.clone();
        let identity = identity.to_string();
        self.exchange(request, move |req| {
            let (leases, identity) = (leases.clone(), identity.clone());
            async move {
                let caller = api::lease::Caller::Agent {
                    identity: identity.clone(),
                    requester: Requester::Agent {
                        pid: 1,
                        uid: 0,
                        exe: None,
                        cgroup: format!("/corral/{identity}"),
                    },
                };
                let path = req.uri().path().trim_end_matches('/').to_string();
                let parts: Vec<&str> = path.split('/').skip(1).collect();
                api::lease::handle(req, &parts, &leases, caller).await
            }
        })
    }

    fn exchange<F, Fut>(&self, request: &[u8], route: F) -> Vec<u8>
    where
        F: Fn(Request<Incoming>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = hyper::Response<api::RespBody>> + Send + 'static,
    {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let request = request.to_vec();
        self.rt.block_on(async move {
            let svc = service_fn(move |req| {
                let fut = route(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let conn = tokio::spawn(
                http1::Builder::new()
                    .half_close(true)
                    .serve_connection(TokioIo::new(server), svc),
            );
            let (mut rd, mut wr) = tokio::io::split(client);
            let deadline = tokio::time::Instant::now() + RESPONSE_WAIT;
            // Written from a task of its own: a request larger than the
            // pipe must not block reading the answer.
            let writer = tokio::spawn(async move {
                let _ = wr.write_all(&request).await;
                let _ = wr.shutdown().await;
            });
            let mut out = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            while out.len() < RESPONSE_CAP {
                match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                }
            }
            writer.abort();
            conn.abort();
            out
        })
    }

    /// One ring-buffer record through the decoder and the daemon's
    /// enrichment; the event as JSON, or None when it does not decode.
    pub fn event(&self, record: &[u8]) -> Option<String> {
        let raw = crate::event::Raw::decode(record).ok()?;
        let snap = self.ctx.snapshot.borrow().clone();
        let ev: Event = events::enrich_once(&raw, &snap);
        Some(serde_json::to_string(&ev).expect("event json"))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

async fn fake_enforcer(mut rx: mpsc::Receiver<Command>, _snap: watch::Sender<Arc<Snapshot>>) {
    while let Some(cmd) = rx.recv().await {
        if let Command::Counters { reply } = cmd {
            let _ = reply.send(HashMap::new());
        }
    }
}
