//! The policy advisor (`corral policy suggest`): from the operations an
//! identity's policy refused (enforce) or would have refused (audit), as
//! recorded in events, to the least widening of its TOML that allows them.
//!
//! - [`collect`]: events to distinct operations ([`Want`]) with evidence;
//!   what no policy entry can allow (Corral's own ground, 32-bit syscalls,
//!   socket kinds without a name) is set aside with the reason;
//! - [`Judge`]: one operation against a compiled policy, by the decision
//!   procedures `corral policy explain` uses (`decide`, `decide_file`,
//!   the syscall sets), so a proposal is proven by the compiler a reload
//!   runs;
//! - [`propose`]: the operations nothing allows yet, generalised only
//!   within [`Limits`] (`group`), written into the policy text (`edit`).
//!
//! Nothing here reads files or talks to the daemon: the caller hands in
//! events, the current policy and its text, and lookups for real paths and
//! resolver names.

mod edit;
mod group;
mod judge;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use serde::Serialize;

use super::{ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, IdentityPolicy, SocketKind};
use crate::event::{Event, EventKind, EventReason};
pub use judge::{Judge, Replay, Verdict, replay};

/// How far a proposal may generalise what was seen.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Limits {
    /// IPv4 addresses are grouped into one prefix no shorter than this.
    pub max_prefix_v4: u8,
    /// IPv6 addresses are grouped into one prefix no shorter than this.
    pub max_prefix_v6: u8,
    /// Distinct addresses (same protocol and port) a prefix needs.
    pub min_addrs: usize,
    /// Distinct files (same directory and access) a directory rule needs.
    pub dir_files: usize,
    /// Directory rules are never proposed above this depth (`/srv/` is 1).
    pub min_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_prefix_v4: 24,
            max_prefix_v6: 64,
            min_addrs: 4,
            dir_files: 10,
            min_depth: 2,
        }
    }
}

impl Limits {
    pub fn check(&self) -> Result<(), String> {
        if !(8..=32).contains(&self.max_prefix_v4) || !(16..=128).contains(&self.max_prefix_v6) {
            return Err("max prefix: 8..=32 (IPv4) and 16..=128 (IPv6)".into());
        }
        if self.min_addrs < 2 || self.dir_files < 2 {
            return Err("grouping needs at least 2 distinct addresses or files".into());
        }
        if self.min_depth < 1 {
            return Err("min depth: at least 1 (`/` is never proposed)".into());
        }
        Ok(())
    }
}

/// Which `[network]` list an address operation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NetList {
    Allow,
    Bind,
}

/// One distinct operation, as a policy judges it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Want {
    Net {
        list: NetList,
        udp: bool,
        addr: IpAddr,
        port: u16,
    },
    Socket(SocketKind),
    Unix(String),
    /// A real path (a directory ends with `/`) and `ACCESS_*` bits;
    /// `absent`: it did not exist when the proposal was made (the open
    /// would have created it).
    File {
        path: String,
        access: u32,
        absent: bool,
    },
    /// A syscall or pseudo-syscall (`socket:packet`) name.
    Syscall(String),
}

fn host_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Want::Net {
                list,
                udp,
                addr,
                port,
            } => {
                let verb = match (list, udp) {
                    (NetList::Bind, _) => "bind",
                    (NetList::Allow, false) => "connect",
                    (NetList::Allow, true) => "send",
                };
                let proto = if *udp { "udp" } else { "tcp" };
                write!(f, "{verb} {proto} {}", host_port(*addr, *port))
            }
            Want::Socket(k) => write!(f, "socket {}", kind_name(*k)),
            Want::Unix(p) => write!(f, "unix connect {p}"),
            Want::File { path, access, .. } => {
                write!(f, "open {path} {}", crate::event::access_str(*access))
            }
            Want::Syscall(n) => write!(f, "syscall {n}"),
        }
    }
}

fn kind_name(k: SocketKind) -> &'static str {
    SocketKind::ALL
        .iter()
        .find(|(_, x)| *x == k)
        .map_or("?", |(n, _)| n)
}

