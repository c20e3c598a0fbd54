//! The control API: HTTP/1.1 + JSON on a unix socket, so the CLI and plain
//! `curl --unix-socket /run/corral/corral.sock http://corral/v1/status` both
//! work. Routes are listed in the README.

use std::{
    convert::Infallible,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body, Frame, Incoming},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    net::UnixListener,
    sync::{broadcast, mpsc, oneshot, watch},
};

use super::conn::http::query;
pub use super::conn::http::{RespBody, error, json_resp};
use super::{
    enforcer::Command,
    events::EventStats,
    inspect,
    reload::{ReloadError, Reloader},
    snapshot::Snapshot,
};
use crate::{
    cgroup,
    clock::now_rfc3339,
    event::{Event, EventKind},
};

mod explain;
pub mod lease;
pub mod status;
mod suggest;

pub struct Ctx {
    pub enforcer: mpsc::Sender<Command>,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub events: broadcast::Sender<Arc<Event>>,
    pub event_stats: Arc<EventStats>,
    pub reloader: Arc<Reloader>,
    pub info: status::DaemonInfo,
    pub sockets: Sockets,
    pub audit: Arc<super::audit::Audit>,
    /// `None` unless `--otlp-endpoint` is given.
    pub otlp: Option<Arc<super::otlp::Otlp>>,
    pub metrics: Arc<super::metrics::Metrics>,
    pub leases: Arc<super::lease::Leases>,
    pub caps: Arc<super::capabilities::Capabilities>,
}

/// The two API sockets' admission state, for `corral status`.
#[derive(Clone)]
pub struct Sockets {
    pub control: Arc<super::conn::Gate>,
    pub agent: Arc<super::conn::Gate>,
    pub rate: Arc<super::conn::rate::RateLimit>,
}

impl Sockets {
    /// The control socket's fixed limits (its peers are root or the socket
    /// group) and the agent socket's, given.
    pub fn new(
        agent: super::conn::Limits,
        rate_per_sec: u32,
        events: broadcast::Sender<Arc<Event>>,
    ) -> Sockets {
        use super::conn::{Gate, Limits, rate::RateLimit};
        Sockets {
            control: Gate::new(
                "control",
                Limits {
                    max_conns: 128,
                    per_uid: 128,
                    header_timeout: std::time::Duration::from_secs(30),
                },
            ),
            agent: Gate::new("agent", agent),
            rate: Arc::new(RateLimit::new(rate_per_sec, events)),
        }
    }

    pub fn view(&self) -> Value {
        json!({
            "control": self.control.view(),
            "agent": self.agent.view(),
            "agent_rate_limit": {
                "per_identity_per_sec": self.rate.per_sec(),
                "refused": self.rate.refused(),
            },
            "max_body_bytes": super::conn::body::MAX,
        })
    }
}

pub async fn serve(listener: UnixListener, ctx: Arc<Ctx>) {
    let gate = ctx.sockets.control.clone();
    super::conn::serve(
        listener,
        gate,
        |stream| stream.peer_cred().ok(),
        move |req, cred| {
            let ctx = ctx.clone();
            async move {
                let (method, route_path) = (req.method().clone(), req.uri().path().to_string());
                let resp = route(req, &ctx).await;
                // Reads change nothing; every other call is an operator
                // action, recorded with who made it (the audit log).
                if method != Method::GET {
                    operator_action(&ctx, &method, &route_path, cred.as_ref().as_ref(), &resp);
                }
                resp
            }
        },
    )
    .await
}

