//! What operators and agents can do with leases. Every change is written to
//! the store before it reaches the kernel, and emitted as a `lease` event.

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    LeaseError, Leases, Requester,
    store::{Lease, LeaseState},
};
use crate::{
    clock::{now_ms, wall_ms_to_boot_ns},
    event::EventKind,
    policy::LeasePolicy,
};

pub struct IssueReq {
    pub identity: String,
    pub scopes: Vec<String>,
    pub ttl: Option<Duration>,
    pub requester: Requester,
}

/// Who acts on an existing lease: the operator (control socket) or an
/// attested agent, which may only touch its own identity's leases, and
/// sees a token only with the secret its request was answered with.
#[derive(Debug, Clone)]
pub enum Actor {
    Operator,
    Agent {
        identity: String,
        /// The `corral-request-secret` the caller presented, if any.
        secret: Option<String>,
    },
}

impl Actor {
    fn name(&self) -> String {
        match self {
            Actor::Operator => "operator".into(),
            Actor::Agent { identity, .. } => format!("agent {identity}"),
        }
    }

    /// Whether the caller made the request behind `l` (the operator counts
    /// as the owner of every lease). Pids are not proof: they are reused,
    /// and every process of the identity shares the attestation; the
    /// secret goes only to the connection that made the request.
    pub(super) fn owns(&self, l: &Lease) -> bool {
        match self {
            Actor::Operator => true,
            Actor::Agent { identity, secret } => {
                *identity == l.identity
                    && matches!((secret, &l.secret_sha256),
                        (Some(s), Some(h)) if secret_hash(s) == *h)
            }
        }
    }
}

