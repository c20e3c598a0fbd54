//! Short-lived credential leases (SPIRE-style attestation, Vault-style TTL,
//! renew and revoke) whose scopes open kernel-enforced network grants.
//!
//! - `store`: lease records and their atomic persistence;
//! - `token`: the host Ed25519 key and the JWT each lease is presented as;
//! - `attest`: who is calling on the agent socket (pidfd-pinned peer);
//! - `anomaly`: lease correlation of denials, bursts of denials;
//! - `ops`: issue, renew, revoke, approve, wait (one [`Leases`] service);
//! - `manager`: expiry, approval timeouts, rotation, anomaly response.
//!
//! Routes are in `daemon/api/lease.rs`; the CLI in `cli/lease/`. The
//! enforcer keeps its own table of live grants (`enforcer/grant_table.rs`).

mod anomaly;
pub mod attest;
mod manager;
mod ops;
mod store;
pub mod token;
mod token_file;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::clock::{boot_ns, now_ms, rfc3339};
pub use anomaly::{Correlator, Trip, Watch};
pub use ops::{Actor, IssueReq, SECRET_HEADER};
use serde_json::{Value, json};
pub use store::Requester;
use store::{Lease, LeaseState, STORE_VERSION, StoreFile};
use token::{Claims, HostKey};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{info, warn};

use super::{enforcer::Command, snapshot::Snapshot};
use crate::event::{Event, EventKind};

pub use crate::daemon::state_files::KEY_FILE;
pub const STORE_FILE: &str = "leases.json";

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("no lease `{0}`")]
    NotFound(String),
    #[error("unknown identity `{0}`")]
    UnknownIdentity(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

/// How the daemon starts its lease state.
pub struct Options {
    pub state_dir: PathBuf,
    /// Start with an empty store (and a new key if the old one is unusable)
    /// instead of refusing to start on a missing or corrupt one.
    pub reset: bool,
    pub cg_root: PathBuf,
    /// BPF LSM judges file access (only then can a file grant end on time).
    pub files_lsm: bool,
}

pub struct Leases {
    key: HostKey,
    host: String,
    store_path: PathBuf,
    tokens_dir: PathBuf,
    cg_root: PathBuf,
    files_lsm: bool,
    state: Mutex<StoreFile>,
    /// Numbers every change of `state` (bumped under its lock), and the
    /// highest change known to be on disk: see `persist`.
    seq: AtomicU64,
    durable: AtomicU64,
    /// One store write (and fsync) at a time; the writers queued behind it
    /// are all covered by the next one (group commit).
    writer: tokio::sync::Mutex<()>,
    /// Per identity: one grant set in flight to the enforcer at a time, so
    /// the last one sent is never older than the last change decided.
    /// Identities do not wait for one another.
    pushing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    enforcer: mpsc::Sender<Command>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    events: broadcast::Sender<Arc<Event>>,
    pub corr: Arc<Correlator>,
    /// Bumped after every change; long-polls wait on it.
    changed: watch::Sender<u64>,
    /// Identities whose rotated token file was last written for this lease.
    rotated: Mutex<HashMap<String, String>>,
}

fn refuse(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}; refusing to start: a lost lease store would forget revocations, suspended \
         identities and frozen agents. Restore it, or start once with --reset-leases (drops every \
         lease; tokens already handed out stay verifiable until they expire)"
    )
}