/// Where and by whom an operation was seen.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Seen {
    pub count: u64,
    pub first: String,
    pub last: String,
    /// Up to [`EXAMPLES`] of each.
    pub pids: BTreeSet<u32>,
    pub comms: BTreeSet<String>,
}

const EXAMPLES: usize = 3;

impl Seen {
    fn add(&mut self, ev: &Event) {
        self.count += 1;
        if self.first.is_empty() || ev.time < self.first {
            self.first.clone_from(&ev.time);
        }
        if ev.time > self.last {
            self.last.clone_from(&ev.time);
        }
        if let Some(pid) = ev.tgid.or(ev.pid)
            && self.pids.len() < EXAMPLES
        {
            self.pids.insert(pid);
        }
        if let Some(c) = &ev.comm
            && self.comms.len() < EXAMPLES
        {
            self.comms.insert(c.clone());
        }
    }

    fn merge(&mut self, o: &Seen) {
        self.count += o.count;
        if self.first.is_empty() || (!o.first.is_empty() && o.first < self.first) {
            self.first.clone_from(&o.first);
        }
        if o.last > self.last {
            self.last.clone_from(&o.last);
        }
        for p in &o.pids {
            if self.pids.len() < EXAMPLES {
                self.pids.insert(*p);
            }
        }
        for c in &o.comms {
            if self.comms.len() < EXAMPLES {
                self.comms.insert(c.clone());
            }
        }
    }

    /// `12× 2026-12-05T10:00:01Z..2026-12-05T10:05:00Z, pid 41 97, python3`
    pub fn summary(&self) -> String {
        let pids: Vec<String> = self.pids.iter().map(u32::to_string).collect();
        let comms: Vec<&str> = self.comms.iter().map(String::as_str).collect();
        let (first, last) = (seconds(&self.first), seconds(&self.last));
        let span = if first == last {
            first.to_string()
        } else {
            format!("{first}..{last}")
        };
        format!(
            "{}× {span}, pid {}, {}",
            self.count,
            pids.join(" "),
            comms.join(" ")
        )
    }
}

/// An RFC 3339 time to the second (`...:57.0672Z` -> `...:57Z`).
fn seconds(t: &str) -> std::borrow::Cow<'_, str> {
    match (t.find('.'), t.strip_suffix('Z')) {
        (Some(dot), Some(_)) => format!("{}Z", &t[..dot]).into(),
        _ => t.into(),
    }
}

/// An operation set aside, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Aside {
    pub op: String,
    pub why: String,
    pub seen: Seen,
}

/// What the events say an identity did beyond its policy.
#[derive(Debug, Default)]
pub struct Recorded {
    pub ops: BTreeMap<Want, Seen>,
    /// Events that no policy entry could allow, by (operation, reason).
    pub aside: BTreeMap<(String, String), Seen>,
    /// Judged events of the identity read (every verdict).
    pub events: u64,
}

/// The real path of a recorded one (the kernel judges real paths; a
/// directory ends with `/`) and whether it exists now, or `None` when it
/// cannot be established.
pub type RealPath<'a> = &'a dyn Fn(&str) -> Option<(String, bool)>;

/// Reads `events` for `identity`: judged events refused (`deny`, `kill`)
/// or reported (`audit`) become operations; the rest is ignored.
pub fn collect<'e>(
    identity: &str,
    events: impl IntoIterator<Item = &'e Event>,
    real: RealPath<'_>,
) -> Recorded {
    let mut rec = Recorded::default();
    for ev in events {
        if ev.identity.as_deref() != Some(identity)
            || !matches!(
                ev.kind,
                EventKind::Net | EventKind::Unix | EventKind::File | EventKind::Syscall
            )
            || ev.verdict.is_none()
        {
            continue;
        }
        rec.events += 1;
        match want_of(ev, real) {
            Ok(w) => rec.ops.entry(w).or_default().add(ev),
            Err((op, why)) => rec.aside.entry((op, why)).or_default().add(ev),
        }
    }
    rec
}

type Refusal = (String, String);

fn aside(op: impl Into<String>, why: &str) -> Refusal {
    (op.into(), why.to_string())
}