/// A fresh request secret (256 bits, hex).
fn new_secret() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn secret_hash(secret: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The header an agent presents its request secret in.
pub const SECRET_HEADER: &str = "corral-request-secret";

/// Agents see their own identity's leases only; others' are "not found".
fn visible(l: &Lease, actor: &Actor) -> Result<(), LeaseError> {
    match actor {
        Actor::Agent { identity, .. } if *identity != l.identity => {
            Err(LeaseError::NotFound(l.id.clone()))
        }
        _ => Ok(()),
    }
}

/// Active and pending leases one identity may hold at once.
const MAX_OPEN_LEASES: usize = 4096;

fn new_id() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Starts a lease's life now.
fn activate(l: &mut Lease, now: u64, max_ttl_s: u64) {
    let secs = now / 1000;
    let exp = (secs + l.ttl_s) * 1000;
    l.state = LeaseState::Active;
    l.issued_ms = Some(now);
    l.expires_ms = Some(exp);
    l.max_expires_ms = Some((secs + max_ttl_s) * 1000);
    l.expires_boot_ns = wall_ms_to_boot_ns(exp);
}

fn end(l: &mut Lease, state: LeaseState, now: u64, reason: &str) {
    l.state = state;
    l.ended_ms = Some(now);
    l.end_reason = Some(reason.to_string());
}

impl Leases {
    fn lease_policy(&self, identity: &str) -> Result<(LeasePolicy, u64), LeaseError> {
        let snap = self.snapshot.borrow().clone();
        let view = snap
            .by_name(identity)
            .filter(|v| v.policy.is_some())
            .ok_or_else(|| LeaseError::UnknownIdentity(identity.to_string()))?;
        let lp = view
            .policy
            .as_ref()
            .and_then(|p| p.leases.clone())
            .ok_or_else(|| {
                LeaseError::Forbidden(format!(
                    "identity `{identity}` has no [leases] section: it can hold no lease"
                ))
            })?;
        Ok((lp, crate::cgroup::id(&view.cgroup).unwrap_or(0)))
    }

    /// Makes change `seq` durable and applies the leases of `identity` to
    /// the kernel, both at once; nothing is answered (no token handed out,
    /// no revoke acknowledged) before both are done. On failure, ends
    /// `failed` (the lease whose change could not be made) closed.
    async fn commit(
        &self,
        identity: &str,
        seq: u64,
        failed: Option<&str>,
    ) -> Result<(), LeaseError> {
        let (saved, pushed) = tokio::join!(self.persist(seq), self.push(identity));
        let r = saved.and(pushed);
        if let (Err(e), Some(id)) = (&r, failed) {
            let ((), seq) = self.mutate(|st| {
                if let Some(l) = st.leases.iter_mut().find(|l| l.id == id) {
                    end(
                        l,
                        LeaseState::Revoked,
                        now_ms(),
                        &format!("kernel apply failed: {e}"),
                    );
                }
            });
            let _ = tokio::join!(self.persist(seq), self.push(identity));
        }
        self.bump();
        r
    }

    pub async fn issue(&self, req: IssueReq) -> Result<Value, LeaseError> {
        let (lp, cgroup_id) = self.lease_policy(&req.identity)?;
        let scopes = allowed_scopes(&lp, &req.identity, &req.scopes)?;
        let agent = matches!(req.requester, Requester::Agent { .. });
        if agent && self.identity_state(&req.identity).suspended {
            return Err(LeaseError::Forbidden(format!(
                "leases of `{0}` are suspended (anomaly response or operator revoke); \
                 `corral thaw {0}` lifts it",
                req.identity
            )));
        }
        let max = lp.max_ttl_s;
        let want = req.ttl.map_or(max, |d| d.as_secs());
        if want == 0 {
            return Err(LeaseError::BadRequest("ttl must be at least 1s".into()));
        }
        let approval_scopes: Vec<String> = scopes
            .iter()
            .filter(|s| lp.needs_approval(s))
            .cloned()
            .collect();
        let now = now_ms();
        let mut l = Lease {
            ttl_s: want.min(max),
            ttl_capped: want > max,
            approval_scopes,
            ..Lease::requested(&req, cgroup_id, scopes, now)
        };
        let secret = agent.then(new_secret);
        l.secret_sha256 = secret.as_deref().map(secret_hash);
        let pending = agent && !l.approval_scopes.is_empty();
        if pending {
            l.approval_deadline_ms = Some(now + lp.approval_timeout_s * 1000);
        } else {
            if !l.approval_scopes.is_empty() {
                l.decided_by = Some("operator (issued)".into());
            }
            activate(&mut l, now, max);
        }
        let id = l.id.clone();
        let (full, seq) = self.mutate(|st| {
            let open = st
                .leases
                .iter()
                .filter(|x| x.identity == l.identity && !x.state.ended())
                .count();
            if open >= MAX_OPEN_LEASES {
                return true;
            }
            st.leases.push(l);
            false
        });
        if full {
            return Err(LeaseError::Conflict(format!(
                "`{}` holds too many leases; revoke some first",
                req.identity
            )));
        }
        self.commit(&req.identity, seq, Some(&id)).await?;
        let mut v = self.get_view(&id, true)?;
        if let Some(s) = secret {
            // Shown once, to the requester: what `wait` and `renew` ask
            // for before they hand out this lease's token.
            v["request_secret"] = json!(s);
        }
        self.emit(
            EventKind::Lease,
            &req.identity,
            json!({ "action": if pending { "request" } else { "issue" }, "lease": id,
                "scopes": v["scopes"], "expires": v["expires"], "by": req.requester,
                "ttl_capped": v["ttl_capped"] }),
        );
        Ok(v)
    }

    fn get_view(&self, id: &str, with_token: bool) -> Result<Value, LeaseError> {
        let l = self.get(id)?;
        Ok(self.view(&l, with_token))
    }

    fn get(&self, id: &str) -> Result<Lease, LeaseError> {
        let st = self.state.lock().expect("lease state");
        st.leases
            .iter()
            .find(|l| l.id == id)
            .cloned()
            .ok_or_else(|| LeaseError::NotFound(id.to_string()))
    }

    /// The lease, if `actor` may see it (agents: their own identity only).
    fn get_for(&self, id: &str, actor: &Actor) -> Result<Lease, LeaseError> {
        let l = self.get(id)?;
        visible(&l, actor)?;
        Ok(l)
    }

    pub fn identity_state(&self, identity: &str) -> super::store::IdentityState {
        let st = self.state.lock().expect("lease state");
        st.identities.get(identity).cloned().unwrap_or_default()
    }

    /// Extends an active lease by `ttl` (default: its original ttl) from
    /// now, never past issue + `max_ttl`. Agents renew only leases agents
    /// requested, and an approval-scoped one only up to its approved end;
    /// the token comes back only to the lease's owner.
    pub async fn renew(
        &self,
        id: &str,
        ttl: Option<Duration>,
        actor: &Actor,
    ) -> Result<Value, LeaseError> {
        let now = now_ms();
        // Checked and changed in one critical section: a concurrent revoke
        // either comes first (and this is refused) or ends the renewed lease.
        let (r, seq) = self.mutate(|st| -> Result<_, LeaseError> {
            let m = st
                .leases
                .iter_mut()
                .find(|x| x.id == id)
                .ok_or_else(|| LeaseError::NotFound(id.to_string()))?;
            visible(m, actor)?;
            if m.state != LeaseState::Active {
                return Err(LeaseError::Conflict(format!(
                    "lease {id} is {}, not active",
                    m.state.name()
                )));
            }
            let agent = matches!(actor, Actor::Agent { .. });
            renewable_by(m, agent)?;
            let incr = ttl.map_or(m.ttl_s, |d| d.as_secs()).max(1);
            let max_cap = m.max_expires_ms.unwrap_or(0);
            let approved = (!m.approval_scopes.is_empty())
                .then(|| m.approved_end_ms.or(m.expires_ms).unwrap_or(0));
            let (cap, capped_by) = match approved {
                Some(a) if agent && a < max_cap => (a, "approval"),
                _ => (max_cap, "max_ttl"),
            };
            let want = (now / 1000 + incr) * 1000;
            let old = m.expires_ms.unwrap_or(0);
            let exp = want.min(cap).max(old);
            if exp != old {
                m.expires_ms = Some(exp);
                m.expires_boot_ns = wall_ms_to_boot_ns(exp);
            }
            if !agent && approved.is_some() {
                // The operator approves; its renewal is a new approval.
                m.approved_end_ms = Some(exp);
            }
            m.renewals += 1;
            Ok((
                m.identity.clone(),
                (want > cap).then_some(capped_by),
                exp != old,
                actor.owns(m),
            ))
        });
        let (identity, capped, changed, owner) = r?;
        if changed {
            self.commit(&identity, seq, None).await?;
        } else {
            // Nothing reaches the kernel; the renewal count is still kept.
            self.persist(seq).await?;
        }
        let mut v = self.get_view(id, owner)?;
        note_cap(&mut v, capped);
        self.emit(
            EventKind::Lease,
            &identity,
            json!({ "action": "renew", "lease": id, "expires": v["expires"],
                "capped": capped.is_some(), "capped_by": capped, "by": actor.name() }),
        );
        Ok(v)
    }

    /// Ends an active or pending lease now; its grants leave the kernel
    /// before this returns.
    pub async fn revoke(&self, id: &str, actor: &Actor, reason: &str) -> Result<Value, LeaseError> {
        let started = std::time::Instant::now();
        let (r, seq) = self.mutate(|st| {
            let m = st
                .leases
                .iter_mut()
                .find(|x| x.id == id)
                .ok_or_else(|| LeaseError::NotFound(id.to_string()))?;
            visible(m, actor)?;
            if m.state.ended() {
                return Err(LeaseError::Conflict(format!(
                    "lease {id} is already {}",
                    m.state.name()
                )));
            }
            end(m, LeaseState::Revoked, now_ms(), reason);
            Ok(m.identity.clone())
        });
        let identity = r?;
        // Answered only once the record is durable and the kernel has it.
        self.commit(&identity, seq, None).await?;
        let applied_us = started.elapsed().as_micros() as u64;
        self.emit(
            EventKind::Lease,
            &identity,
            json!({ "action": "revoke", "lease": id, "by": actor.name(), "reason": reason,
                "kernel_applied_us": applied_us }),
        );
        let mut v = self.get_view(id, false)?;
        v["kernel_applied_us"] = json!(applied_us);
        Ok(v)
    }

    /// Ends every active and pending lease of `identity` and suspends its
    /// own requests and rotation until `corral thaw`.
    pub async fn revoke_identity(
        &self,
        identity: &str,
        by: &str,
        reason: &str,
    ) -> Result<Vec<String>, LeaseError> {
        let now = now_ms();
        let (ids, seq) = self.mutate(|st| -> Vec<String> {
            st.identities
                .entry(identity.to_string())
                .or_default()
                .suspended = true;
            st.leases
                .iter_mut()
                .filter(|l| l.identity == identity && !l.state.ended())
                .map(|l| {
                    end(l, LeaseState::Revoked, now, reason);
                    l.id.clone()
                })
                .collect()
        });
        self.commit(identity, seq, None).await?;
        for id in &ids {
            self.emit(
                EventKind::Lease,
                identity,
                json!({ "action": "revoke", "lease": id, "by": by, "reason": reason }),
            );
        }
        Ok(ids)
    }

    /// Decides a pending request.
    pub async fn decide(&self, id: &str, approve: bool, by: &str) -> Result<Value, LeaseError> {
        let l = self.get(id)?;
        let max = self
            .lease_policy(&l.identity)
            .map(|(lp, _)| lp.max_ttl_s)
            .unwrap_or(l.ttl_s);
        let (r, seq) = self.mutate(|st| {
            let m = st
                .leases
                .iter_mut()
                .find(|x| x.id == id)
                .ok_or_else(|| LeaseError::NotFound(id.to_string()))?;
            if m.state != LeaseState::Pending {
                return Err(LeaseError::Conflict(format!(
                    "lease {id} is {}, not pending",
                    m.state.name()
                )));
            }
            m.decided_by = Some(by.to_string());
            if approve {
                m.ttl_s = m.ttl_s.min(max);
                activate(m, now_ms(), max);
                m.approved_end_ms = m.expires_ms;
            } else {
                end(m, LeaseState::Denied, now_ms(), &format!("denied by {by}"));
            }
            Ok(())
        });
        r?;
        self.commit(&l.identity, seq, approve.then_some(id)).await?;
        self.emit(
            EventKind::Lease,
            &l.identity,
            json!({ "action": if approve { "approve" } else { "deny" }, "lease": id, "by": by }),
        );
        self.get_view(id, false)
    }

    /// Waits until a pending lease is decided (or `timeout`); the answer
    /// carries the token once active.
    pub async fn wait(
        &self,
        id: &str,
        timeout: Duration,
        actor: &Actor,
    ) -> Result<Value, LeaseError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.changed.subscribe();
        let l = self.get_for(id, actor)?;
        if !actor.owns(&l) {
            return Err(LeaseError::Forbidden(format!(
                "lease {id} is not this caller's request: waiting for it (and its token) \
                 takes the `request_secret` its request was answered with, in the \
                 `{SECRET_HEADER}` header"
            )));
        }
        loop {
            let l = self.get_for(id, actor)?;
            if l.state != LeaseState::Pending {
                return Ok(self.view(&l, true));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return Ok(self.view(&l, false)),
            }
        }
    }

    pub fn list(&self, identity: Option<&str>, all: bool) -> Vec<Value> {
        let leases: Vec<Lease> = {
            let st = self.state.lock().expect("lease state");
            st.leases
                .iter()
                .filter(|l| identity.is_none_or(|i| l.identity == i))
                .filter(|l| all || !l.state.ended())
                .cloned()
                .collect()
        };
        leases.iter().map(|l| self.view(l, false)).collect()
    }

    /// One lease with the recent denials that happened under it.
    pub fn show(&self, id: &str, actor: &Actor) -> Result<Value, LeaseError> {
        let l = self.get_for(id, actor)?;
        let mut v = self.view(&l, false);
        let recent = self.corr.recent(id);
        v["denials"] = json!(l.denials + self.corr.unsaved(id));
        v["recent_denials"] = json!(recent.iter().map(|e| &**e).collect::<Vec<_>>());
        Ok(v)
    }
}