impl Leases {
    /// Loads (or on first start creates) the host key and the lease store.
    pub fn open(
        opts: &Options,
        enforcer: mpsc::Sender<Command>,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        events: broadcast::Sender<Arc<Event>>,
    ) -> anyhow::Result<Leases> {
        let key_path = opts.state_dir.join(KEY_FILE);
        let store_path = opts.state_dir.join(STORE_FILE);
        let (key, store) = match (key_path.exists(), store_path.exists()) {
            (false, false) => {
                let key = HostKey::generate()?;
                key.save(&key_path)?;
                info!(key = %key_path.display(), kid = %key.public().kid, "created the lease signing key");
                let s = StoreFile {
                    version: STORE_VERSION,
                    boot_id: store::boot_id(),
                    ..Default::default()
                };
                (key, s)
            }
            _ if opts.reset => reset(&key_path, &store_path)?,
            (true, true) => {
                let key = HostKey::load(&key_path).map_err(|e| refuse(&e.to_string()))?;
                let s = StoreFile::load(&store_path).map_err(|e| refuse(&e.to_string()))?;
                (key, s)
            }
            (true, false) => {
                return Err(refuse(&format!(
                    "lease store {} is missing but the signing key exists",
                    store_path.display()
                )));
            }
            (false, true) => {
                return Err(refuse(&format!(
                    "lease signing key {} is missing but the store exists",
                    key_path.display()
                )));
            }
        };
        let (changed, _) = watch::channel(0);
        let me = Leases {
            key,
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into()),
            store_path,
            tokens_dir: opts.state_dir.join(crate::daemon::state_files::TOKENS_DIR),
            cg_root: opts.cg_root.clone(),
            files_lsm: opts.files_lsm,
            state: Mutex::new(store),
            seq: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            writer: tokio::sync::Mutex::new(()),
            pushing: Mutex::default(),
            enforcer,
            snapshot,
            events,
            corr: Arc::default(),
            changed,
            rotated: Mutex::default(),
        };
        me.after_load();
        me.save()
            .map_err(|e| anyhow::anyhow!("writing the lease store: {e}"))?;
        Ok(me)
    }

    /// Maps expiries to this boot's clock (a reboot resets `CLOCK_BOOTTIME`).
    fn after_load(&self) {
        let mut st = self.state.lock().expect("lease state");
        let boot = store::boot_id();
        if st.boot_id != boot {
            for l in st.leases.iter_mut() {
                if let Some(exp) = l.expires_ms {
                    l.expires_boot_ns = crate::clock::wall_ms_to_boot_ns(exp);
                }
            }
            st.boot_id = boot;
        }
        let live = st
            .leases
            .iter()
            .filter(|l| l.state == LeaseState::Active)
            .count();
        let pending = st
            .leases
            .iter()
            .filter(|l| l.state == LeaseState::Pending)
            .count();
        if live + pending > 0 {
            info!(active = live, pending, "lease store loaded");
        }
    }

    /// Changes the store; returns `f`'s result and the change's number,
    /// for `persist`.
    fn mutate<R>(&self, f: impl FnOnce(&mut StoreFile) -> R) -> (R, u64) {
        let mut st = self.state.lock().expect("lease state");
        let r = f(&mut st);
        (r, self.seq.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// The store as it is now, serialized, and the last change it holds.
    fn store_bytes(&self) -> (Vec<u8>, u64) {
        let mut st = self.state.lock().expect("lease state");
        st.prune(now_ms());
        let upto = self.seq.load(Ordering::Acquire);
        (serde_json::to_vec(&*st).expect("json"), upto)
    }

    /// Writes the store (atomically, durably); start-up only.
    fn save(&self) -> Result<(), LeaseError> {
        let (bytes, upto) = self.store_bytes();
        store::write_atomic(&self.store_path, &bytes)
            .map_err(|e| LeaseError::Internal(format!("writing the lease store: {e}")))?;
        self.durable.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Returns once change `seq` is on disk. Group commit: while one write
    /// runs, later changes queue on `writer`; the first of them to get it
    /// writes the store as it is then, which holds every queued change, so
    /// they share one fsync, and each caller still answers only after its
    /// own record is durable (a revoke survives a crash once answered).
    async fn persist(&self, seq: u64) -> Result<(), LeaseError> {
        if self.durable.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let _w = self.writer.lock().await;
        if self.durable.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let (bytes, upto) = self.store_bytes();
        let path = self.store_path.clone();
        match tokio::task::spawn_blocking(move || store::write_atomic(&path, &bytes)).await {
            Ok(Ok(())) => {
                self.durable.fetch_max(upto, Ordering::AcqRel);
                Ok(())
            }
            Ok(Err(e)) => Err(LeaseError::Internal(format!(
                "writing the lease store: {e}"
            ))),
            Err(e) => Err(LeaseError::Internal(e.to_string())),
        }
    }

    pub fn public_key(&self) -> &token::PublicKey {
        self.key.public()
    }

    fn token(&self, l: &Lease) -> Option<String> {
        if l.state != LeaseState::Active {
            return None;
        }
        let (iat, exp) = (l.issued_ms? / 1000, l.expires_ms? / 1000);
        Some(self.key.sign(&Claims {
            iss: format!("corral@{}", self.host),
            sub: l.identity.clone(),
            jti: l.id.clone(),
            iat,
            nbf: iat,
            exp,
            host: self.host.clone(),
            identity: l.identity.clone(),
            cgroup_id: l.cgroup_id,
            scopes: l.scopes.clone(),
        }))
    }

    /// A lease as the API shows it; `with_token` adds the signed token.
    fn view(&self, l: &Lease, with_token: bool) -> Value {
        let now = now_ms();
        let t = |ms: Option<u64>| ms.map(rfc3339);
        let mut v = json!({
            "id": l.id, "identity": l.identity, "state": l.state.name(), "scopes": l.scopes,
            "cgroup_id": l.cgroup_id, "requested_by": l.requested_by,
            "requested": rfc3339(l.requested_ms), "ttl_s": l.ttl_s, "ttl_capped": l.ttl_capped,
            "issued": t(l.issued_ms), "expires": t(l.expires_ms),
            "expires_in_s": l.expires_ms.filter(|_| l.state == LeaseState::Active)
                .map(|e| e.saturating_sub(now) / 1000),
            "max_expires": t(l.max_expires_ms), "renewals": l.renewals,
            "approval_scopes": l.approval_scopes, "approval_deadline": t(l.approval_deadline_ms),
            "decided_by": l.decided_by, "ended": t(l.ended_ms), "end_reason": l.end_reason,
            "denials": l.denials,
        });
        let (grants, warnings) = self.grants_view(l);
        v["grants"] = grants;
        if !warnings.is_empty() {
            v["warnings"] = json!(warnings);
        }
        if with_token && let Some(tok) = self.token(l) {
            v["token"] = json!(tok);
        }
        v
    }

    /// What the lease's scopes grant under the policy in force, and what of
    /// it is not enforced.
    fn grants_view(&self, l: &Lease) -> (Value, Vec<String>) {
        let snap = self.snapshot.borrow().clone();
        let Some(policy) = snap.by_name(&l.identity).and_then(|v| v.policy.clone()) else {
            return (json!([]), Vec::new());
        };
        let Some(lp) = policy.leases.clone() else {
            return (json!([]), Vec::new());
        };
        let lsm = self.files_lsm;
        let mut warnings = Vec::new();
        let mut out = Vec::new();
        for scope in &l.scopes {
            for g in lp.grants_of(scope) {
                let files = !g.files_read.is_empty() || !g.files_write.is_empty();
                // Only the BPF LSM layer can end a file rule on time; the
                // grant is withheld (never widened) everywhere else.
                let enforced = files && lsm && policy.files.confined;
                if files && !lsm {
                    warnings.push(format!(
                        "file grants of scope `{scope}` are NOT ENFORCED on this host (withheld: \
                         access is not widened): only the BPF LSM layer can end a file rule with \
                         its lease, and it is not available (`corral doctor`); Landlock, fixed \
                         at launch, never grants them"
                    ));
                } else if files && !policy.files.confined {
                    warnings.push(format!(
                        "file grants of scope `{scope}` change nothing: identity `{}` has no \
                         `[files]` section, so its opens are not restricted",
                        l.identity
                    ));
                }
                out.push(json!({
                    "scope": scope,
                    "network": g.network.iter().map(|r| r.text.clone()).collect::<Vec<_>>(),
                    "files": { "read": g.files_read, "write": g.files_write },
                    "files_enforced": enforced,
                }));
            }
        }
        warnings.dedup();
        (json!(out), warnings)
    }

    /// Live grants of `identity`, in issue order, as the kernel needs them.
    fn live_grants(&self, identity: &str) -> Vec<crate::policy::LiveGrant> {
        let now = boot_ns();
        let st = self.state.lock().expect("lease state");
        st.leases
            .iter()
            .filter(|l| l.identity == identity && l.state == LeaseState::Active)
            .filter(|l| l.expires_boot_ns > now)
            .map(|l| crate::policy::LiveGrant {
                lease: l.id.clone(),
                scopes: l.scopes.clone(),
                expires_ns: l.expires_boot_ns,
            })
            .collect()
    }

    /// Publishes the leases of `identity` to the kernel (grants) and to the
    /// event correlation.
    async fn push(&self, identity: &str) -> Result<(), LeaseError> {
        let lock = self
            .pushing
            .lock()
            .expect("pushing")
            .entry(identity.to_string())
            .or_default()
            .clone();
        // Read the leases only once in line: whatever was decided before
        // this call is in what it sends.
        let _in_line = lock.lock().await;
        let spans: Vec<anomaly::Span> = {
            let st = self.state.lock().expect("lease state");
            st.leases
                .iter()
                .filter(|l| l.identity == identity)
                .filter_map(|l| {
                    let (start, exp) = (l.issued_ms?, l.expires_ms?);
                    Some(anomaly::Span {
                        id: l.id.clone(),
                        scopes: l.scopes.clone(),
                        start_ms: start,
                        end_ms: l.ended_ms.unwrap_or(u64::MAX).min(exp),
                    })
                })
                .collect()
        };
        self.corr.set_spans(identity, spans);
        let live = self.live_grants(identity);
        let (reply, rx) = tokio::sync::oneshot::channel();
        let cmd = Command::Grants {
            identity: identity.to_string(),
            live,
            reply,
        };
        if self.enforcer.send(cmd).await.is_err() {
            return Err(LeaseError::Internal("the enforcer task is gone".into()));
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LeaseError::Internal(format!("applying lease grants: {e}"))),
            Err(_) => Err(LeaseError::Internal("the enforcer task is gone".into())),
        }
    }

    /// Hands every identity's live grants to the enforcer before the first
    /// policy apply, so a restart never drops a live grant, even briefly.
    pub async fn prime(&self) {
        let identities: Vec<String> = {
            let st = self.state.lock().expect("lease state");
            let mut v: Vec<String> = st.leases.iter().map(|l| l.identity.clone()).collect();
            v.sort();
            v.dedup();
            v
        };
        for i in identities {
            if let Err(e) = self.push(&i).await {
                warn!(identity = %i, "lease grants: {e}");
            }
        }
    }

    fn emit(&self, kind: EventKind, identity: &str, detail: Value) {
        let mut ev = Event::notice(kind, crate::clock::now_rfc3339());
        ev.identity = Some(identity.to_string());
        if kind == EventKind::Anomaly {
            ev.anomaly = Some(detail);
        } else {
            ev.lease = Some(detail);
        }
        let _ = self.events.send(Arc::new(ev));
    }

    /// The identity of a process in cgroup `rel` (relative to the cgroup v2
    /// root): the deepest identity or assigned cgroup containing it.
    pub fn identity_of_cgroup(&self, rel: &str) -> Option<(String, PathBuf)> {
        let abs = self.cg_root.join(rel.trim_start_matches('/'));
        let snap = self.snapshot.borrow().clone();
        snap.by_id
            .values()
            .filter(|v| v.policy.is_some())
            .flat_map(|v| {
                std::iter::once(&v.cgroup)
                    .chain(v.assigned.iter())
                    .map(move |c| (v.name.clone(), c.clone()))
            })
            .filter(|(_, c)| abs.starts_with(c))
            .max_by_key(|(_, c)| c.components().count())
    }

    pub fn known_identities(&self) -> Vec<String> {
        self.snapshot.borrow().names()
    }

    /// Lease counts per identity for `corral status`: one pass under the
    /// lock, without the grant views and token signing of `list`, so a
    /// status poll stays cheap whatever the store holds. Active counts only
    /// what the kernel still grants (an expiry not yet processed is not).
    pub fn summary(&self) -> Value {
        let now = boot_ns();
        let st = self.state.lock().expect("lease state");
        let mut by: std::collections::BTreeMap<&str, Value> = Default::default();
        let (mut active, mut pending) = (0u64, 0u64);
        for l in &st.leases {
            let (key, total) = match l.state {
                LeaseState::Active if l.expires_boot_ns > now => ("active", &mut active),
                LeaseState::Pending => ("pending", &mut pending),
                _ => continue,
            };
            *total += 1;
            let e = by
                .entry(l.identity.as_str())
                .or_insert_with(|| json!({ "active": 0, "pending": 0 }));
            e[key] = json!(e[key].as_u64().unwrap_or(0) + 1);
        }
        for (name, s) in st
            .identities
            .iter()
            .filter(|(_, s)| s.suspended || s.frozen)
        {
            let e = by
                .entry(name.as_str())
                .or_insert_with(|| json!({ "active": 0, "pending": 0 }));
            e["suspended"] = s.suspended.into();
            e["frozen"] = s.frozen.into();
        }
        json!({ "active": active, "pending": pending, "identities": by })
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }
}

/// `--reset-leases`: keep a usable key, set aside what cannot be read.
fn reset(key_path: &Path, store_path: &Path) -> anyhow::Result<(HostKey, StoreFile)> {
    let aside = |p: &Path| {
        if p.exists() {
            let to = p.with_extension(format!("bad-{}", now_ms()));
            let _ = std::fs::rename(p, &to);
            warn!(from = %p.display(), to = %to.display(), "set aside");
        }
    };
    let key = match HostKey::load(key_path) {
        Ok(k) => k,
        Err(e) => {
            warn!("--reset-leases: signing key unusable ({e}); creating a new one");
            aside(key_path);
            let _ = std::fs::remove_file(key_path.with_extension("pub.pem"));
            let k = HostKey::generate()?;
            k.save(key_path)?;
            k
        }
    };
    aside(store_path);
    warn!("--reset-leases: starting with an empty lease store");
    Ok((
        key,
        StoreFile {
            version: STORE_VERSION,
            boot_id: store::boot_id(),
            ..Default::default()
        },
    ))
}