fn want_of(ev: &Event, real: RealPath<'_>) -> Result<Want, Refusal> {
    let reason = ev.reason;
    let what = || event_target(ev);
    match reason {
        Some(EventReason::SelfProtection) => {
            return Err(aside(
                what(),
                "Corral's own ground (self-protection): refused to every identity, never proposed",
            ));
        }
        Some(EventReason::FailClosed) => {
            return Err(aside(
                what(),
                "fail-closed (no launcher answered, or the path could not be established): \
                 not a policy decision",
            ));
        }
        _ => {}
    }
    if let Some(n) = &ev.net {
        return net_want(n);
    }
    if let Some(u) = &ev.unix {
        return Ok(Want::Unix(u.path.clone()));
    }
    if let Some(f) = &ev.file {
        if reason == Some(EventReason::NotByPolicy) {
            return Err(aside(
                what(),
                "the policy already allows it: file permissions or a launch-time limit refused it",
            ));
        }
        if f.note.is_some() && !f.path.starts_with('/') {
            return Err(aside(what(), "the path could not be established"));
        }
        let access = access_bits(&f.access);
        if access == 0 {
            return Err(aside(what(), "unknown access"));
        }
        // The LSM resolved the path when it judged it; re-resolving now
        // could follow a symlink swapped since.
        let resolved = if f.layer == "lsm" {
            Some((f.path.clone(), true))
        } else {
            real(&f.path)
        };
        // Landlock refused creating something in a directory (its record
        // names the directory only): a rule on the directory allows it.
        if f.layer == "landlock"
            && f.op.as_deref() == Some("create")
            && let Some((dir, true)) = &resolved
        {
            return Ok(Want::File {
                path: format!("{}/", dir.trim_end_matches('/')),
                access,
                absent: true,
            });
        }
        let Some((path, exists)) = resolved else {
            return Err(aside(
                what(),
                "the path is relative and the process is gone: its real path is unknown",
            ));
        };
        return Ok(Want::File {
            path,
            access,
            absent: !exists,
        });
    }
    if let Some(s) = &ev.syscall {
        if s.name.starts_with("ia32:") || s.name.starts_with("x32:") || s.name.starts_with('#') {
            return Err(aside(
                what(),
                "a 32-bit, x32 or unknown syscall: no policy entry allows these",
            ));
        }
        // `socket` refused for its family names the `socket:*` entry it needs.
        let needed = s
            .detail
            .as_deref()
            .and_then(|d| d.split("(needs `").nth(1))
            .and_then(|r| r.split('`').next());
        return Ok(Want::Syscall(needed.unwrap_or(&s.name).to_string()));
    }
    Err(aside(what(), "an event without its operation"))
}

fn net_want(n: &crate::event::NetInfo) -> Result<Want, Refusal> {
    let target = format!("{} {} {}:{}", n.op, n.protocol, n.addr, n.port);
    if n.op == "create" {
        let kind = match (n.family.as_str(), n.protocol.as_str(), n.sock_type.as_str()) {
            ("packet", ..) => Some(SocketKind::Packet),
            ("vsock", ..) => Some(SocketKind::Vsock),
            (_, "icmp" | "icmpv6", "dgram") => Some(SocketKind::Ping),
            (_, _, "raw") => Some(SocketKind::Raw),
            _ => None,
        };
        let target = format!("socket {} {} {}", n.family, n.sock_type, n.protocol);
        return kind.map(Want::Socket).ok_or_else(|| {
            aside(
                target,
                "no policy entry allows this socket kind (only TCP, UDP, MPTCP and the named \
                 kinds can be allowed)",
            )
        });
    }
    let addr: IpAddr = n
        .addr
        .parse()
        .map_err(|_| aside(target.clone(), "not an address"))?;
    let udp = match n.protocol.as_str() {
        "tcp" | "mptcp" => false,
        "udp" => true,
        _ => return Err(aside(target, "no address rule judges this protocol")),
    };
    let addr = addr.to_canonical();
    // A connect is judged (and allowed) as the address the kernel judges.
    let (list, addr) = if n.op == "bind" {
        (NetList::Bind, addr)
    } else {
        let judged = super::judged_destination(addr).unwrap_or(addr);
        (NetList::Allow, judged.to_canonical())
    };
    Ok(Want::Net {
        list,
        udp,
        addr,
        port: n.port,
    })
}

