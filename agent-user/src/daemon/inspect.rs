//! Read-only questions about policy: `corral policy diff` (what a reload
//! would change) and `corral policy explain` (which rule decides an
//! operation). Both judge against what is in force (the enforcer's
//! snapshot) and change nothing.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use agent_common::net::{CLASS_BIND_TCP, CLASS_BIND_UDP, CLASS_TCP, CLASS_UDP};
use serde::Serialize;

use super::{
    dns::{HostCache, system_lookup},
    snapshot::{IdentityView, Snapshot},
};
use crate::{
    cgroup,
    policy::{self, Action, Direction, IdentityPolicy, NetRule, PolicyErrors, compiled, mode_name},
};

// --- diff ---------------------------------------------------------------------

#[derive(Debug, Default, Serialize)]
pub struct Diff {
    pub dir: PathBuf,
    /// Identities the reload would create.
    pub added: Vec<IdentityDiff>,
    /// Identities whose policy would change (rules, mode or resolved
    /// addresses).
    pub changed: Vec<IdentityDiff>,
    /// Identities whose file is gone from the directory.
    pub removed: Vec<Removed>,
    pub unchanged: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct IdentityDiff {
    pub name: String,
    pub source: PathBuf,
    /// `[old, new]` when the mode changes; for an added identity, its mode.
    pub mode: Option<Vec<&'static str>>,
    pub rules_added: Vec<RuleLine>,
    pub rules_removed: Vec<RuleLine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleLine {
    /// e.g. `allow tcp://10.0.0.0/8:443`, or with the address a host name
    /// resolved to: `allow tcp://api.example:443 [10.1.2.3]`.
    pub rule: String,
    /// file:line:col
    pub origin: String,
}

#[derive(Debug, Serialize)]
pub struct Removed {
    pub name: String,
    pub processes: usize,
    /// What happens to it.
    pub outcome: &'static str,
}

/// Compiles `dir` as a reload would (host names answered from the daemon's
/// cache, new ones resolved but not remembered); blocking.
pub fn compile_for_diff(
    dir: &Path,
    hosts: &HostCache,
) -> Result<Vec<super::enforcer::Compiled>, PolicyErrors> {
    compiled::compile_set(
        policy::load_dir_with(dir, &|h| hosts.peek(h))?,
        &compiled::NoGuard,
    )
}

/// An identity in force, as `diff` compares it.
pub struct Current {
    pub name: String,
    /// `None` for an orphaned identity.
    pub policy: Option<Arc<IdentityPolicy>>,
    pub processes: usize,
}

impl From<&IdentityView> for Current {
    fn from(v: &IdentityView) -> Self {
        Current {
            name: v.name.clone(),
            policy: v.policy.clone(),
            processes: processes(v),
        }
    }
}

/// The identities of a snapshot, for `diff`.
pub fn current(snap: &Snapshot) -> Vec<Current> {
    snap.by_id.values().map(|v| Current::from(&**v)).collect()
}

pub fn diff(dir: &Path, new: &[super::enforcer::Compiled], current: &[Current]) -> Diff {
    let mut d = Diff {
        dir: dir.to_path_buf(),
        ..Diff::default()
    };
    for c in new {
        let p = &c.policy;
        let old = current
            .iter()
            .find(|c| c.name == p.name)
            .and_then(|c| c.policy.clone());
        match old {
            None => d.added.push(IdentityDiff {
                name: p.name.clone(),
                source: p.source.clone(),
                mode: Some(vec![mode_name(p.mode)]),
                rules_added: rule_lines(p).into_values().collect(),
                rules_removed: Vec::new(),
            }),
            Some(old) if old.digest == p.digest => d.unchanged.push(p.name.clone()),
            Some(old) => {
                let (was, now) = (rule_lines(&old), rule_lines(p));
                d.changed.push(IdentityDiff {
                    name: p.name.clone(),
                    source: p.source.clone(),
                    mode: (old.mode != p.mode)
                        .then(|| vec![mode_name(old.mode), mode_name(p.mode)]),
                    rules_added: now
                        .iter()
                        .filter(|(k, _)| !was.contains_key(*k))
                        .map(|(_, l)| l.clone())
                        .collect(),
                    rules_removed: was
                        .iter()
                        .filter(|(k, _)| !now.contains_key(*k))
                        .map(|(_, l)| l.clone())
                        .collect(),
                });
            }
        }
    }
    for v in current {
        if v.policy.is_none() || new.iter().any(|c| c.policy.name == v.name) {
            continue;
        }
        let processes = v.processes;
        d.removed.push(Removed {
            name: v.name.clone(),
            processes,
            outcome: if processes > 0 {
                "stays, with every operation denied, while its processes remain"
            } else {
                "removed with its cgroup"
            },
        });
    }
    d
}

fn processes(v: &IdentityView) -> usize {
    cgroup::process_count(&v.cgroup)
        + v.assigned
            .iter()
            .map(|a| cgroup::process_count(a))
            .sum::<usize>()
}

/// Every kernel-relevant rule of a policy, keyed by what it says (not where
/// it is written, so moving a rule is no change).
fn rule_lines(p: &IdentityPolicy) -> BTreeMap<String, RuleLine> {
    let mut out = BTreeMap::new();
    for r in &p.network.rules {
        let rule = match &r.host {
            Some(_) => format!("{} {} [{}]", verb(r), r.text, r.addr),
            None => format!("{} {}", verb(r), r.text),
        };
        out.entry(rule.clone()).or_insert(RuleLine {
            rule,
            origin: r.origin.to_string(),
        });
    }
    for u in &p.network.unix {
        let rule = format!("unix {}", u.path);
        out.entry(rule.clone()).or_insert(RuleLine {
            rule,
            origin: u.origin.to_string(),
        });
    }
    out
}

fn verb(r: &NetRule) -> &'static str {
    match (r.direction, r.action) {
        (Direction::Connect, Action::Allow) => "allow",
        (Direction::Connect, Action::Deny) => "deny",
        (Direction::Bind, Action::Allow) => "bind",
        (Direction::Bind, Action::Deny) => "deny bind",
    }
}

// --- explain --------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Connect,
    Bind,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub identity: String,
    pub mode: &'static str,
    pub op: Op,
    pub proto: &'static str,
    pub target: String,
    /// One per address the target resolves to.
    pub answers: Vec<Answer>,
}

