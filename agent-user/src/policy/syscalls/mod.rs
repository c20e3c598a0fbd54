//! `[syscalls]`: which syscalls an identity may make.
//!
//! ```toml
//! [syscalls]
//! allow = ["@default", "@network-io", "mkdir"]   # names and @groups
//! deny  = ["ptrace", "@privileged"]             # always refused, beats allow
//! assigned = "audit"                            # or "kill", see below
//! ```
//!
//! Names, numbers and groups come from one table ([`table`]). What reaches
//! the kernel is a bitmap per identity (`agent_common::syscall`); `deny`
//! entries also go into the seccomp filter `corral run` installs, as EPERM
//! in the kernel. `assigned` is what happens to tagged processes that carry
//! no Corral filter (tagged with `corral assign`, or started before the
//! identity had a `[syscalls]` section): `audit` reports the syscalls the
//! policy does not allow, `kill` kills the process on the first one (after
//! the call: it does not prevent it).

#[cfg(test)]
mod doc;
mod show;
mod table;
#[cfg(test)]
mod tests;

use std::fmt;

use agent_common::{
    identity::Mode,
    syscall::{
        BITMAP_WORDS, FLAG_ASSIGNED_KILL, FLAG_CONFINED, PSEUDO_SOCKET_NETLINK,
        PSEUDO_SOCKET_OTHER, PSEUDO_SOCKET_PACKET, PSEUDO_SOCKET_RAW, PSEUDO_SOCKET_UNIX,
        PSEUDO_SOCKET_VSOCK, SyscallPolicy,
    },
};
use toml::Spanned;

pub use show::{explain, print_show};
pub use table::{GROUPS, Group, SYSCALLS};

use super::{
    Action, Origin,
    error::{PolicyError, Source},
    raw::RawSyscalls,
};

/// Syscalls a confined process may always make, whatever its policy: without
/// them it could not even exit. They cannot be denied.
pub const ALWAYS_ALLOWED: [&str; 4] = ["exit", "exit_group", "rt_sigreturn", "restart_syscall"];

/// Pseudo-syscalls: socket families. `socket` must be allowed too for all
/// but `socket:unix`; these only widen which families it may create. The
/// last column is the groups an entry belongs to.
pub const PSEUDO: &[(u32, &str, &str, u16)] = &[
    (
        PSEUDO_SOCKET_UNIX,
        "socket:unix",
        "AF_UNIX only, without `socket` (in `@default`: glibc's user and group lookups open \
         one); where it may connect is judged by `[network]`",
        table::DEFAULT,
    ),
    (
        PSEUDO_SOCKET_PACKET,
        "socket:packet",
        "AF_PACKET: raw link-layer frames (sniffing, spoofing)",
        table::NONE,
    ),
    (
        PSEUDO_SOCKET_NETLINK,
        "socket:netlink",
        "AF_NETLINK other than NETLINK_ROUTE (which `socket` alone allows: getaddrinfo and \
         getifaddrs use it)",
        table::NONE,
    ),
    (
        PSEUDO_SOCKET_VSOCK,
        "socket:vsock",
        "AF_VSOCK: sockets between a VM and its host",
        table::NONE,
    ),
    (
        PSEUDO_SOCKET_RAW,
        "socket:raw",
        "SOCK_RAW of AF_INET/AF_INET6: raw IP, ICMP, any protocol",
        table::NONE,
    ),
    (
        PSEUDO_SOCKET_OTHER,
        "socket:other",
        "every other family (AF_ALG, AF_BLUETOOTH, AF_XDP, AF_CAN, ...); AF_UNIX, AF_INET and \
         AF_INET6 need only `socket`",
        table::NONE,
    ),
];

/// A set of syscall numbers and pseudo-syscalls, as the kernel's bitmap.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SyscallSet(pub [u64; BITMAP_WORDS]);

impl SyscallSet {
    pub fn contains(&self, nr: u32) -> bool {
        agent_common::syscall::bit(&self.0, nr)
    }

    pub fn insert(&mut self, nr: u32) {
        agent_common::syscall::set_bit(&mut self.0, nr);
    }

    pub fn union(mut self, other: &SyscallSet) -> SyscallSet {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
        self
    }

    pub fn intersect(mut self, other: &SyscallSet) -> SyscallSet {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a &= b;
        }
        self
    }

    pub fn minus(mut self, other: &SyscallSet) -> SyscallSet {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a &= !b;
        }
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..agent_common::syscall::BITMAP_BITS).filter(|&n| self.contains(n))
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    pub fn names(&self) -> Vec<String> {
        self.iter()
            .map(|n| name_of(n).map_or_else(|| format!("#{n}"), str::to_string))
            .collect()
    }
}