/// `--metrics-listen`: `GET /metrics` only, to whoever can reach the
/// address (metrics name identities and counts, nothing more); a few
/// connections at a time, each bounded like the sockets'.
pub async fn serve_metrics(listener: tokio::net::TcpListener, ctx: Arc<Ctx>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(8));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let ctx = ctx.clone();
                async move {
                    Ok::<_, Infallible>(match (req.method(), req.uri().path()) {
                        (&Method::GET, "/metrics") => metrics(&ctx).await,
                        _ => error(StatusCode::NOT_FOUND, "only GET /metrics is served here"),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn operator_action(
    ctx: &Ctx,
    method: &Method,
    route: &str,
    cred: Option<&tokio::net::unix::UCred>,
    resp: &Response<RespBody>,
) {
    let mut ev = Event::notice(crate::event::EventKind::Operator, now_rfc3339());
    ev.operator = Some(json!({
        "method": method.as_str(),
        "route": route,
        "uid": cred.map(|c| c.uid()),
        "gid": cred.map(|c| c.gid()),
        "pid": cred.and_then(|c| c.pid()),
        "status": resp.status().as_u16(),
    }));
    let _ = ctx.events.send(Arc::new(ev));
}

async fn body_json<T: for<'de> Deserialize<'de> + Default>(
    req: Request<Incoming>,
) -> Result<T, String> {
    super::conn::body::json(req).await
}

pub(super) async fn route(req: Request<Incoming>, ctx: &Ctx) -> Response<RespBody> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["metrics"]) => metrics(ctx).await,
        (Method::GET, ["v1", "status"]) => {
            json_resp(StatusCode::OK, status::status_json(ctx).await)
        }
        (Method::GET, ["v1", "identities"]) => json_resp(
            StatusCode::OK,
            Value::Array(status::identities_json(ctx).await),
        ),
        (Method::GET, ["v1", "identities", name]) => {
            let all = status::identities_json(ctx).await;
            match all.into_iter().find(|v| v["name"] == *name) {
                Some(v) => json_resp(StatusCode::OK, v),
                None => unknown_identity(ctx, name),
            }
        }
        (Method::POST, ["v1", "assign"]) => assign(req, ctx).await,
        (Method::GET, ["v1", "events"]) => events(req, ctx),
        (Method::POST, ["v1", "policy", "apply"]) => apply(req, ctx).await,
        (Method::POST, ["v1", "policy", "diff"]) => diff(req, ctx).await,
        (Method::POST, ["v1", "policy", "explain"]) => explain(req, ctx).await,
        (Method::POST, ["v1", "policy", "suggest"]) => suggest::route(req, ctx).await,
        (Method::GET, ["v1", "policy", name]) => policy(&req, ctx, name),
        (_, ["v1", "lease" | "leases" | "thaw", ..]) => {
            lease::route(req, &parts, &ctx.leases).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route {} {}", req.method(), path),
        ),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(ctx: &Ctx) -> Response<RespBody> {
    let status = status::status_json(ctx).await;
    let identities = status::identities_json(ctx).await;
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(ctx.metrics.render(&status, &identities))).boxed())
        .expect("response")
}

