//! Lease routes, on two sockets:
//!
//! - the control socket (operators; `api.rs` hands `/v1/leases…`,
//!   `/v1/lease/…` and `/v1/thaw/…` here): issue for any identity, approve,
//!   deny, revoke, thaw, list everything;
//! - the agent socket (`--lease-socket`, mode 0666): processes of an
//!   identity ask for their own leases. The caller is attested by the
//!   kernel (`lease::attest`), never by what it sends; it may only request,
//!   wait for, renew, revoke and see leases of its own identity.
//!
//! Routes (both sockets unless marked):
//! `POST /v1/leases` `{identity (control only), scopes, ttl, wait}` ·
//! `GET /v1/leases[?identity=&all=1]` · `GET /v1/leases/ID` ·
//! `GET /v1/leases/ID/wait?timeout=30s` · `POST /v1/leases/ID/renew {ttl}` ·
//! `POST /v1/leases/ID/revoke` · `POST /v1/leases/ID/approve|deny` (control) ·
//! `POST /v1/leases/revoke {identity}` (control) · `POST /v1/thaw/NAME`
//! (control) · `GET /v1/leases/pubkey` (also `/v1/lease/pubkey`) ·
//! `GET /v1/leases/jwks` · `GET /v1/whoami` (agent).

use std::{os::fd::AsRawFd as _, sync::Arc, time::Duration};

use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tracing::{debug, info};

use super::super::{
    conn::{
        Gate,
        http::{RespBody, error as err, json_resp as resp},
        rate::RateLimit,
    },
    lease::{
        Actor, IssueReq, LeaseError, Leases, Requester, SECRET_HEADER,
        attest::{self, Peer},
    },
};

/// The control API has no field for the lease service (its `Ctx` belongs to
/// `api.rs`); the daemon installs it here once at start-up.
const MAX_WAIT: Duration = Duration::from_secs(600);

fn lease_err(e: LeaseError, leases: &Leases) -> Response<RespBody> {
    match &e {
        LeaseError::BadRequest(_) => err(StatusCode::BAD_REQUEST, e),
        LeaseError::Forbidden(_) => err(StatusCode::FORBIDDEN, e),
        LeaseError::NotFound(_) => err(StatusCode::NOT_FOUND, e),
        LeaseError::UnknownIdentity(_) => resp(
            StatusCode::NOT_FOUND,
            json!({ "error": e.to_string(), "known": leases.known_identities() }),
        ),
        LeaseError::Conflict(_) => err(StatusCode::CONFLICT, e),
        LeaseError::Internal(_) => err(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| v.to_string())
    })
}

/// A duration as `"10m"` or a number of seconds.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum Dur {
    Secs(u64),
    Text(String),
}