impl fmt::Debug for SyscallSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl serde::Serialize for SyscallSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// What happens to tagged processes without Corral's seccomp filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Assigned {
    /// Report the syscalls the policy does not allow; deny nothing.
    Audit,
    /// SIGKILL the process on the first syscall the policy does not allow
    /// (in enforce mode). The call itself still runs.
    Kill,
}

/// One `allow` or `deny` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyscallEntry {
    pub text: String,
    pub origin: Origin,
    #[serde(skip)]
    pub set: SyscallSet,
}

impl SyscallEntry {
    /// e.g. `deny ptrace (agent.toml:9:10)`.
    pub fn describe(&self, action: Action) -> String {
        let verb = match action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        format!("{verb} {} ({})", self.text, self.origin.short())
    }
}

/// A validated `[syscalls]` section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyscallsPolicy {
    pub allow: Vec<SyscallEntry>,
    pub deny: Vec<SyscallEntry>,
    pub assigned: Assigned,
    /// What the policy allows: every `allow` entry minus every `deny`
    /// entry, plus [`ALWAYS_ALLOWED`].
    pub allowed: SyscallSet,
    /// Every `deny` entry.
    pub denied: SyscallSet,
}

impl SyscallsPolicy {
    /// A section that allows nothing but [`ALWAYS_ALLOWED`] (what an
    /// orphaned identity is judged by).
    pub fn exit_only() -> SyscallsPolicy {
        SyscallsPolicy {
            allow: Vec::new(),
            deny: Vec::new(),
            assigned: Assigned::Audit,
            allowed: always_allowed(),
            denied: SyscallSet::default(),
        }
    }

    /// The `SYSCALL_POLICY` value for an identity.
    pub fn map_value(&self, generation: u32, mode: Mode, name: &str) -> SyscallPolicy {
        let mut v = SyscallPolicy::empty();
        v.generation = generation;
        v.mode = mode.into();
        v.flags = FLAG_CONFINED
            | match self.assigned {
                Assigned::Kill => FLAG_ASSIGNED_KILL,
                Assigned::Audit => 0,
            };
        v.allow = self.allowed.0;
        v.deny = self.denied.0;
        v.name = name_bytes(name);
        v
    }

    /// Words for the policy digest (what reaches the kernel).
    pub fn digest_words(&self) -> Vec<u64> {
        let mut w: Vec<u64> = self.allowed.0.to_vec();
        w.extend(self.denied.0);
        w.push(match self.assigned {
            Assigned::Audit => 1,
            Assigned::Kill => 2,
        });
        w
    }

    /// The entry behind a decision about `nr`, for events and `explain`:
    /// the first `deny` entry naming it, else the first `allow` entry.
    pub fn deciding_entry(&self, nr: u32) -> Option<(Action, &SyscallEntry)> {
        if let Some(e) = self.deny.iter().find(|e| e.set.contains(nr)) {
            return Some((Action::Deny, e));
        }
        if self.allowed.contains(nr) {
            return self
                .allow
                .iter()
                .find(|e| e.set.contains(nr))
                .map(|e| (Action::Allow, e));
        }
        None
    }

    /// Syscalls the seccomp filter allows without asking, when compiled
    /// from this policy at launch: the allowed hot ones and the ones always
    /// allowed.
    pub fn hot_allowed(&self) -> SyscallSet {
        self.allowed.intersect(&hot_set().union(&always_allowed()))
    }
}

pub fn always_allowed() -> SyscallSet {
    let mut s = SyscallSet::default();
    for n in ALWAYS_ALLOWED {
        s.insert(nr_of(n).expect("in the table"));
    }
    s
}

/// The identity-name bytes of a map value (NUL-padded, cut at 63).
pub fn name_bytes(name: &str) -> [u8; agent_common::identity::IDENTITY_NAME_LEN] {
    let mut b = [0u8; agent_common::identity::IDENTITY_NAME_LEN];
    let n = name.len().min(b.len() - 1);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    b
}

/// The name of a syscall number or pseudo-syscall.
pub fn name_of(nr: u32) -> Option<&'static str> {
    if let Ok(i) = SYSCALLS.binary_search_by_key(&nr, |s| s.nr) {
        return Some(SYSCALLS[i].name);
    }
    PSEUDO.iter().find(|p| p.0 == nr).map(|p| p.1)
}

/// The number of a syscall or pseudo-syscall name.
pub fn nr_of(name: &str) -> Option<u32> {
    SYSCALLS
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.nr)
        .or_else(|| PSEUDO.iter().find(|p| p.1 == name).map(|p| p.0))
}

pub fn group(name: &str) -> Option<&'static Group> {
    GROUPS.iter().find(|g| g.name == name)
}

pub fn group_set(bit: u16) -> SyscallSet {
    let mut s = SyscallSet::default();
    for sc in SYSCALLS.iter().filter(|sc| sc.groups & bit != 0) {
        s.insert(sc.nr);
    }
    for p in PSEUDO.iter().filter(|p| p.3 & bit != 0) {
        s.insert(p.0);
    }
    s
}

