//! `POST /v1/policy/suggest`: the policy advisor (`policy::suggest`) fed
//! with what the daemon knows — the audit log's events (or events the
//! caller recorded), the identity's policy file, the resolver cache,
//! Corral's protected paths — and proven by compiling the whole policy dir
//! with the proposal in it, as a reload would. With `apply` and `confirm`
//! the proposal is written to the identity's file and reloaded through the
//! normal path; the file is put back if the reload refuses it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use serde::Deserialize;
use serde_json::{Value, json};

use super::super::{capabilities::Capabilities, dns::HostCache, inspect};
use crate::{
    audit,
    event::{Event, EventKind},
    policy::{
        self, IdentityPolicy,
        suggest::{self, Limits, Proposal, Recorded, Replay},
    },
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SuggestReq {
    pub identity: String,
    /// RFC 3339; events from the audit log at or after it.
    pub since: Option<String>,
    pub until: Option<String>,
    /// Events given by the caller (a UI, a bot); when given, the audit
    /// log is not read.
    pub events: Option<Vec<Event>>,
    /// Record the identity's events live for this long (at most an hour)
    /// instead of reading the audit log (`corral policy suggest --record`).
    pub record_ms: Option<u64>,
    #[serde(default)]
    pub limits: Limits,
    /// Write the proposal to the identity's policy file and reload.
    #[serde(default)]
    pub apply: bool,
    /// Required with `apply`: the caller confirmed the change.
    #[serde(default)]
    pub confirm: bool,
}

/// A request that cannot be answered, with its HTTP status.
pub struct Refused(pub hyper::StatusCode, pub String);

fn bad(msg: impl Into<String>) -> Refused {
    Refused(hyper::StatusCode::BAD_REQUEST, msg.into())
}

fn time_of(s: &Option<String>, what: &str) -> Result<Option<SystemTime>, Refused> {
    s.as_deref()
        .map(|t| {
            humantime::parse_rfc3339_weak(t)
                .map_err(|e| bad(format!("bad `{what}` `{t}`: {e} (RFC 3339 expected)")))
        })
        .transpose()
}

/// The events to learn from: the caller's, or the audit log's.
fn events(r: &mut SuggestReq, audit_dir: &Path) -> Result<(Vec<Event>, &'static str), Refused> {
    if let Some(evs) = r.events.take() {
        return Ok((
            evs,
            if r.record_ms.is_some() {
                "recorded live"
            } else {
                "given by the caller"
            },
        ));
    }
    let filter = audit::query::Filter {
        identity: Some(r.identity.clone()),
        since: time_of(&r.since, "since")?,
        until: time_of(&r.until, "until")?,
        ..Default::default()
    };
    let records = audit::query::query(audit_dir, &filter).map_err(|e| {
        Refused(
            hyper::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the audit log {}: {e}", audit_dir.display()),
        )
    })?;
    let evs = records
        .into_iter()
        .filter(|rec| rec.kind == "event")
        .filter_map(|rec| serde_json::from_value(rec.body).ok())
        .collect();
    Ok((evs, "the audit log"))
}

/// The path the kernel judges for a recorded one, and whether it exists:
/// symlinks followed; a missing file under its parent's real path.
fn real_path(p: &str) -> Option<(String, bool)> {
    let (real, _) = super::explain::judged_path(Path::new(p)).ok()?;
    let exists = real.symlink_metadata().is_ok();
    let is_dir = (p.ends_with('/') && p != "/") || real.is_dir();
    let s = real.to_string_lossy().into_owned();
    Some((
        if is_dir && s != "/" {
            format!("{s}/")
        } else {
            s
        },
        exists,
    ))
}

/// Compiles the policy dir with `text` in place of `source`, the way a
/// reload compiles it, and returns the identity's compiled policy.
fn prove(
    dir: &Path,
    source: &Path,
    text: &str,
    name: &str,
    hosts: &HostCache,
) -> Result<Arc<IdentityPolicy>, Vec<String>> {
    let io = |e: std::io::Error| vec![format!("cannot stage the proposal: {e}")];
    let tmp = tempfile::tempdir().map_err(io)?;
    for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "toml") && p.is_file() && p != source {
            std::fs::copy(&p, tmp.path().join(entry.file_name())).map_err(io)?;
        }
    }
    let file = source.file_name().unwrap_or_default();
    std::fs::write(tmp.path().join(file), text).map_err(io)?;
    let shown = |e: String| {
        e.replace(
            &tmp.path().display().to_string(),
            &dir.display().to_string(),
        )
    };
    let set = inspect::compile_for_diff(tmp.path(), hosts).map_err(|errs| {
        errs.0
            .iter()
            .map(|e| shown(e.to_string()))
            .collect::<Vec<_>>()
    })?;
    set.into_iter()
        .find(|c| c.policy.name == name)
        .map(|c| c.policy)
        .ok_or_else(|| vec![format!("the proposal no longer defines identity `{name}`")])
}