/// `GET /v1/policy/NAME[?sections=files,syscalls]`.
fn policy(req: &Request<Incoming>, ctx: &Ctx, name: &str) -> Response<RespBody> {
    let mut asked: Option<Vec<String>> = None;
    for (k, v) in query(req) {
        match k.as_str() {
            "sections" => asked.get_or_insert_with(Vec::new).push(v),
            _ => return error(StatusCode::BAD_REQUEST, format!("unknown parameter `{k}`")),
        }
    }
    let sections = match asked.map(|a| status::Sections::parse(&a.join(","))) {
        None => status::Sections::ALL,
        Some(Ok(s)) => s,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let snap = ctx.snapshot.borrow().clone();
    let Some(v) = snap.by_name(name) else {
        return unknown_identity(ctx, name);
    };
    let mut out = status::policy_json(v, sections, &ctx.caps);
    if sections.has("hosts") {
        out["hosts"] = json!(ctx.reloader.hosts_of(name));
    }
    if sections.has("syscalls") {
        // Where `corral run` reads the live syscall policy.
        out["syscalls"]["map"] = json!(super::syscalls::map_path(&ctx.info.pin_dir));
        out["syscalls"]["report"] = json!(super::reports::socket_path(&ctx.info.state_dir));
    }
    let resp = json_resp(StatusCode::OK, out);
    if sections.has("network") {
        // A policy with many rules makes a large JSON tree.
        super::reload::trim_heap();
    }
    resp
}

fn unknown_identity(ctx: &Ctx, name: &str) -> Response<RespBody> {
    let known = ctx.snapshot.borrow().names();
    json_resp(
        StatusCode::NOT_FOUND,
        json!({ "error": format!("unknown identity `{name}`"), "known": known }),
    )
}

#[derive(Deserialize, Default)]
struct AssignReq {
    identity: String,
    pid: Option<u32>,
    cgroup: Option<PathBuf>,
}

async fn assign(req: Request<Incoming>, ctx: &Ctx) -> Response<RespBody> {
    let r: AssignReq = match body_json(req).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if ctx.snapshot.borrow().by_name(&r.identity).is_none() {
        return unknown_identity(ctx, &r.identity);
    }
    let (reply, rx) = oneshot::channel();
    let cmd = match (r.pid, r.cgroup) {
        (Some(pid), None) => Command::AssignPid {
            identity: r.identity,
            pid,
            reply,
        },
        (None, Some(cg)) => {
            let path = if cg.is_absolute() {
                cg
            } else {
                match cgroup::join(&ctx.info.cgroup_root, &cg.to_string_lossy()) {
                    Ok(p) => p,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e),
                }
            };
            if !path.starts_with(&ctx.info.cgroup_root) || !path.join("cgroup.procs").exists() {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("{} is not a cgroup v2 directory", path.display()),
                );
            }
            Command::AssignCgroup {
                identity: r.identity,
                path,
                reply,
            }
        }
        _ => return error(StatusCode::BAD_REQUEST, "give exactly one of pid or cgroup"),
    };
    if ctx.enforcer.send(cmd).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "enforcer task is gone");
    }
    match rx.await {
        Ok(Ok(path)) => json_resp(StatusCode::OK, json!({ "cgroup": path })),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "enforcer task is gone"),
    }
}

#[derive(Deserialize, Default)]
struct ApplyReq {
    dir: Option<PathBuf>,
}

