//! One recorded operation against a compiled policy, by the decision
//! procedures `corral policy explain` uses.

use std::net::IpAddr;

use agent_common::net::{CLASS_BIND_TCP, CLASS_BIND_UDP, CLASS_TCP, CLASS_UDP};
use serde::Serialize;

use super::{Aside, NetList, Recorded, Want};
use crate::policy::{
    Action, IdentityPolicy, NetTables, PolicyErrors, compile_network, decide, decide_file, syscalls,
};

/// What a policy does with one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Verdict {
    Allowed,
    /// Refused by a written `deny` entry: never widened by a proposal.
    DeniedByRule {
        rule: String,
    },
    /// No rule allows it (default deny).
    NoRule,
}

/// Judges operations against one compiled policy, the way the kernel and
/// `corral policy explain` do.
pub struct Judge<'a> {
    p: &'a IdentityPolicy,
    net: NetTables,
}

impl<'a> Judge<'a> {
    pub fn new(p: &'a IdentityPolicy) -> Result<Judge<'a>, PolicyErrors> {
        Ok(Judge {
            p,
            net: compile_network(p)?,
        })
    }

    pub fn judge(&self, w: &Want) -> Verdict {
        match w {
            Want::Net {
                list,
                udp,
                addr,
                port,
            } => self.net(*list, *udp, *addr, *port),
            Want::Socket(k) => allowed_if(self.p.network.sockets.contains(k)),
            Want::Unix(path) => allowed_if(self.p.network.unix.iter().any(|r| &r.path == path)),
            Want::File { path, access, .. } => {
                if !self.p.files.confined {
                    return Verdict::Allowed;
                }
                let is_dir = path.ends_with('/') && path != "/";
                let rules = &self.p.files.rules;
                verdict(decide_file(&self.p.files, path, is_dir, *access), |id| {
                    rules.iter().find(|r| r.id == id).map(|r| r.describe())
                })
            }
            Want::Syscall(name) => {
                let Some(s) = &self.p.syscalls else {
                    return Verdict::Allowed;
                };
                let Some(nr) = syscalls::nr_of(name) else {
                    return Verdict::NoRule;
                };
                match s.deciding_entry(nr) {
                    Some((Action::Deny, e)) => Verdict::DeniedByRule {
                        rule: e.describe(Action::Deny),
                    },
                    _ if s.allowed.contains(nr) => Verdict::Allowed,
                    _ => Verdict::NoRule,
                }
            }
        }
    }

    fn net(&self, list: NetList, udp: bool, addr: IpAddr, port: u16) -> Verdict {
        let class = match (list, udp) {
            (NetList::Allow, false) => CLASS_TCP,
            (NetList::Allow, true) => CLASS_UDP,
            (NetList::Bind, false) => CLASS_BIND_TCP,
            (NetList::Bind, true) => CLASS_BIND_UDP,
        };
        if list == NetList::Bind && port == 0 {
            return Verdict::Allowed;
        }
        let ip = match list {
            NetList::Allow => crate::policy::judged_destination(addr).unwrap_or(addr),
            NetList::Bind => addr,
        };
        let rules = &self.p.network.rules;
        verdict(decide(&self.net, class, ip, port), |id| {
            rules.iter().find(|r| r.id == id).map(|r| r.describe())
        })
    }
}

/// A table decision (`decide`, `decide_file`) as a verdict naming the
/// deciding deny rule.
fn verdict(d: Option<(Action, u32)>, describe: impl Fn(u32) -> Option<String>) -> Verdict {
    match d {
        Some((Action::Allow, _)) => Verdict::Allowed,
        Some((Action::Deny, id)) => Verdict::DeniedByRule {
            rule: describe(id).unwrap_or_else(|| format!("rule #{id}")),
        },
        None => Verdict::NoRule,
    }
}

fn allowed_if(b: bool) -> Verdict {
    if b { Verdict::Allowed } else { Verdict::NoRule }
}

/// Every recorded operation replayed against a compiled proposal.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub operations: usize,
    pub allowed: usize,
    pub still_refused: Vec<Aside>,
}

pub fn replay(p: &IdentityPolicy, rec: &Recorded) -> Result<Replay, PolicyErrors> {
    let judge = Judge::new(p)?;
    let mut r = Replay {
        operations: rec.ops.len() + rec.aside.len(),
        allowed: 0,
        still_refused: Vec::new(),
    };
    for (w, seen) in &rec.ops {
        match judge.judge(w) {
            Verdict::Allowed => r.allowed += 1,
            v => r.still_refused.push(Aside {
                op: w.to_string(),
                why: match v {
                    Verdict::DeniedByRule { rule } => format!("refused by {rule}"),
                    _ => "no rule allows it".into(),
                },
                seen: seen.clone(),
            }),
        }
    }
    for ((op, why), seen) in &rec.aside {
        r.still_refused.push(Aside {
            op: op.clone(),
            why: why.clone(),
            seen: seen.clone(),
        });
    }
    Ok(r)
}