fn event_target(ev: &Event) -> String {
    if let Some(n) = &ev.net {
        return format!("{} {} {}:{}", n.op, n.protocol, n.addr, n.port);
    }
    if let Some(u) = &ev.unix {
        return format!("unix {} {}", u.op, u.path);
    }
    if let Some(f) = &ev.file {
        return format!("open {} {}", f.path, f.access);
    }
    if let Some(s) = &ev.syscall {
        return format!("syscall {}", s.name);
    }
    ev.kind.to_string()
}

/// `read,write` to `ACCESS_*` bits (0 for an unknown name).
pub fn access_bits(s: &str) -> u32 {
    let mut bits = 0;
    for n in s.split(',') {
        bits |= match n.trim() {
            "read" => ACCESS_READ,
            "write" => ACCESS_WRITE,
            "exec" => ACCESS_EXEC,
            _ => return 0,
        };
    }
    bits
}

/// One entry the proposal adds, with what it covers.
#[derive(Debug, Clone, Serialize)]
pub struct Addition {
    /// `network`, `files`, `syscalls`.
    pub section: &'static str,
    /// `allow`, `bind`, `unix`, `sockets`, `read`, `write`, `exec`.
    pub key: &'static str,
    pub value: String,
    /// Why it is wider than one operation, when it is.
    pub note: Option<String>,
    /// How many distinct recorded operations it covers.
    pub covers: usize,
    pub seen: Seen,
}

/// A proposed policy and the evidence behind each change.
#[derive(Debug, Clone, Serialize)]
pub struct Proposal {
    /// The identity's policy text with the additions, each commented.
    pub text: String,
    pub additions: Vec<Addition>,
    /// Recorded operations the current policy already allows (seen before
    /// a change, or allowed since).
    pub already_allowed: Vec<Aside>,
    /// Refused by a written `deny` entry, or set aside by a limit or
    /// because no entry can allow it: never proposed.
    pub not_proposed: Vec<Aside>,
}

/// What the caller knows about the host.
pub struct Context<'a> {
    /// Paths Corral protects (a directory ends with `/`).
    pub protected: &'a [String],
    /// A name in use in the policies that an address resolves to, with
    /// every address it resolves to.
    pub name_of: &'a dyn Fn(IpAddr) -> Option<(String, Vec<IpAddr>)>,
    /// Unix sockets never proposed (Corral's control socket, container
    /// engines' sockets: root on the host for whoever connects).
    pub never_unix: &'a [String],
    /// BPF LSM enforces `[files]` (else Landlock, where a rule for a file
    /// that does not exist at launch grants nothing).
    pub files_lsm: bool,
}

/// The least widening of `text` (the policy `p` was compiled from) that
/// allows `rec`'s operations, within `limits`.
pub fn propose(
    p: &IdentityPolicy,
    text: &str,
    rec: &Recorded,
    limits: &Limits,
    cx: &Context<'_>,
) -> Result<Proposal, String> {
    let judge = Judge::new(p).map_err(|e| e.to_string())?;
    let mut already = Vec::new();
    let mut not_proposed: Vec<Aside> = rec
        .aside
        .iter()
        .map(|((op, why), seen)| Aside {
            op: op.clone(),
            why: why.clone(),
            seen: seen.clone(),
        })
        .collect();
    let mut wanted: BTreeMap<&Want, &Seen> = BTreeMap::new();
    for (w, seen) in &rec.ops {
        let aside = |why: String| Aside {
            op: w.to_string(),
            why,
            seen: seen.clone(),
        };
        match judge.judge(w) {
            Verdict::Allowed => already.push(aside("allowed by the current policy".into())),
            Verdict::DeniedByRule { rule } => not_proposed.push(aside(format!(
                "refused by a deny entry ({rule}): a proposal never overrides one"
            ))),
            Verdict::NoRule => {
                wanted.insert(w, seen);
            }
        }
    }
    let grouped = group::group(p, &judge, &wanted, limits, cx);
    not_proposed.extend(grouped.refused);
    let text = edit::render(text, &grouped.additions)?;
    Ok(Proposal {
        text,
        additions: grouped.additions,
        already_allowed: already,
        not_proposed,
    })
}