async fn apply(req: Request<Incoming>, ctx: &Ctx) -> Response<RespBody> {
    let r: ApplyReq = match body_json(req).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match ctx.reloader.reload(r.dir, "api").await {
        Ok(report) => json_resp(
            StatusCode::OK,
            json!({ "ok": true, "generation": ctx.reloader.status().generation, "report": report }),
        ),
        Err(ReloadError::Policy(errs)) => json_resp(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({
                "ok": false,
                "error": "policy errors; nothing changed",
                "errors": errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize, Default)]
struct DiffReq {
    dir: Option<PathBuf>,
}

/// What a reload of `dir` (default: the policy dir) would change; changes
/// nothing.
async fn diff(req: Request<Incoming>, ctx: &Ctx) -> Response<RespBody> {
    let r: DiffReq = match body_json(req).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let dir = r.dir.unwrap_or_else(|| ctx.reloader.policy_dir.clone());
    let (d, hosts) = (dir.clone(), ctx.reloader.hosts.clone());
    let compiled = tokio::task::spawn_blocking(move || inspect::compile_for_diff(&d, &hosts)).await;
    match compiled {
        Ok(Ok(set)) => {
            let snap = ctx.snapshot.borrow().clone();
            let now = inspect::current(&snap);
            json_resp(
                StatusCode::OK,
                json!({ "ok": true, "diff": inspect::diff(&dir, &set, &now) }),
            )
        }
        Ok(Err(errs)) => json_resp(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({
                "ok": false,
                "error": format!("policy errors in {}: a reload would change nothing", dir.display()),
                "errors": errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize, Default)]
struct ExplainReq {
    identity: String,
    connect: Option<String>,
    bind: Option<String>,
    #[serde(default)]
    udp: bool,
    open: Option<PathBuf>,
    /// With `open`: `"read"`, `"write"`, `"exec"`, or several
    /// (`"read,write"` or a list); default read.
    access: Option<Value>,
}

/// Which rule in force decides a connect, bind or open of an identity.
async fn explain(req: Request<Incoming>, ctx: &Ctx) -> Response<RespBody> {
    let r: ExplainReq = match body_json(req).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let asked = [r.connect.is_some(), r.bind.is_some(), r.open.is_some()];
    if asked.iter().filter(|a| **a).count() != 1 {
        return error(
            StatusCode::BAD_REQUEST,
            "give exactly one of connect, bind or open",
        );
    }
    let found = ctx
        .snapshot
        .borrow()
        .by_name(&r.identity)
        .map(|v| inspect::Subject::from(&**v));
    let Some(view) = found else {
        return unknown_identity(ctx, &r.identity);
    };
    if let Some(path) = r.open {
        let access = match explain::parse_access(r.access.as_ref()) {
            Ok(a) => a,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        // Resolving the path touches the file system.
        let files_lsm = ctx.caps.files_lsm();
        let answer =
            tokio::task::spawn_blocking(move || explain::open(&view, &path, access, files_lsm))
                .await;
        return match answer {
            Ok(Ok(v)) => json_resp(StatusCode::OK, v),
            Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
    }
    let (op, target) = match (r.connect, r.bind) {
        (Some(t), _) => (inspect::Op::Connect, t),
        (_, Some(t)) => (inspect::Op::Bind, t),
        (None, None) => return error(StatusCode::BAD_REQUEST, "nothing to explain"),
    };
    let (host, port) = match inspect::split_target(&target) {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let udp = r.udp;
    let answer = tokio::task::spawn_blocking(move || {
        let addrs = inspect::target_addrs(&host)?;
        Ok::<_, inspect::ExplainError>(explain::net(&view, op, udp, &target, &addrs, port))
    })
    .await;
    match answer {
        Ok(Ok(v)) => json_resp(StatusCode::OK, v),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// A streaming body fed by a channel (one JSON line per chunk).
struct ChanBody(mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn events(req: Request<Incoming>, ctx: &Ctx) -> Response<RespBody> {
    let mut identity = None;
    let mut kind = None;
    for (k, v) in query(&req) {
        match k.as_str() {
            "identity" => identity = Some(v),
            "kind" => match v.parse::<EventKind>() {
                Ok(k) => kind = Some(k),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("{e}: one of {}", EventKind::filterable_names().join(", ")),
                    );
                }
            },
            _ => return error(StatusCode::BAD_REQUEST, format!("unknown parameter `{k}`")),
        }
    }
    if let Some(name) = &identity
        && ctx.snapshot.borrow().by_name(name).is_none()
    {
        return unknown_identity(ctx, name);
    }
    let mut rx = ctx.events.subscribe();
    let (tx, body_rx) = mpsc::channel::<Bytes>(1024);
    let lost_kernel = ctx.event_stats.kernel_lost.load(Ordering::Relaxed);
    tokio::spawn(async move {
        // First line: a hello so clients know the stream is live.
        let hello = json!({ "schema": crate::event::SCHEMA, "kind": "hello",
            "time": now_rfc3339(), "kernel_lost_so_far": lost_kernel });
        if tx.send(line(&hello)).await.is_err() {
            return;
        }
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Arc::new(Event::lost(now_rfc3339(), n, "subscriber"))
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if ev.kind != EventKind::Lost {
                if identity
                    .as_ref()
                    .is_some_and(|i| ev.identity.as_ref() != Some(i))
                {
                    continue;
                }
                if kind.is_some_and(|k| ev.kind != k) {
                    continue;
                }
            }
            if tx.send(line(&*ev)).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(ChanBody(body_rx).boxed())
        .expect("response")
}

fn line<T: serde::Serialize + ?Sized>(v: &T) -> Bytes {
    let mut b = serde_json::to_vec(v).expect("json");
    b.push(b'\n');
    Bytes::from(b)
}
