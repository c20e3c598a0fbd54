//! What operators and agents can do with leases. Every change is written to
//! the store before it reaches the kernel, and emitted as a `lease` event.

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    LeaseError, Leases, Requester,
    store::{Lease, LeaseState, now_ms, wall_ms_to_boot_ns},
};
use crate::policy::LeasePolicy;

pub struct IssueReq {
    pub identity: String,
    pub scopes: Vec<String>,
    pub ttl: Option<Duration>,
    pub requester: Requester,
}

/// Who acts on an existing lease: the operator (control socket) or an
/// attested agent, which may only touch its own identity's leases.
#[derive(Debug, Clone)]
pub enum Actor {
    Operator,
    Agent(String),
}

impl Actor {
    fn name(&self) -> String {
        match self {
            Actor::Operator => "operator".into(),
            Actor::Agent(i) => format!("agent {i}"),
        }
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

    /// Makes a change durable and applies the leases of `identity` to the
    /// kernel, both at once; nothing is answered (no token handed out, no
    /// revoke acknowledged) before both are done. On failure, ends `failed`
    /// (the lease whose change could not be made) closed.
    async fn commit(&self, identity: &str, failed: Option<&str>) -> Result<(), LeaseError> {
        let (saved, pushed) = tokio::join!(self.save_async(), self.push(identity));
        let r = saved.and(pushed);
        if let (Err(e), Some(id)) = (&r, failed) {
            {
                let mut st = self.state.lock().expect("lease state");
                if let Some(l) = st.leases.iter_mut().find(|l| l.id == id) {
                    end(
                        l,
                        LeaseState::Revoked,
                        now_ms(),
                        &format!("kernel apply failed: {e}"),
                    );
                }
            }
            let _ = self.save();
            let _ = self.push(identity).await;
        }
        self.bump();
        r
    }

    pub async fn issue(&self, req: IssueReq) -> Result<Value, LeaseError> {
        let _one = self.serial.lock().await;
        let (lp, cgroup_id) = self.lease_policy(&req.identity)?;
        let mut scopes: Vec<String> = Vec::new();
        for s in req.scopes {
            if !lp.scopes.contains(&s) {
                return Err(LeaseError::Forbidden(format!(
                    "scope `{s}` is not in the [leases] scopes of `{}` ({})",
                    req.identity,
                    lp.scopes.join(", ")
                )));
            }
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        if scopes.is_empty() {
            return Err(LeaseError::BadRequest("give at least one scope".into()));
        }
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
            id: new_id(),
            identity: req.identity.clone(),
            cgroup_id,
            scopes,
            state: LeaseState::Pending,
            requested_by: req.requester.clone(),
            requested_ms: now,
            ttl_s: want.min(max),
            ttl_capped: want > max,
            approval_scopes,
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
        };
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
        {
            let mut st = self.state.lock().expect("lease state");
            if st
                .leases
                .iter()
                .filter(|x| x.identity == l.identity && !x.state.ended())
                .count()
                >= MAX_OPEN_LEASES
            {
                return Err(LeaseError::Conflict(format!(
                    "`{}` holds too many leases; revoke some first",
                    l.identity
                )));
            }
            st.leases.push(l);
        }
        self.commit(&req.identity, Some(&id)).await?;
        let v = self.get_view(&id, true)?;
        self.emit(
            "lease",
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
        match actor {
            Actor::Agent(i) if *i != l.identity => Err(LeaseError::NotFound(id.to_string())),
            _ => Ok(l),
        }
    }

    pub fn identity_state(&self, identity: &str) -> super::store::IdentityState {
        let st = self.state.lock().expect("lease state");
        st.identities.get(identity).cloned().unwrap_or_default()
    }

    /// Extends an active lease by `ttl` (default: its original ttl) from
    /// now, never past issue + `max_ttl`.
    pub async fn renew(
        &self,
        id: &str,
        ttl: Option<Duration>,
        actor: &Actor,
    ) -> Result<Value, LeaseError> {
        let _one = self.serial.lock().await;
        let l = self.get_for(id, actor)?;
        if l.state != LeaseState::Active {
            return Err(LeaseError::Conflict(format!(
                "lease {id} is {}, not active",
                l.state.name()
            )));
        }
        let now = now_ms();
        let incr = ttl.map_or(l.ttl_s, |d| d.as_secs()).max(1);
        let cap = l.max_expires_ms.unwrap_or(0);
        let want = (now / 1000 + incr) * 1000;
        let exp = want.min(cap).max(l.expires_ms.unwrap_or(0));
        {
            let mut st = self.state.lock().expect("lease state");
            let m = st
                .leases
                .iter_mut()
                .find(|x| x.id == id)
                .expect("just read");
            m.expires_ms = Some(exp);
            m.expires_boot_ns = wall_ms_to_boot_ns(exp);
            m.renewals += 1;
        }
        self.commit(&l.identity, None).await?;
        let mut v = self.get_view(id, true)?;
        v["renew_capped"] = json!(want > cap);
        self.emit(
            "lease",
            &l.identity,
            json!({ "action": "renew", "lease": id, "expires": v["expires"],
                "capped": want > cap, "by": actor.name() }),
        );
        Ok(v)
    }

    /// Ends an active or pending lease now; its grants leave the kernel
    /// before this returns.
    pub async fn revoke(&self, id: &str, actor: &Actor, reason: &str) -> Result<Value, LeaseError> {
        let _one = self.serial.lock().await;
        let l = self.get_for(id, actor)?;
        if l.state.ended() {
            return Err(LeaseError::Conflict(format!(
                "lease {id} is already {}",
                l.state.name()
            )));
        }
        let started = std::time::Instant::now();
        {
            let mut st = self.state.lock().expect("lease state");
            let m = st
                .leases
                .iter_mut()
                .find(|x| x.id == id)
                .expect("just read");
            end(m, LeaseState::Revoked, now_ms(), reason);
        }
        self.commit(&l.identity, None).await?;
        let applied_us = started.elapsed().as_micros() as u64;
        self.emit(
            "lease",
            &l.identity,
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
        let _one = self.serial.lock().await;
        self.revoke_identity_locked(identity, by, reason).await
    }

    pub(super) async fn revoke_identity_locked(
        &self,
        identity: &str,
        by: &str,
        reason: &str,
    ) -> Result<Vec<String>, LeaseError> {
        let now = now_ms();
        let ids: Vec<String> = {
            let mut st = self.state.lock().expect("lease state");
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
        };
        self.commit(identity, None).await?;
        for id in &ids {
            self.emit(
                "lease",
                identity,
                json!({ "action": "revoke", "lease": id, "by": by, "reason": reason }),
            );
        }
        Ok(ids)
    }

    /// Decides a pending request.
    pub async fn decide(&self, id: &str, approve: bool, by: &str) -> Result<Value, LeaseError> {
        let _one = self.serial.lock().await;
        let l = self.get(id)?;
        if l.state != LeaseState::Pending {
            return Err(LeaseError::Conflict(format!(
                "lease {id} is {}, not pending",
                l.state.name()
            )));
        }
        let max = self
            .lease_policy(&l.identity)
            .map(|(lp, _)| lp.max_ttl_s)
            .unwrap_or(l.ttl_s);
        {
            let mut st = self.state.lock().expect("lease state");
            let m = st
                .leases
                .iter_mut()
                .find(|x| x.id == id)
                .expect("just read");
            m.decided_by = Some(by.to_string());
            if approve {
                m.ttl_s = m.ttl_s.min(max);
                activate(m, now_ms(), max);
            } else {
                end(m, LeaseState::Denied, now_ms(), &format!("denied by {by}"));
            }
        }
        self.commit(&l.identity, approve.then_some(id)).await?;
        self.emit(
            "lease",
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
