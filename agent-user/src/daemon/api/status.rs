//! JSON views for `corral status`, `corral identities` and `policy show`.

use std::{path::PathBuf, sync::atomic::Ordering};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::Ctx;
use crate::daemon::{
    capabilities::Capabilities,
    enforcer::Command,
    mechanism::{Mechanism, MechanismState},
    snapshot::IdentityView,
};
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

pub async fn counters(
    ctx: &Ctx,
) -> std::collections::HashMap<u32, crate::daemon::enforcer::Counters> {
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
                    let (layer, note) = crate::daemon::fileobs::files_layer(&p.files, p.mode, ctx.caps.files_lsm());
                    json!({ "enforced_by": layer, "note": note })
                }),
                "syscalls": v.policy.as_ref().map(|p| crate::daemon::syscalls::summary(p)),
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
        // `null` before the lease service is up (start-up only).
        "leases": ctx.leases.summary(),
        "sockets": ctx.sockets.view(),
        "audit": ctx.audit.view(),
        // `null` unless exporting.
        "otlp": ctx.otlp.as_ref().map(|o| o.view()),
        "host_cost": crate::daemon::hostcost::view(),
    })
}

/// The parts of `GET /v1/policy/NAME` a client may ask for alone
/// (`?sections=files,syscalls`). Without the query every one is sent; the
/// identity's name, mode, source, digest and id always are.
pub const SECTIONS: [&str; 6] = [
    "network",
    "unix",
    "files",
    "syscalls",
    "hosts",
    "kernel_entries",
];

/// A set of [`SECTIONS`]. `corral run` needs only `files` and `syscalls`,
/// and with 100k network rules the whole view is tens of MB of JSON that
/// the daemon builds and the launcher parses before every start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sections(u8);

impl Sections {
    pub const ALL: Sections = Sections((1 << SECTIONS.len()) - 1);