#[derive(Debug, Serialize)]
pub struct Answer {
    pub address: IpAddr,
    pub port: u16,
    /// What the policy says: `allow` or `deny`.
    pub decision: &'static str,
    /// What the kernel does: `allowed`, `denied` (EPERM) or `allowed
    /// (audit)` for a denial in audit mode, which is reported only.
    pub outcome: &'static str,
    /// The deciding rule, when one matched.
    pub rule: Option<DecidingRule>,
    /// Human summary, e.g. `no rule matched: default deny`.
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct DecidingRule {
    pub id: u32,
    pub text: String,
    /// file:line:col
    pub origin: String,
    pub describe: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("bad target `{0}`: {1}")]
    Target(String, String),
    #[error("cannot resolve `{0}`: {1}")]
    Resolve(String, std::io::Error),
}

/// `HOST:PORT` or `[V6]:PORT` into its parts.
pub fn split_target(s: &str) -> Result<(String, u16), ExplainError> {
    let bad = |why: &str| ExplainError::Target(s.to_string(), why.to_string());
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| bad("expected HOST:PORT"))?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or_else(|| bad("unclosed `[`"))?,
        None if host.contains(':') => {
            return Err(bad("an IPv6 address goes in brackets, e.g. `[::1]:443`"));
        }
        None => host,
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = port.parse().map_err(|_| bad("bad port"))?;
    Ok((host.to_string(), port))
}

/// The addresses a target host stands for (blocking for names).
pub fn target_addrs(host: &str) -> Result<Vec<IpAddr>, ExplainError> {
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(vec![ip]),
        Err(_) => system_lookup(host).map_err(|e| ExplainError::Resolve(host.to_string(), e)),
    }
}

/// Who an explanation is about: the parts of an identity's view it needs.
pub struct Subject {
    pub name: String,
    pub mode: agent_common::identity::Mode,
    /// `None` for an orphaned identity (everything denied).
    pub policy: Option<Arc<IdentityPolicy>>,
}

