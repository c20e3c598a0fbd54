//! JSON views for `corral status`, `corral identities` and `policy show`.

use std::{path::PathBuf, sync::atomic::Ordering};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{api::Ctx, enforcer::Command, snapshot::IdentityView};
use crate::{cgroup, event, policy::Action};

#[derive(Debug, Clone, Serialize)]
pub struct DaemonInfo {
    pub version: &'static str,
    pub pid: u32,
    pub started: String,
    pub policy_dir: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub cgroup_root: PathBuf,
    pub cgroup_parent: PathBuf,
    pub ringbuf_bytes: u32,
    /// Pins from a previous daemon were found and adopted.
    pub adopted_pins: bool,
    pub mechanisms: Vec<Mechanism>,
}

/// One enforcement mechanism and whether it is in force. Status and doctor
/// print these loudly: Corral never pretends to enforce.
#[derive(Debug, Clone, Serialize)]
pub struct Mechanism {
    pub name: &'static str,
    /// `enforcing`, `fallback` (weaker, said why), `unavailable` or `not-implemented`.
    pub state: &'static str,
    pub detail: String,
}

pub async fn counters(ctx: &Ctx) -> std::collections::HashMap<u32, super::enforcer::Counters> {
    let (reply, rx) = oneshot::channel();
    if ctx
        .enforcer
        .send(Command::Counters { reply })
        .await
        .is_err()
    {
        return Default::default();
    }
    rx.await.unwrap_or_default()
}

pub async fn identities_json(ctx: &Ctx) -> Vec<Value> {
    let counts = counters(ctx).await;
    let snap = ctx.snapshot.borrow().clone();
    snap.by_id
        .values()
        .map(|v| {
            let c = counts.get(&v.id).cloned().unwrap_or_default();
            let processes = cgroup::process_count(&v.cgroup)
                + v.assigned.iter().map(|a| cgroup::process_count(a)).sum::<usize>();
            let (net, unix) = v
                .policy
                .as_ref()
                .map(|p| (p.network.rules.len(), p.network.unix.len()))
                .unwrap_or((0, 0));
            json!({
                "name": v.name,
                "id": v.id,
                "mode": event::mode_str(v.mode.into()),
                "cgroup": v.cgroup,
                "cgroup_id": cgroup::id(&v.cgroup).ok(),
                "assigned_cgroups": v.assigned,
                "processes": processes,
                "orphaned": v.policy.is_none(),
                "source": v.policy.as_ref().map(|p| p.source.clone()),
                "rules": { "network": net, "unix": unix,
                    "files": v.policy.as_ref().map_or(0, |p| p.files.rules.len()) },
                "files": v.policy.as_ref().map(|p| {
                    let (layer, note) = super::fileobs::files_layer(&p.files, p.mode);
                    json!({ "enforced_by": layer, "note": note })
                }),
                "syscalls": v.policy.as_ref().map(|p| super::syscalls::summary(p)),
                "kernel_entries": { "v4": v.v4_entries, "v6": v.v6_entries, "unix": v.unix_entries, "files": v.file_entries, "ruleset": v.ruleset },
                "counters": c,
            })
        })
        .collect()
}

pub async fn status_json(ctx: &Ctx) -> Value {
    let s = &ctx.event_stats;
    json!({
        "daemon": ctx.info,
        "identities": ctx.snapshot.borrow().by_id.len(),
        "events": {
            "received": s.received.load(Ordering::Relaxed),
            "decode_errors": s.decode_errors.load(Ordering::Relaxed),
            "kernel_lost": s.kernel_lost.load(Ordering::Relaxed),
            "subscribers": ctx.events.receiver_count(),
        },
        "reload": ctx.reloader.status(),
    })
}

pub fn policy_json(v: &IdentityView) -> Value {
    let Some(p) = &v.policy else {
        return json!({ "name": v.name, "orphaned": true, "rules": [],
            "note": "policy file removed while processes remain: everything is denied" });
    };
    let rules: Vec<Value> = p
        .network
        .rules
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "action": if r.action == Action::Allow { "allow" } else { "deny" },
                "direction": r.direction,
                "proto": r.proto,
                "net": format!("{}/{}", r.addr, r.prefix_len),
                "ports": format!("{}-{}", r.port_lo, r.port_hi),
                "host": r.host,
                "text": r.text,
                "origin": r.origin,
            })
        })
        .collect();
    json!({
        "name": p.name,
        "mode": event::mode_str(p.mode.into()),
        "source": p.source,
        "digest": format!("{:016x}", p.digest),
        "network": rules,
        "unix": p.network.unix.iter().map(|u| json!({"id": u.id, "path": u.path, "origin": u.origin})).collect::<Vec<_>>(),
        "unix_enforced": v.unix_enforced,
        "files": super::fileobs::files_json(p),
        "identity_id": v.id,
        "syscalls": super::syscalls::policy_json(p),
        "kernel_entries": { "v4": v.v4_entries, "v6": v.v6_entries, "unix": v.unix_entries, "files": v.file_entries, "ruleset": v.ruleset },
    })
}

/// What this kernel and build can enforce, probed at start-up.
/// `unix_unavailable`: why the unix programs are not attached, if they are not.
pub fn mechanisms(sock_addr_attached: bool, unix_unavailable: Option<&str>) -> Vec<Mechanism> {
    let mut v = vec![
        Mechanism {
            name: "network (cgroup sock_addr: connect/sendmsg/bind, IPv4+IPv6)",
            state: if sock_addr_attached {
                "enforcing"
            } else {
                "unavailable"
            },
            detail: if sock_addr_attached {
                "attached at the corral cgroup parent".into()
            } else {
                "programs did not attach".into()
            },
        },
        Mechanism {
            name: "unix socket paths",
            state: if unix_unavailable.is_none() {
                "enforcing"
            } else {
                "unavailable"
            },
            detail: match unix_unavailable {
                None => "cgroup connect_unix/sendmsg_unix attached at the corral cgroup parent \
                         (pathnames exact; abstract names as @name)"
                    .into(),
                Some(why) => format!("NOT ENFORCED: {why}"),
            },
        },
        // `[files]` rules: "lsm" once the BPF-LSM file programs attached
        // (their loader calls `fileobs::set_files_lsm(true)` first), else
        // "landlock (fallback, applied by corral run at launch)".
        super::fileobs::mechanism(),
    ];
    // BPF LSM: what the programs could do here (loaded, or why not), not
    // merely whether `bpf` is in the LSM list.
    v.extend(super::lsm::mechanisms());
    v
}