pub fn hot_set() -> SyscallSet {
    let mut s = SyscallSet::default();
    for sc in SYSCALLS.iter().filter(|sc| sc.hot) {
        s.insert(sc.nr);
    }
    s
}

/// One entry (`read`, `@default`, `socket:raw`) to its set.
pub fn resolve(text: &str) -> Result<SyscallSet, String> {
    let mut set = SyscallSet::default();
    if text.starts_with('@') {
        let g = group(text).ok_or_else(|| {
            let names: Vec<&str> = GROUPS.iter().map(|g| g.name).collect();
            format!(
                "unknown syscall group `{text}`; groups are {}",
                names.join(", ")
            )
        })?;
        return Ok(group_set(g.bit));
    }
    match nr_of(text) {
        Some(nr) => {
            set.insert(nr);
            Ok(set)
        }
        None => Err(match suggest(text) {
            Some(s) => format!("unknown syscall `{text}` (x86_64); did you mean `{s}`?"),
            None => format!(
                "unknown syscall `{text}` (x86_64 names, e.g. `openat`; groups start with `@`; \
                 socket families are `socket:unix`, `socket:packet`, `socket:netlink`, `socket:vsock`, \
                 `socket:raw`, `socket:other`)"
            ),
        }),
    }
}

/// The closest known name, if it is close (a typo, or `fstat64` for
/// `fstat`).
fn suggest(name: &str) -> Option<&'static str> {
    let all = SYSCALLS
        .iter()
        .map(|s| s.name)
        .chain(PSEUDO.iter().map(|p| p.1))
        .chain(GROUPS.iter().map(|g| g.name));
    let (best, d) = all
        .map(|c| (c, distance(name, c)))
        .min_by_key(|&(_, d)| d)?;
    (d <= 2.max(name.len() / 4)).then_some(best)
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Checks a `[syscalls]` section, adding every problem to `errors`.
pub(crate) fn build(
    src: &Source<'_>,
    raw: &RawSyscalls,
    errors: &mut Vec<PolicyError>,
) -> SyscallsPolicy {
    let mut entries = |list: &[Spanned<String>]| -> Vec<SyscallEntry> {
        let mut out = Vec::new();
        for text in list {
            match resolve(text.get_ref()) {
                Ok(set) => out.push(SyscallEntry {
                    text: text.get_ref().clone(),
                    origin: src.origin(text),
                    set,
                }),
                Err(m) => errors.push(error_at(src, text, m)),
            }
        }
        out
    };
    let allow = entries(&raw.allow);
    let deny = entries(&raw.deny);
    let always = always_allowed();
    let resolved = raw.deny.iter().filter(|t| resolve(t.get_ref()).is_ok());
    for (e, text) in deny.iter().zip(resolved) {
        if !e.text.starts_with('@') && !e.set.intersect(&always).is_empty() {
            errors.push(error_at(
                src,
                text,
                format!(
                    "`{}` cannot be denied: a process must always be able to exit and return \
                     from signal handlers",
                    e.text
                ),
            ));
        }
    }
    let assigned = match raw.assigned.as_ref().map(|a| (a, a.get_ref().as_str())) {
        None | Some((_, "audit")) => Assigned::Audit,
        Some((_, "kill")) => Assigned::Kill,
        Some((a, other)) => {
            errors.push(error_at(
                src,
                a,
                format!(
                    "bad `assigned` value `{other}`: expected `audit` (report syscalls the policy \
                     does not allow) or `kill` (kill the process, after the call)"
                ),
            ));
            Assigned::Audit
        }
    };
    let denied = deny
        .iter()
        .fold(SyscallSet::default(), |acc, e| acc.union(&e.set))
        .minus(&always);
    let allowed = allow
        .iter()
        .fold(SyscallSet::default(), |acc, e| acc.union(&e.set))
        .minus(&denied)
        .union(&always);
    SyscallsPolicy {
        allow,
        deny,
        assigned,
        allowed,
        denied,
    }
}

/// Folds a `[syscalls]` section (or its absence) into a policy digest, so a
/// reload notices every change that reaches the kernel (FNV-1a, like the
/// network digest).
pub fn fold_digest(digest: u64, s: Option<&SyscallsPolicy>) -> u64 {
    let words = s.map(SyscallsPolicy::digest_words).unwrap_or_default();
    let mut h = digest;
    for b in (words.len() as u64)
        .to_le_bytes()
        .into_iter()
        .chain(words.iter().flat_map(|w| w.to_le_bytes()))
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn error_at(src: &Source<'_>, s: &Spanned<String>, message: String) -> PolicyError {
    src.error_at(src.offset_in_string(&s.span(), s.get_ref(), 0), message)
}