impl From<&IdentityView> for Subject {
    fn from(v: &IdentityView) -> Self {
        Subject {
            name: v.name.clone(),
            mode: v.mode,
            policy: v.policy.clone(),
        }
    }
}

/// Decides like the kernel does, with `policy::decide` on the compiled
/// tables of the policy in force (blocking: compiles).
pub fn explain(
    view: &Subject,
    op: Op,
    udp: bool,
    target: &str,
    addrs: &[IpAddr],
    port: u16,
) -> Explanation {
    let class = match (op, udp) {
        (Op::Connect, false) => CLASS_TCP,
        (Op::Connect, true) => CLASS_UDP,
        (Op::Bind, false) => CLASS_BIND_TCP,
        (Op::Bind, true) => CLASS_BIND_UDP,
    };
    let policy = view.policy.clone();
    let tables = policy
        .as_ref()
        .and_then(|p| policy::compile_network(p).ok());
    let audit = policy
        .as_ref()
        .is_some_and(|p| p.mode == agent_common::identity::Mode::Audit);
    let answers = addrs
        .iter()
        .map(|&ip| {
            let ip = ip.to_canonical();
            let mut a = Answer {
                address: ip,
                port,
                decision: "deny",
                outcome: if audit { "allowed (audit)" } else { "denied" },
                rule: None,
                reason: String::new(),
            };
            let allow = |a: &mut Answer| {
                a.decision = "allow";
                a.outcome = "allowed";
            };
            if op == Op::Bind && port == 0 {
                allow(&mut a);
                a.reason = "binding port 0 (an ephemeral port) is never judged".into();
                return a;
            }
            let (Some(p), Some(t)) = (&policy, &tables) else {
                a.reason = "the identity's policy file was removed while processes remain: \
                            everything is denied"
                    .into();
                return a;
            };
            match policy::decide(t, class, ip, port) {
                None => a.reason = "no rule matched: default deny".into(),
                Some((action, id)) => {
                    if action == Action::Allow {
                        allow(&mut a);
                    }
                    let rule = deciding_rule(p, id, class, ip);
                    a.reason = match &rule {
                        Some(r) => r.describe.clone(),
                        None => format!("rule #{id}"),
                    };
                    a.rule = rule;
                }
            }
            a
        })
        .collect();
    Explanation {
        identity: view.name.clone(),
        mode: mode_name(view.mode),
        op,
        proto: if udp { "udp" } else { "tcp" },
        target: target.to_string(),
        answers,
    }
}

/// The written rule behind a decision: among the rules with that id (a host
/// name or `*` expands to several), the one whose network holds `ip`.
fn deciding_rule(p: &IdentityPolicy, id: u32, class: u32, ip: IpAddr) -> Option<DecidingRule> {
    let same_id = || p.network.rules.iter().filter(|r| r.id == id);
    let r = same_id()
        .find(|r| r.class() == class && contains(r.addr, r.prefix_len, ip))
        .or_else(|| same_id().next())?;
    Some(DecidingRule {
        id,
        text: r.text.clone(),
        origin: r.origin.to_string(),
        describe: r.describe(),
    })
}