    /// `files,syscalls` (also percent-encoded commas, as some clients send
    /// them). An empty list asks for the identity header only.
    pub fn parse(list: &str) -> Result<Sections, String> {
        let list = list.replace("%2C", ",").replace("%2c", ",");
        let mut bits = 0;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let i = SECTIONS.iter().position(|s| *s == name).ok_or_else(|| {
                format!("unknown section `{name}`; known: {}", SECTIONS.join(", "))
            })?;
            bits |= 1 << i;
        }
        Ok(Sections(bits))
    }

    pub fn has(self, name: &str) -> bool {
        SECTIONS
            .iter()
            .position(|s| *s == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

/// The compiled policy in force, as `corral policy show` and `corral run`
/// read it; only the asked-for sections are built, since the network rule
/// list is what makes a large policy slow to serve.
pub fn policy_json(v: &IdentityView, sections: Sections, caps: &Capabilities) -> Value {
    let Some(p) = &v.policy else {
        return json!({ "name": v.name, "orphaned": true, "rules": [],
            "note": "policy file removed while processes remain: everything is denied" });
    };
    let mut out = json!({
        "name": p.name,
        "mode": event::mode_str(p.mode.into()),
        "source": p.source,
        "digest": format!("{:016x}", p.digest),
        "identity_id": v.id,
    });
    if sections.has("network") {
        out["network"] = p.network.rules.iter().map(rule_json).collect();
    }
    if sections.has("unix") {
        out["unix"] = p
            .network
            .unix
            .iter()
            .map(|u| json!({"id": u.id, "path": u.path, "origin": u.origin}))
            .collect();
        out["unix_enforced"] = v.unix_enforced.into();
    }
    if sections.has("files") {
        out["files"] = crate::daemon::fileobs::files_json(p, caps.files_lsm());
        if let Some(a) = &caps.file_audit
            && out["files"]["enforced_by"] == "landlock"
        {
            out["files"]["audit"] = json!({
                "gid": a.launch_gid(),
                "token": a.tokens.issue(v.id),
            });
        }
        // Corral's own ground, refused to every identity where BPF LSM
        // runs (`bpf lsm: files`), whatever its rules say.
        out["protected_paths"] = json!(caps.protected.list());
        out["protected_paths_enforced"] = caps.files_lsm().into();
    }
    if sections.has("syscalls") {
        out["syscalls"] = crate::daemon::syscalls::policy_json(p);
    }
    if sections.has("kernel_entries") {
        out["kernel_entries"] = json!({ "v4": v.v4_entries, "v6": v.v6_entries,
            "unix": v.unix_entries, "files": v.file_entries, "ruleset": v.ruleset });
    }
    out
}

fn rule_json(r: &crate::policy::NetRule) -> Value {
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
}

/// What this kernel and build can enforce, probed at start-up.
/// `unix_unavailable`: why the unix programs are not attached, if they are not.
pub fn mechanisms(
    sock_addr_attached: bool,
    unix_unavailable: Option<&str>,
    caps: &Capabilities,
) -> Vec<Mechanism> {
    let mut v = vec![
        Mechanism {
            name: "network (cgroup sock_create + sock_addr: socket/connect/sendmsg/bind, IPv4+IPv6)",
            state: MechanismState::of(sock_addr_attached),
            detail: if sock_addr_attached {
                "attached at the corral cgroup parent; inet sockets of a kind no rule judges \
                 (SCTP, UDP-Lite, L2TP/IP, raw, ping, ...) are refused at socket() unless \
                 `[network] sockets` names ping/raw; AF_PACKET and AF_VSOCK are not inet \
                 sockets: refuse them with [syscalls] (socket:packet, socket:vsock)"
                    .into()
            } else {
                "programs did not attach".into()
            },
        },
        Mechanism {
            name: "terminal (corral run)",
            state: MechanismState::Enforcing,
            detail: "agents run in a session of their own, on a pty the launcher relays when \
                     started from a terminal; a seccomp filter refuses TIOCSTI/TIOCLINUX \
                     (terminal input injection) on every ABI, for root too"
                .into(),
        },
        Mechanism {
            name: "unix socket paths",
            state: MechanismState::of(unix_unavailable.is_none()),
            detail: match unix_unavailable {
                None => "cgroup connect_unix/sendmsg_unix attached at the corral cgroup parent \
                         (pathnames exact; abstract names as @name)"
                    .into(),
                Some(why) => format!("NOT ENFORCED: {why}"),
            },
        },
        // `[files]` rules: "lsm" when the BPF-LSM file programs attached,
        // else "landlock (fallback, applied by corral run at launch)".
        crate::daemon::fileobs::mechanism(caps),
    ];
    // BPF LSM: what the programs could do here (loaded, or why not), not
    // merely whether `bpf` is in the LSM list.
    v.extend(crate::daemon::lsm::mechanisms(&caps.lsm));
    v
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use super::*;
    use crate::policy;

    fn view() -> IdentityView {
        let text = "[identity]\nname = \"t\"\n[network]\nallow = [\"tcp://10.0.0.0/8:443\"]\n\
                    unix = [\"/run/x.sock\"]\n[files]\nread = [\"/usr/\"]\n\
                    [syscalls]\nallow = [\"@default\"]\n";
        let p = policy::parse_str(Path::new("p/t.toml"), text, &|_| Ok(Vec::new()))
            .unwrap_or_else(|e| panic!("{e}"));
        IdentityView {
            id: 7,
            name: "t".into(),
            mode: p.mode,
            cgroup: "/sys/fs/cgroup/corral/t".into(),
            assigned: Vec::new(),
            policy: Some(Arc::new(p)),
            ruleset: 3,
            v4_entries: 1,
            v6_entries: 0,
            unix_entries: 1,
            file_entries: 0,
            unix_enforced: true,
        }
    }

    #[test]
    fn sections_leave_out_what_was_not_asked_for() {
        let v = view();
        let all = policy_json(&v, Sections::ALL, &Capabilities::none("test"));
        for s in ["network", "unix", "files", "syscalls", "kernel_entries"] {
            assert!(all.get(s).is_some(), "{s} missing from the full view");
        }
        assert_eq!(all["network"][0]["ports"], "443-443");

        let launch = policy_json(
            &v,
            Sections::parse("files,syscalls").unwrap(),
            &Capabilities::none("test"),
        );
        for s in ["network", "unix", "unix_enforced", "kernel_entries"] {
            assert!(launch.get(s).is_none(), "{s} sent unasked: {launch}");
        }
        assert_eq!(launch["files"], all["files"]);
        assert_eq!(launch["syscalls"], all["syscalls"]);
        // What `corral run` needs besides the sections.
        assert_eq!(launch["identity_id"], 7);
        assert_eq!(
            (launch["name"].as_str(), launch["mode"].as_str()),
            (Some("t"), Some("enforce"))
        );

        let header = policy_json(
            &v,
            Sections::parse("").unwrap(),
            &Capabilities::none("test"),
        );
        let keys: Vec<&String> = header.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 5, "{header}");
    }

    #[test]
    fn section_lists_parse_strictly() {
        let s = Sections::parse("syscalls,files").unwrap();
        assert!(s.has("files") && s.has("syscalls") && !s.has("network"));
        assert_eq!(Sections::parse("files%2Csyscalls").unwrap(), s);
        assert_eq!(Sections::parse(&SECTIONS.join(",")).unwrap(), Sections::ALL);
        let e = Sections::parse("files,netwrk").unwrap_err();
        assert!(
            e.contains("unknown section `netwrk`; known: network, unix"),
            "{e}"
        );
        assert!(!Sections::ALL.has("nonsense"));
    }
}