fn note_cap(v: &mut Value, capped: Option<&str>) {
    v["renew_capped"] = json!(capped.is_some());
    if let Some(by) = capped {
        v["capped_by"] = json!(by);
        if by == "approval" {
            v["note"] = json!(
                "an approval-scoped lease ends at its approved end: renewals by the agent \
                 never pass it; request a new lease (a new approval) to continue"
            );
        }
    }
}

/// An agent renews only leases it requested itself (not the operator's,
/// not the rotation's).
fn renewable_by(m: &Lease, agent: bool) -> Result<(), LeaseError> {
    if agent && !matches!(m.requested_by, Requester::Agent { .. }) {
        return Err(LeaseError::Forbidden(format!(
            "lease {} was issued by {}: only the operator renews it",
            m.id,
            match m.requested_by {
                Requester::Rotation => "the daemon's token rotation",
                _ => "the operator",
            }
        )));
    }
    Ok(())
}

/// `asked`, each once, if every one is among the identity's `[leases]`
/// scopes; at least one.
fn allowed_scopes(
    lp: &LeasePolicy,
    identity: &str,
    asked: &[String],
) -> Result<Vec<String>, LeaseError> {
    let mut scopes: Vec<String> = Vec::new();
    for s in asked {
        if !lp.scopes.contains(s) {
            return Err(LeaseError::Forbidden(format!(
                "scope `{s}` is not in the [leases] scopes of `{identity}` ({})",
                lp.scopes.join(", ")
            )));
        }
        if !scopes.contains(s) {
            scopes.push(s.clone());
        }
    }
    if scopes.is_empty() {
        return Err(LeaseError::BadRequest("give at least one scope".into()));
    }
    Ok(scopes)
}

impl Lease {
    /// A lease as requested, before approval or activation.
    fn requested(req: &IssueReq, cgroup_id: u64, scopes: Vec<String>, now: u64) -> Lease {
        Lease {
            id: new_id(),
            identity: req.identity.clone(),
            cgroup_id,
            scopes,
            state: LeaseState::Pending,
            requested_by: req.requester.clone(),
            requested_ms: now,
            ttl_s: 0,
            ttl_capped: false,
            approval_scopes: Vec::new(),
            approval_deadline_ms: None,
            decided_by: None,
            issued_ms: None,
            expires_ms: None,
            expires_boot_ns: 0,
            max_expires_ms: None,
            renewals: 0,
            ended_ms: None,
            end_reason: None,
            denials: 0,
            secret_sha256: None,
            approved_end_ms: None,
        }
    }
}