fn contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    fn masked(v: u128, bits: u32, len: u8) -> u128 {
        let len = u32::from(len).min(bits);
        if len == 0 { 0 } else { v >> (bits - len) }
    }
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            masked(u32::from(n).into(), 32, len) == masked(u32::from(a).into(), 32, len)
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            masked(u128::from(n), 128, len) == masked(u128::from(a), 128, len)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use agent_common::identity::Mode;

    use super::*;

    fn view_of(text: &str) -> Subject {
        let p = policy::parse_str(Path::new("p/t.toml"), text, &|_| {
            Ok(vec!["10.9.9.9".parse().unwrap()])
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Subject {
            name: p.name.clone(),
            mode: p.mode,
            policy: Some(Arc::new(p)),
        }
    }

    const T: &str = "[identity]\nname = \"t\"\n[network]\n\
                     allow = [\"tcp://10.0.0.0/8:443\", \"tcp://api.example:80\"]\n\
                     deny = [\"tcp://10.1.0.0/16:*\"]\n";

    #[test]
    fn explain_names_the_deciding_rule_or_default_deny() {
        let v = view_of(T);
        let ask = |ip: &str, port| {
            let e = explain(&v, Op::Connect, false, ip, &[ip.parse().unwrap()], port);
            e.answers.into_iter().next().unwrap()
        };
        let a = ask("10.2.3.4", 443);
        assert_eq!((a.decision, a.outcome), ("allow", "allowed"));
        assert_eq!(a.rule.as_ref().unwrap().origin, "p/t.toml:4:11");
        let a = ask("10.1.3.4", 443);
        assert_eq!(a.decision, "deny");
        assert_eq!(a.rule.as_ref().unwrap().text, "tcp://10.1.0.0/16:*");
        let a = ask("10.9.9.9", 80);
        assert!(
            a.reason.contains("api.example:80 [10.9.9.9]"),
            "{}",
            a.reason
        );
        let a = ask("192.0.2.1", 443);
        assert_eq!(a.reason, "no rule matched: default deny");
        assert!(a.rule.is_none());
        // IPv4-mapped addresses are judged by the IPv4 rules.
        assert_eq!(ask("::ffff:10.2.3.4", 443).decision, "allow");
        // Binding port 0 is never judged; other binds have no rule here.
        let b = explain(&v, Op::Bind, false, "x", &["0.0.0.0".parse().unwrap()], 0);
        assert_eq!(b.answers[0].decision, "allow");
        let b = explain(
            &v,
            Op::Bind,
            false,
            "x",
            &["0.0.0.0".parse().unwrap()],
            8080,
        );
        assert_eq!(b.answers[0].decision, "deny");
    }

    #[test]
    fn audit_mode_and_orphans_are_explained() {
        let mut v = view_of(&T.replace("name = \"t\"", "name = \"t\"\nmode = \"audit\""));
        v.mode = Mode::Audit;
        let e = explain(
            &v,
            Op::Connect,
            false,
            "x",
            &["192.0.2.1".parse().unwrap()],
            1,
        );
        assert_eq!(
            (e.answers[0].decision, e.answers[0].outcome),
            ("deny", "allowed (audit)")
        );
        v.policy = None;
        v.mode = Mode::Enforce;
        let e = explain(
            &v,
            Op::Connect,
            false,
            "x",
            &["10.2.3.4".parse().unwrap()],
            443,
        );
        assert_eq!(e.answers[0].outcome, "denied");
        assert!(e.answers[0].reason.contains("removed"));
    }

    #[test]
    fn targets_split_like_the_cli_writes_them() {
        assert_eq!(
            split_target("api.example:443").unwrap(),
            ("api.example".into(), 443)
        );
        assert_eq!(split_target("[::1]:80").unwrap(), ("::1".into(), 80));
        assert!(split_target("::1:80").is_err());
        assert!(split_target("host").is_err());
        assert!(split_target("host:99999").is_err());
    }

    #[test]
    fn diff_lists_rule_and_mode_changes() {
        let old = view_of(T);
        let now = [Current {
            name: old.name,
            policy: old.policy,
            processes: 0,
        }];
        let new_text = T
            .replace("name = \"t\"", "name = \"t\"\nmode = \"audit\"")
            .replace("tcp://10.0.0.0/8:443", "tcp://10.0.0.0/8:8443");
        let new = view_of(&new_text).policy.unwrap();
        let set = vec![
            crate::policy::compiled::compile_identity(new, None, &crate::policy::compiled::NoGuard)
                .unwrap(),
        ];
        let d = diff(Path::new("p"), &set, &now);
        assert_eq!(d.changed.len(), 1, "{d:#?}");
        let c = &d.changed[0];
        assert_eq!(c.mode, Some(vec!["enforce", "audit"]));
        assert_eq!(c.rules_added[0].rule, "allow tcp://10.0.0.0/8:8443");
        assert_eq!(c.rules_removed[0].rule, "allow tcp://10.0.0.0/8:443");
        assert_eq!(
            c.rules_removed.len(),
            1,
            "moved rules are not changes: {d:#?}"
        );
        // An empty directory removes the identity.
        let d = diff(Path::new("p"), &[], &now);
        assert_eq!(d.removed[0].name, "t");
    }
}
