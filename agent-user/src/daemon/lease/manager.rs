//! The lease manager task: expiries, approval timeouts, leases whose scopes
//! left the policy, token rotation, denial counts, and the anomaly
//! response (freeze, revoke, alert) with `corral thaw` to release it.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    IssueReq, LeaseError, Leases, Requester, Trip,
    anomaly::{is_frozen, set_frozen, wait_frozen},
    store::LeaseState,
};
use crate::{
    clock::{boot_ns, now_ms},
    event::EventKind,
    policy::AnomalyAction,
};

const TICK: Duration = Duration::from_millis(200);
const SAVE_COUNTS_EVERY: Duration = Duration::from_secs(2);

impl Leases {
    /// Runs for the daemon's lifetime.
    pub async fn run(self: Arc<Self>, mut trips: mpsc::UnboundedReceiver<Trip>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut saved = Instant::now();
        loop {
            tokio::select! {
                Some(t) = trips.recv() => self.respond(t).await,
                _ = tick.tick() => {
                    self.tick(&mut saved).await;
                    self.rotate().await;
                }
            }
        }
    }

    async fn tick(&self, saved: &mut Instant) {
        let now = now_ms();
        let snap = self.snapshot.borrow().clone();
        let mut touched = BTreeSet::new();
        let mut events = Vec::new();
        let counts = self.corr.take_counts();
        let ((), seq) = self.mutate(|st| {
            for l in st.leases.iter_mut().filter(|l| !l.state.ended()) {
                let lp = snap
                    .by_name(&l.identity)
                    .and_then(|v| v.policy.as_ref())
                    .and_then(|p| p.leases.as_ref());
                let gone = match lp {
                    None => Some("the identity or its [leases] section was removed".to_string()),
                    Some(lp) => l
                        .scopes
                        .iter()
                        .find(|s| !lp.scopes.contains(s))
                        .map(|s| format!("the policy no longer lists scope `{s}`")),
                };
                let (state, reason, action) =
                    if l.state == LeaseState::Active && l.expires_ms.is_some_and(|e| e <= now) {
                        (LeaseState::Expired, "ttl".to_string(), "expire")
                    } else if l.state == LeaseState::Pending
                        && l.approval_deadline_ms.is_some_and(|d| d <= now)
                    {
                        (LeaseState::Denied, "approval timed out".to_string(), "deny")
                    } else if let Some(why) = gone {
                        (LeaseState::Revoked, why, "revoke")
                    } else {
                        continue;
                    };
                let at = if state == LeaseState::Expired {
                    l.expires_ms.unwrap_or(now)
                } else {
                    now
                };
                l.state = state;
                l.ended_ms = Some(at);
                l.end_reason = Some(reason.clone());
                if state == LeaseState::Denied {
                    l.decided_by = Some("timeout".into());
                }
                touched.insert(l.identity.clone());
                events.push((
                    l.identity.clone(),
                    json!({ "action": action, "lease": l.id, "by": "corral", "reason": reason }),
                ));
            }
            for (id, n) in &counts {
                if let Some(l) = st.leases.iter_mut().find(|l| l.id == *id) {
                    l.denials += n;
                }
            }
        });
        let counts_due = !counts.is_empty() && saved.elapsed() >= SAVE_COUNTS_EVERY;
        if !touched.is_empty() || counts_due {
            if let Err(e) = self.persist(seq).await {
                warn!("lease store: {e}");
            }
            *saved = Instant::now();
        }
        for identity in &touched {
            // The kernel already ignores expired grants; this removes them.
            if let Err(e) = self.push(identity).await {
                warn!(identity = %identity, "lease grants: {e}");
            }
        }
        for (identity, ev) in events {
            self.emit(EventKind::Lease, &identity, ev);
        }
        if !touched.is_empty() {
            self.bump();
        }
        self.corr.prune(now);
    }

    /// Keeps a current token for identities whose policy asks for rotation,
    /// issued again at half its lifetime.
    async fn rotate(&self) {
        let snap = self.snapshot.borrow().clone();
        for v in snap.by_id.values() {
            let Some(r) = v
                .policy
                .as_ref()
                .and_then(|p| p.leases.as_ref())
                .and_then(|l| l.rotate.clone())
            else {
                continue;
            };
            if self.identity_state(&v.name).suspended {
                continue;
            }
            let now = now_ms();
            let current = {
                let st = self.state.lock().expect("lease state");
                st.leases
                    .iter()
                    .filter(|l| l.identity == v.name && l.requested_by == Requester::Rotation)
                    .filter(|l| l.state == LeaseState::Active)
                    .max_by_key(|l| l.issued_ms)
                    .cloned()
            };
            let due = current.as_ref().is_none_or(|l| {
                let (i, e) = (l.issued_ms.unwrap_or(0), l.expires_ms.unwrap_or(0));
                now >= i + (e.saturating_sub(i)) / 2
            });
            let lease = if due {
                let req = IssueReq {
                    identity: v.name.clone(),
                    scopes: r.scopes.clone(),
                    ttl: Some(Duration::from_secs(r.ttl_s)),
                    requester: Requester::Rotation,
                };
                match self.issue(req).await {
                    Ok(v) => v,
                    Err(e) => {
                        warn!(identity = %v.name, "token rotation: {e}");
                        continue;
                    }
                }
            } else {
                let l = current.expect("not due means current");
                let written = self.rotated.lock().expect("rotated").get(&v.name) == Some(&l.id);
                if written {
                    continue;
                }
                self.view(&l, true)
            };
            let path = r
                .path
                .clone()
                .unwrap_or_else(|| self.tokens_dir.join(format!("{}.jwt", v.name)));
            match super::token_file::write(
                &path,
                lease["token"].as_str().unwrap_or(""),
                r.owner.as_ref(),
            ) {
                Ok(()) => {
                    let id = lease["id"].as_str().unwrap_or("").to_string();
                    self.rotated
                        .lock()
                        .expect("rotated")
                        .insert(v.name.clone(), id.clone());
                    self.emit(EventKind::Lease,
                        &v.name,
                        json!({ "action": "rotate", "lease": id, "path": path, "expires": lease["expires"] }),
                    );
                }
                Err(e) => {
                    warn!(identity = %v.name, path = %path.display(), "writing the rotated token: {e}")
                }
            }
        }
    }