fn dur(d: &Option<Dur>) -> Result<Option<Duration>, String> {
    match d {
        None => Ok(None),
        Some(Dur::Secs(s)) => Ok(Some(Duration::from_secs(*s))),
        Some(Dur::Text(t)) => humantime::parse_duration(t)
            .map(Some)
            .map_err(|e| format!("bad duration `{t}`: {e}")),
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    identity: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    ttl: Option<Dur>,
    /// Wait this long for an approval before answering.
    wait: Option<Dur>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct TtlBody {
    ttl: Option<Dur>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    identity: Option<String>,
    reason: Option<String>,
}

async fn body<T: for<'de> Deserialize<'de> + Default>(req: Request<Incoming>) -> Result<T, String> {
    crate::daemon::conn::body::json(req).await
}

/// Who is asking: the operator, or an attested process of `identity`.
pub enum Caller {
    Operator,
    Agent {
        identity: String,
        requester: Requester,
    },
}

impl Caller {
    /// The actor of `req`: agents may add the secret their request was
    /// answered with (`lease::SECRET_HEADER`), which makes it their own.
    fn actor(&self, req: &Request<Incoming>) -> Actor {
        match self {
            Caller::Operator => Actor::Operator,
            Caller::Agent { identity, .. } => Actor::Agent {
                identity: identity.clone(),
                secret: req
                    .headers()
                    .get(SECRET_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            },
        }
    }
}

/// Control-socket entry point (from `api.rs`).
pub async fn route(req: Request<Incoming>, parts: &[&str], leases: &Leases) -> Response<RespBody> {
    handle(req, parts, leases, Caller::Operator).await
}

pub async fn handle(
    req: Request<Incoming>,
    parts: &[&str],
    l: &Leases,
    caller: Caller,
) -> Response<RespBody> {
    let op = matches!(caller, Caller::Operator);
    let method = req.method().clone();
    let rest: &[&str] = match parts {
        ["v1", "lease" | "leases", rest @ ..] => rest,
        ["v1", "thaw", name] if op && method == Method::POST => {
            return match l.thaw(name).await {
                Ok(v) => resp(StatusCode::OK, v),
                Err(e) => lease_err(e, l),
            };
        }
        ["v1", "whoami"] if method == Method::GET => {
            return match &caller {
                Caller::Agent {
                    identity,
                    requester,
                } => resp(
                    StatusCode::OK,
                    json!({ "identity": identity, "caller": requester }),
                ),
                Caller::Operator => resp(StatusCode::OK, json!({ "operator": true })),
            };
        }
        _ => {
            return err(
                StatusCode::NOT_FOUND,
                format!("no route {method} /{}", parts.join("/")),
            );
        }
    };
    leases_route(req, rest, l, caller).await
}

/// `/v1/leases/...`, for both sockets (operator-only routes refused on the
/// agent socket).
async fn leases_route(
    req: Request<Incoming>,
    rest: &[&str],
    l: &Leases,
    caller: Caller,
) -> Response<RespBody> {
    let op = matches!(caller, Caller::Operator);
    let method = req.method().clone();
    let actor = caller.actor(&req);
    let r = match (method.clone(), rest) {
        (Method::GET, ["pubkey"]) => {
            let k = l.public_key();
            Ok(json!({ "kid": k.kid, "alg": "EdDSA", "pem": k.to_pem(), "jwk": k.to_jwk() }))
        }
        (Method::GET, ["jwks"]) => Ok(json!({ "keys": [l.public_key().to_jwk()] })),
        (Method::GET, []) => {
            let identity = match &caller {
                Caller::Agent { identity, .. } => Some(identity.clone()),
                Caller::Operator => query(&req, "identity"),
            };
            let all = query(&req, "all").is_some_and(|v| v != "0" && v != "false");
            Ok(json!(l.list(identity.as_deref(), all)))
        }
        (Method::POST, []) => return issue(req, l, caller).await,
        (Method::POST, ["revoke"]) if op => revoke_identity(req, l).await,
        (Method::GET, [id]) => l.show(id, &actor),
        (Method::GET, [id, "wait"]) => {
            let t = query(&req, "timeout").map(|t| humantime::parse_duration(&t));
            match t {
                Some(Err(e)) => Err(LeaseError::BadRequest(format!("bad timeout: {e}"))),
                t => {
                    let t = t
                        .and_then(Result::ok)
                        .unwrap_or(Duration::from_secs(30))
                        .min(MAX_WAIT);
                    l.wait(id, t, &actor).await
                }
            }
        }
        (Method::POST, [id, "renew"]) => match body::<TtlBody>(req).await.and_then(|b| dur(&b.ttl))
        {
            Err(e) => Err(LeaseError::BadRequest(e)),
            Ok(ttl) => l.renew(id, ttl, &actor).await,
        },
        (Method::POST, [id, "revoke"]) => match body::<RevokeBody>(req).await {
            Err(e) => Err(LeaseError::BadRequest(e)),
            Ok(b) => {
                let by = if op { "operator" } else { "the agent itself" };
                let reason = b.reason.unwrap_or_else(|| format!("revoked by {by}"));
                l.revoke(id, &actor, &reason).await
            }
        },
        (Method::POST, [id, d @ ("approve" | "deny")]) if op => {
            l.decide(id, *d == "approve", "operator").await
        }
        (_, ["revoke"] | [_, "approve" | "deny"]) => Err(LeaseError::Forbidden(
            "operators only: use the control socket".into(),
        )),
        _ => {
            return err(
                StatusCode::NOT_FOUND,
                format!("no route {method} /v1/leases/{}", rest.join("/")),
            );
        }
    };
    match r {
        Ok(v) => resp(StatusCode::OK, v),
        Err(e) => lease_err(e, l),
    }
}

/// The operator revokes every lease of an identity and suspends its own
/// requests until `corral thaw`.
async fn revoke_identity(req: Request<Incoming>, l: &Leases) -> Result<Value, LeaseError> {
    match body::<RevokeBody>(req).await {
        Err(e) => Err(LeaseError::BadRequest(e)),
        Ok(RevokeBody { identity: None, .. }) => {
            Err(LeaseError::BadRequest("give `identity`".into()))
        }
        Ok(RevokeBody {
            identity: Some(i),
            reason,
        }) => {
            let reason = reason.unwrap_or_else(|| "revoked by the operator".into());
            l.revoke_identity(&i, "operator", &reason)
                .await
                .map(|ids| json!({ "identity": i, "revoked": ids, "suspended": true }))
        }
    }
}

async fn issue(req: Request<Incoming>, l: &Leases, caller: Caller) -> Response<RespBody> {
    let mut actor = caller.actor(&req);
    let b: IssueBody = match body(req).await {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, e),
    };
    let (ttl, wait) = match (dur(&b.ttl), dur(&b.wait)) {
        (Ok(t), Ok(w)) => (t, w),
        (Err(e), _) | (_, Err(e)) => return err(StatusCode::BAD_REQUEST, e),
    };
    let (identity, requester) = match caller {
        Caller::Operator => match b.identity {
            Some(i) => (i, Requester::Operator),
            None => return err(StatusCode::BAD_REQUEST, "give `identity`"),
        },
        Caller::Agent {
            identity,
            requester,
        } => {
            if b.identity.as_ref().is_some_and(|i| *i != identity) {
                return err(
                    StatusCode::FORBIDDEN,
                    format!(
                        "the caller is attested as `{identity}`: it may only get leases for its own identity"
                    ),
                );
            }
            (identity, requester)
        }
    };
    let req = IssueReq {
        identity,
        scopes: b.scopes,
        ttl,
        requester,
    };
    let v = match l.issue(req).await {
        Ok(v) => v,
        Err(e) => return lease_err(e, l),
    };
    let v = match wait {
        Some(w) if v["state"] == "pending" => {
            let id = v["id"].as_str().unwrap_or("").to_string();
            let secret = v["request_secret"].as_str().map(str::to_string);
            if let Actor::Agent { secret: s, .. } = &mut actor {
                // The requester waits on its own request.
                s.clone_from(&secret);
            }
            match l.wait(&id, w.min(MAX_WAIT), &actor).await {
                Ok(mut w) => {
                    if let Some(s) = secret {
                        w["request_secret"] = json!(s);
                    }
                    w
                }
                Err(e) => return lease_err(e, l),
            }
        }
        _ => v,
    };
    let code = match v["state"].as_str() {
        Some("active") => StatusCode::OK,
        Some("pending") => StatusCode::ACCEPTED,
        _ => StatusCode::FORBIDDEN,
    };
    resp(code, v)
}

/// Serves the agent socket (mode 0666: the kernel says who the caller is):
/// each connection's peer is pinned at accept and attested again on every
/// request; attested callers are rate-limited per identity.
pub async fn serve_agent(
    listener: UnixListener,
    gate: Arc<Gate>,
    leases: Arc<Leases>,
    rate: Arc<RateLimit>,
) {
    info!("agent lease socket ready");
    crate::daemon::conn::serve(
        listener,
        gate,
        |stream| {
            let peer = attest::peer_of(stream.as_raw_fd());
            if let Ok(p) = &peer {
                debug!(pid = p.pid, uid = p.uid, via = p.via, "agent connection");
            }
            peer
        },
        move |req, peer| {
            let (leases, rate) = (leases.clone(), rate.clone());
            async move { agent_request(req, &peer, &leases, &rate).await }
        },
    )
    .await
}

async fn agent_request(
    req: Request<Incoming>,
    peer: &Result<Peer, attest::AttestError>,
    leases: &Leases,
    rate: &RateLimit,
) -> Response<RespBody> {
    let attested = match peer {
        Ok(p) => attest::attest(p),
        Err(e) => Err(e.clone()),
    };
    let a = match attested {
        Ok(a) => a,
        Err(e) => return err(StatusCode::FORBIDDEN, format!("attestation failed: {e}")),
    };
    let Some((identity, _)) = leases.identity_of_cgroup(&a.cgroup) else {
        return err(
            StatusCode::FORBIDDEN,
            format!(
                "the caller (pid {}, cgroup {}) is in no identity's cgroup: leases are for agents",
                a.pid, a.cgroup
            ),
        );
    };
    if let Err(wait) = rate.take(&identity) {
        let mut r = err(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "identity `{identity}` is over its rate limit of {} requests/s on this socket",
                rate.per_sec()
            ),
        );
        r.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from(wait.as_secs().max(1)),
        );
        return r;
    }
    let caller = Caller::Agent {
        identity,
        requester: Requester::Agent {
            pid: a.pid,
            uid: a.uid,
            exe: a.exe,
            cgroup: a.cgroup,
        },
    };
    let path = req.uri().path().trim_end_matches('/').to_string();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    handle(req, &parts, leases, caller).await
}