/// Everything but the apply: blocking (reads files, compiles).
pub struct Suggestion {
    pub source: PathBuf,
    pub original: String,
    pub proposal: Proposal,
    pub replay: Replay,
    pub recorded: Recorded,
    pub from: &'static str,
}

/// Unix sockets whose clients are root on the host: never proposed.
const ROOT_SOCKETS: [&str; 4] = [
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/podman/podman.sock",
    "/var/run/podman/podman.sock",
];

pub fn suggest(
    mut r: SuggestReq,
    in_force: Option<Arc<IdentityPolicy>>,
    control_socket: &Path,
    policy_dir: &Path,
    audit_dir: &Path,
    hosts: &HostCache,
    caps: &Capabilities,
) -> Result<Suggestion, Refused> {
    r.limits.check().map_err(bad)?;
    let in_force = in_force.ok_or_else(|| {
        Refused(
            hyper::StatusCode::CONFLICT,
            format!(
                "identity `{}` has no policy file (orphaned): nothing to add to",
                r.identity
            ),
        )
    })?;
    let source = in_force.source.clone();
    let unprocessable = |m: String| Refused(hyper::StatusCode::UNPROCESSABLE_ENTITY, m);
    let original = std::fs::read_to_string(&source)
        .map_err(|e| unprocessable(format!("cannot read {}: {e}", source.display())))?;
    let current = policy::parse_str(&source, &original, &|h| hosts.peek(h))
        .map_err(|e| unprocessable(format!("the policy file does not load now: {e}")))?;
    let (evs, from) = events(&mut r, audit_dir)?;
    let recorded = suggest::collect(&r.identity, &evs, &real_path);
    let protected: Vec<String> = caps
        .protected
        .list()
        .iter()
        .map(|p| p.path.clone())
        .collect();
    let mut never_unix: Vec<String> = ROOT_SOCKETS.iter().map(|s| s.to_string()).collect();
    never_unix.push(control_socket.to_string_lossy().into_owned());
    let cx = suggest::Context {
        protected: &protected,
        never_unix: &never_unix,
        name_of: &|ip| hosts.name_of(ip),
        files_lsm: caps.files_lsm(),
    };
    let proposal =
        suggest::propose(&current, &original, &recorded, &r.limits, &cx).map_err(unprocessable)?;
    let compiled =
        prove(policy_dir, &source, &proposal.text, &r.identity, hosts).map_err(|errs| {
            unprocessable(format!(
                "the proposal does not compile (nothing written): {}",
                errs.join("; ")
            ))
        })?;
    let replay = suggest::replay(&compiled, &recorded).map_err(|e| unprocessable(e.to_string()))?;
    Ok(Suggestion {
        source,
        original,
        proposal,
        replay,
        recorded,
        from,
    })
}

impl Suggestion {
    pub fn view(&self, identity: &str, limits: &Limits) -> Value {
        json!({
            "identity": identity,
            "source": self.source,
            "events_from": self.from,
            "events": self.recorded.events,
            "operations": self.recorded.ops.len() + self.recorded.aside.len(),
            "limits": limits,
            "additions": self.proposal.additions,
            "already_allowed": self.proposal.already_allowed,
            "not_proposed": self.proposal.not_proposed,
            "replay": self.replay,
            "changed": self.proposal.text != self.original,
            "proposal": self.proposal.text,
        })
    }
}