    /// Carries out `[anomaly] actions` for a crossed threshold: freeze
    /// first (containment), then the alert and revocations.
    async fn respond(&self, t: Trip) {
        let snap = self.snapshot.borrow().clone();
        let Some(view) = snap.by_name(&t.identity).cloned() else {
            return;
        };
        let Some(a) = view.policy.as_ref().and_then(|p| p.anomaly.clone()) else {
            return;
        };
        let cgroups: Vec<PathBuf> = std::iter::once(view.cgroup.clone())
            .chain(view.assigned.iter().cloned())
            .collect();
        let mut freeze = None;
        if a.has(AnomalyAction::Freeze) {
            let failed = set_frozen(&cgroups, true);
            let written_us = boot_ns().saturating_sub(t.boot_ns) / 1000;
            let detect_to_write_us = t.detected.elapsed().as_micros() as u64;
            let cg = cgroups.clone();
            let frozen =
                tokio::task::spawn_blocking(move || wait_frozen(&cg, Duration::from_secs(2)))
                    .await
                    .unwrap_or(false);
            let frozen_us = boot_ns().saturating_sub(t.boot_ns) / 1000;
            freeze = Some(json!({
                "action": "freeze", "cgroups": cgroups, "frozen": frozen,
                "failed": failed.iter().map(|(c, e)| format!("{}: {e}", c.display())).collect::<Vec<_>>(),
                "threshold_to_freeze_written_us": written_us,
                "threshold_to_frozen_us": frozen_us,
                "detect_to_freeze_written_us": detect_to_write_us,
            }));
            warn!(identity = %t.identity, denials = t.denials, frozen, threshold_to_frozen_us = frozen_us, "anomaly: cgroup frozen");
        }
        let ((), seq) = self.mutate(|st| {
            let s = st.identities.entry(t.identity.clone()).or_default();
            s.anomalies += 1;
            s.frozen |= freeze.is_some();
        });
        let base = json!({
            "denials": t.denials, "max_denials": t.max_denials, "window_ms": t.window_ms,
            "actions": a.actions.iter().map(|x| x.name()).collect::<Vec<_>>(),
        });
        if a.has(AnomalyAction::Alert) {
            let mut ev = base.clone();
            ev["action"] = json!("alert");
            self.emit(EventKind::Anomaly, &t.identity, ev);
        }
        if let Some(mut f) = freeze {
            merge(&mut f, &base);
            self.emit(EventKind::Anomaly, &t.identity, f);
        }
        if a.has(AnomalyAction::RevokeLeases) {
            let reason = format!("anomaly: {} denials within {} ms", t.denials, t.window_ms);
            match self.revoke_identity(&t.identity, "anomaly", &reason).await {
                Ok(ids) => {
                    let mut ev = base.clone();
                    ev["action"] = json!("revoke-leases");
                    ev["leases"] = json!(ids);
                    self.emit(EventKind::Anomaly, &t.identity, ev);
                }
                Err(e) => warn!(identity = %t.identity, "anomaly revoke: {e}"),
            }
        } else if let Err(e) = self.persist(seq).await {
            warn!("lease store: {e}");
        }
    }

    /// `corral thaw NAME`: unfreezes the identity's cgroups and lifts the
    /// suspension of its lease requests and rotation.
    pub async fn thaw(&self, identity: &str) -> Result<Value, LeaseError> {
        let snap = self.snapshot.borrow().clone();
        let view = snap
            .by_name(identity)
            .cloned()
            .ok_or_else(|| LeaseError::UnknownIdentity(identity.to_string()))?;
        let cgroups: Vec<PathBuf> = std::iter::once(view.cgroup.clone())
            .chain(view.assigned.iter().cloned())
            .collect();
        let was_frozen = cgroups.iter().any(|c| is_frozen(c));
        let failed = set_frozen(&cgroups, false);
        let (suspended, seq) = self.mutate(|st| {
            let s = st.identities.entry(identity.to_string()).or_default();
            let was = s.suspended;
            s.suspended = false;
            s.frozen = false;
            was
        });
        self.persist(seq).await?;
        self.corr.reset_window(identity);
        info!(identity, was_frozen, "thawed");
        let v = json!({
            "action": "thaw", "identity": identity, "cgroups": cgroups, "was_frozen": was_frozen,
            "was_suspended": suspended,
            "failed": failed.iter().map(|(c, e)| format!("{}: {e}", c.display())).collect::<Vec<_>>(),
        });
        self.emit(EventKind::Anomaly, identity, v.clone());
        Ok(v)
    }
}

fn merge(into: &mut Value, from: &Value) {
    if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in b {
            a.entry(k.clone()).or_insert(v.clone());
        }
    }
}