/// Replaces `path`'s text with `text` if it still holds `expected`:
/// written beside it (exclusively created, with the file's owner and
/// mode) and renamed over it, so a reload never reads half. A symlinked
/// policy file keeps its link: its target is replaced.
pub fn swap_file(path: &Path, expected: &str, text: &str) -> Result<(), String> {
    use std::{
        io::Write as _,
        os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    };
    let path = &std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let now = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if now != expected {
        return Err(format!(
            "{} changed while the proposal was made: nothing written",
            path.display()
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // Hidden: the loader skips it if a reload runs meanwhile.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let tmp = dir.join(format!(".{name}.{}-{nanos}.suggest", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(meta.permissions().mode() & 0o7777)
            .open(&tmp)?;
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// The identity's judged events from the daemon's stream for `d`.
/// Also how many the stream dropped because this reader fell behind.
async fn record(ctx: &super::Ctx, identity: &str, d: std::time::Duration) -> (Vec<Event>, u64) {
    let mut rx = ctx.events.subscribe();
    let (mut out, mut lost) = (Vec::new(), 0);
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(ev)) => {
                if ev.identity.as_deref() == Some(identity)
                    && matches!(
                        ev.kind,
                        EventKind::Net | EventKind::Unix | EventKind::File | EventKind::Syscall
                    )
                {
                    out.push((*ev).clone());
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => lost += n,
            Ok(Err(_)) | Err(_) => return (out, lost),
        }
    }
}

/// The route: suggest, and with `apply` + `confirm` write and reload.
pub async fn route(
    req: hyper::Request<hyper::body::Incoming>,
    ctx: &super::Ctx,
) -> hyper::Response<super::RespBody> {
    use hyper::StatusCode;
    let mut r: SuggestReq = match super::body_json(req).await {
        Ok(r) => r,
        Err(e) => return super::error(StatusCode::BAD_REQUEST, e),
    };
    let found = ctx
        .snapshot
        .borrow()
        .by_name(&r.identity)
        .map(|v| v.policy.clone());
    let Some(in_force) = found else {
        return super::unknown_identity(ctx, &r.identity);
    };
    if r.apply && !r.confirm {
        return super::error(
            StatusCode::BAD_REQUEST,
            "`apply` needs `confirm`: review the proposal first",
        );
    }
    let mut recording_lost = None;
    if r.events.is_some() {
        // The caller's events are what is learnt from.
        r.record_ms = None;
    }
    if let Some(ms) = r.record_ms
        && r.events.is_none()
    {
        if ms > 3_600_000 {
            return super::error(StatusCode::BAD_REQUEST, "record: at most 1h");
        }
        let (evs, lost) = record(ctx, &r.identity, std::time::Duration::from_millis(ms)).await;
        r.events = Some(evs);
        recording_lost = Some(lost);
    }
    let (apply, name, limits) = (r.apply, r.identity.clone(), r.limits);
    // The dir the identity's file was loaded from is the one a reload reads.
    let dir = in_force
        .as_ref()
        .and_then(|p| p.source.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| ctx.reloader.policy_dir.clone());
    let (d, audit_dir, hosts) = (
        dir.clone(),
        ctx.audit.dir.clone(),
        ctx.reloader.hosts.clone(),
    );
    let control = ctx.info.socket.clone();
    let caps = ctx.caps.clone();
    let made = tokio::task::spawn_blocking(move || {
        suggest(r, in_force, &control, &d, &audit_dir, &hosts, &caps)
    })
    .await;
    let s = match made {
        Ok(Ok(s)) => s,
        Ok(Err(Refused(code, msg))) => return super::error(code, msg),
        Err(e) => return super::error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let mut v = s.view(&name, &limits);
    v["policy_dir"] = json!(ctx.reloader.policy_dir);
    // Events the stream dropped while recording (this reader fell behind).
    v["recording_lost"] = json!(recording_lost);
    if !apply {
        return super::json_resp(StatusCode::OK, v);
    }
    apply_it(ctx, &s, v, dir).await
}

/// Writes the proposal to the identity's file and reloads; puts the file
/// back if the reload refuses it.
async fn apply_it(
    ctx: &super::Ctx,
    s: &Suggestion,
    mut v: Value,
    dir: PathBuf,
) -> hyper::Response<super::RespBody> {
    use hyper::StatusCode;
    // One apply at a time: the check that the file is unchanged, the swap
    // and the reload go together.
    static APPLYING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = APPLYING.lock().await;
    if s.proposal.text == s.original {
        v["applied"] = json!({ "ok": true, "note": "nothing to add: the file is unchanged" });
        return super::json_resp(StatusCode::OK, v);
    }
    if let Err(e) = swap_file(&s.source, &s.original, &s.proposal.text) {
        return super::error(StatusCode::CONFLICT, e);
    }
    let reload_dir = (dir != ctx.reloader.policy_dir).then_some(dir);
    match ctx.reloader.reload(reload_dir, "suggest").await {
        Ok(report) => {
            v["applied"] = json!({
                "ok": true,
                "generation": ctx.reloader.status().generation,
                "report": report,
            });
            super::json_resp(StatusCode::OK, v)
        }
        Err(e) => {
            // The policy in force is unchanged (a reload keeps it on error);
            // the file goes back to what the operator wrote.
            let restored = swap_file(&s.source, &s.proposal.text, &s.original);
            super::json_resp(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "ok": false,
                    "error": format!("the reload refused the proposal; nothing changed: {e}"),
                    "file_restored": restored.is_ok(),
                }),
            )
        }
    }
}
