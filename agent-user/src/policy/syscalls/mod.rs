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

mod table;

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
        let file = self
            .origin
            .file
            .file_name()
            .unwrap_or(self.origin.file.as_os_str())
            .to_string_lossy();
        let verb = match action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        format!(
            "{verb} {} ({file}:{}:{})",
            self.text, self.origin.line, self.origin.col
        )
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

fn always_allowed() -> SyscallSet {
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
                    origin: origin(src, text),
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

/// The `[syscalls]` lines of `corral policy show` (from the `syscalls`
/// object of `GET /v1/policy/NAME`).
pub fn print_show(s: &serde_json::Value) {
    let t = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    if s["confined"] != true {
        println!("  syscalls: NOT CONFINED (no [syscalls] section)");
        return;
    }
    let count = |k: &str| s[k].as_array().map_or(0, Vec::len);
    println!(
        "  syscalls: {} allowed ({} of them allowed in the seccomp filter itself at launch), {} \
         denied in the filter; the rest refused live",
        count("allowed"),
        count("in_kernel_allow_at_launch"),
        count("denied"),
    );
    for (verb, key) in [("allow", "allow"), ("deny", "deny")] {
        for e in s[key].as_array().into_iter().flatten() {
            println!(
                "    {verb:<5} {:<16} {:>3} syscalls  {}:{}:{}",
                t(&e["entry"]),
                e["syscalls"],
                t(&e["origin"]["file"]),
                e["origin"]["line"],
                e["origin"]["col"]
            );
        }
    }
    println!("    assigned = {}: {}", s["assigned"], t(&s["note"]));
}

/// `corral policy explain --syscall NAME`: how the policy in force (as
/// `GET /v1/policy/IDENTITY` serves it) decides one syscall, and which layer
/// applies the decision.
pub fn explain(policy: &serde_json::Value, name: &str) -> Result<serde_json::Value, String> {
    use serde_json::json;
    let nr = match resolve(name) {
        Ok(set) if !name.starts_with('@') => set.iter().next().unwrap_or(0),
        Ok(_) => return Err(format!("`{name}` is a group; explain one syscall")),
        Err(e) => return Err(e),
    };
    let s = &policy["syscalls"];
    let base = |decision: &str, by: Option<&serde_json::Value>, layer: &str| {
        json!({
            "identity": policy["name"],
            "mode": policy["mode"],
            "syscall": name,
            "nr": nr,
            "decision": decision,
            "by": by.map(|e| format!(
                "{} ({}:{}:{})",
                e["entry"].as_str().unwrap_or("?"),
                e["origin"]["file"].as_str().unwrap_or("?"),
                e["origin"]["line"],
                e["origin"]["col"]
            )),
            "layer": layer,
        })
    };
    if s["confined"] != true {
        return Ok(base(
            "allow",
            None,
            "no [syscalls] section: nothing is confined",
        ));
    }
    let covers = |e: &&serde_json::Value| {
        e["entry"]
            .as_str()
            .and_then(|t| resolve(t).ok())
            .is_some_and(|set| set.contains(nr))
    };
    let listed = |key: &str| {
        s[key]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(name)))
    };
    if ALWAYS_ALLOWED.contains(&name) {
        return Ok(base("allow", None, "always allowed (in the filter)"));
    }
    if let Some(e) = s["deny"].as_array().and_then(|d| d.iter().find(covers)) {
        return Ok(base(
            "deny",
            Some(e),
            "EPERM in the seccomp filter (enforce mode)",
        ));
    }
    if listed("allowed") {
        let e = s["allow"].as_array().and_then(|a| a.iter().find(covers));
        let hot = hot_set().contains(nr) && name != "socket" && !name.starts_with("exec");
        let layer = if hot {
            "allowed in the seccomp filter itself (hot; fixed at launch)"
        } else {
            "answered live by the launcher"
        };
        return Ok(base("allow", e, layer));
    }
    Ok(base(
        "deny",
        None,
        "no entry allows it: EPERM, answered live by the launcher",
    ))
}

fn origin(src: &Source<'_>, s: &Spanned<String>) -> Origin {
    let at = src.offset_in_string(&s.span(), s.get_ref(), 0);
    let (line, col) = src.line_col(at);
    Origin {
        file: src.file.to_path_buf(),
        line,
        col,
    }
}

fn error_at(src: &Source<'_>, s: &Spanned<String>, message: String) -> PolicyError {
    src.error_at(src.offset_in_string(&s.span(), s.get_ref(), 0), message)
}

#[cfg(test)]
const DOC_BEGIN: &str = "<!-- BEGIN generated from agent-user/src/policy/syscalls/table.rs -->";
#[cfg(test)]
const DOC_END: &str = "<!-- END generated -->";

/// The groups section of `policies/README.md`, generated from the table
/// (kept in sync by the test below).
#[cfg(test)]
pub fn readme_section() -> String {
    let mut s = String::new();
    s.push_str(DOC_BEGIN);
    s.push_str("\n\n");
    s.push_str(
        "Names marked with `*` are *hot*: when the policy allows them at launch, the seccomp \
         filter allows them itself, without asking the supervisor (removing one from a policy \
         reaches processes started afterwards). Every other name is decided live. \
         Always allowed, whatever the policy says: ",
    );
    let always: Vec<String> = ALWAYS_ALLOWED.iter().map(|n| format!("`{n}`")).collect();
    s.push_str(&always.join(", "));
    s.push_str(".\n\n");
    for g in GROUPS {
        let members: Vec<String> = SYSCALLS
            .iter()
            .filter(|sc| sc.groups & g.bit != 0)
            .map(|sc| format!("`{}`{}", sc.name, if sc.hot { "*" } else { "" }))
            .collect();
        s.push_str(&format!(
            "#### `{}` ({} syscalls)\n\n{}\n\n{}\n\n",
            g.name,
            members.len(),
            g.summary,
            members.join(" ")
        ));
    }
    let ungrouped: Vec<String> = SYSCALLS
        .iter()
        .filter(|sc| sc.groups == 0)
        .map(|sc| format!("`{}`", sc.name))
        .collect();
    s.push_str(&format!(
        "#### In no group (allowed by name only)\n\n{}\n\n",
        ungrouped.join(" ")
    ));
    s.push_str("#### Socket families\n\n| Entry | Allows |\n|---|---|\n");
    for (_, name, what, _) in PSEUDO {
        s.push_str(&format!("| `{name}` | {what} |\n"));
    }
    s.push('\n');
    s.push_str(DOC_END);
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::parse_str;

    fn no_dns(_: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
        Err(std::io::Error::other("no DNS in unit tests"))
    }

    fn load(body: &str) -> Result<crate::policy::IdentityPolicy, String> {
        let text = format!("[identity]\nname = \"a\"\n{body}");
        parse_str(Path::new("a.toml"), &text, &no_dns).map_err(|e| e.to_string())
    }

    #[test]
    fn table_is_sorted_unique_and_fits_the_bitmap() {
        for w in SYSCALLS.windows(2) {
            assert!(w[0].nr < w[1].nr, "{} {}", w[0].name, w[1].name);
        }
        let mut names: Vec<&str> = SYSCALLS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SYSCALLS.len());
        let max = SYSCALLS.last().expect("rows").nr;
        assert!(max < agent_common::syscall::PSEUDO_BASE, "{max}");
        assert_eq!(nr_of("read"), Some(0));
        assert_eq!(nr_of("io_uring_setup"), Some(425));
        assert_eq!(nr_of("file_setattr"), Some(469));
        assert_eq!(name_of(41), Some("socket"));
        assert_eq!(
            name_of(agent_common::syscall::PSEUDO_SOCKET_RAW),
            Some("socket:raw")
        );
    }

    #[test]
    fn io_uring_is_in_no_group_and_default_is_a_real_baseline() {
        for n in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
            let sc = SYSCALLS.iter().find(|s| s.name == n).expect("row");
            assert_eq!(sc.groups, 0, "{n}");
        }
        let d = group_set(table::DEFAULT);
        for n in [
            "read",
            "openat",
            "mmap",
            "futex",
            "clone3",
            "execve",
            "exit_group",
            "rt_sigreturn",
            "epoll_wait",
            "getrandom",
            "rseq",
            "prlimit64",
        ] {
            assert!(d.contains(nr_of(n).expect(n)), "{n}");
        }
        for n in [
            "socket", "mkdir", "ptrace", "mount", "bpf", "setuid", "unshare",
        ] {
            assert!(!d.contains(nr_of(n).expect(n)), "{n}");
        }
    }

    #[test]
    fn allow_minus_deny_plus_always() {
        let p =
            load("[syscalls]\nallow = [\"@default\", \"mkdir\"]\ndeny = [\"kill\", \"@debug\"]\n")
                .expect("valid");
        let s = p.syscalls.expect("section");
        assert!(s.allowed.contains(nr_of("mkdir").expect("mkdir")));
        assert!(!s.allowed.contains(nr_of("kill").expect("kill")));
        assert!(s.denied.contains(nr_of("ptrace").expect("ptrace")));
        assert!(s.allowed.contains(nr_of("exit_group").expect("x")));
        assert_eq!(s.assigned, Assigned::Audit);
        let (a, e) = s
            .deciding_entry(nr_of("kill").expect("kill"))
            .expect("entry");
        assert_eq!(a, Action::Deny);
        assert_eq!(e.describe(a), "deny kill (a.toml:5:10)");
        let (a, e) = s
            .deciding_entry(nr_of("mkdir").expect("mkdir"))
            .expect("entry");
        assert_eq!((a, e.text.as_str()), (Action::Allow, "mkdir"));
        assert!(s.deciding_entry(nr_of("mount").expect("mount")).is_none());
    }

    #[test]
    fn no_section_means_no_confinement() {
        let p = load("").expect("valid");
        assert!(p.syscalls.is_none());
    }

    #[test]
    fn unknown_names_are_errors_at_their_position() {
        let e =
            load("[syscalls]\nallow = [\"read\", \"mkdri\", \"@defualt\"]\nassigned = \"maim\"\n")
                .expect_err("invalid");
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(
            lines[0].starts_with(
                "a.toml:4:19: unknown syscall `mkdri` (x86_64); did you mean `mkdir`?"
            ),
            "{e}"
        );
        assert!(
            lines[1].starts_with("a.toml:4:28: unknown syscall group `@defualt`"),
            "{e}"
        );
        assert!(
            lines[2].starts_with("a.toml:5:13: bad `assigned` value `maim`"),
            "{e}"
        );
        let e = load("[syscalls]\ndeny = [\"exit_group\"]\n").expect_err("invalid");
        assert!(e.contains("cannot be denied"), "{e}");
        let e = load("[syscalls]\nalow = []\n").expect_err("invalid");
        assert!(e.contains("unknown field `alow`"), "{e}");
    }

    #[test]
    fn map_value_and_digest_follow_the_policy() {
        let a = load("[syscalls]\nallow = [\"@default\"]\nassigned = \"kill\"\n").expect("valid");
        let b = load("[syscalls]\nallow = [\"@default\", \"mkdir\"]\nassigned = \"kill\"\n")
            .expect("valid");
        let c = load("[syscalls]\nallow = [\"@default\"]\n").expect("valid");
        let n = load("").expect("valid");
        assert_ne!(a.digest, b.digest);
        assert_ne!(a.digest, c.digest);
        assert_ne!(a.digest, n.digest);
        let v = a
            .syscalls
            .as_ref()
            .expect("section")
            .map_value(7, Mode::Enforce, "a");
        assert_eq!(v.generation, 7);
        assert_eq!(v.flags, FLAG_CONFINED | FLAG_ASSIGNED_KILL);
        assert!(v.allows(0, &[0; 3]));
        assert!(!v.allows(nr_of("mkdir").expect("mkdir"), &[0; 3]));
        assert_eq!(&v.name[..2], b"a\0");
    }

    #[test]
    fn hot_allowed_is_hot_and_allowed() {
        let p = load("[syscalls]\nallow = [\"@default\", \"@network-io\"]\ndeny = [\"sendto\"]\n")
            .expect("valid");
        let s = p.syscalls.expect("section");
        let hot = s.hot_allowed();
        assert!(hot.contains(0));
        assert!(hot.contains(nr_of("exit_group").expect("x")));
        assert!(!hot.contains(nr_of("sendto").expect("sendto")));
        assert!(!hot.contains(nr_of("socket").expect("socket")));
        assert!(!hot.contains(nr_of("execve").expect("execve")));
        assert!(hot.contains(nr_of("recvfrom").expect("recvfrom")));
    }

    /// `policies/README.md` carries the generated group list; this keeps it
    /// in sync (`CORRAL_BLESS=1` rewrites it).
    #[test]
    fn syscall_groups_doc_is_in_sync() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/README.md");
        let text = std::fs::read_to_string(&path).expect("policies/README.md");
        let want = readme_section();
        let (Some(b), Some(e)) = (text.find(DOC_BEGIN), text.find(DOC_END)) else {
            panic!("policies/README.md has no generated syscall section (markers missing)");
        };
        let have = &text[b..e + DOC_END.len()];
        if have != want {
            if std::env::var_os("CORRAL_BLESS").is_some() {
                let new = format!("{}{}{}", &text[..b], want, &text[e + DOC_END.len()..]);
                std::fs::write(&path, new).expect("write README");
            } else {
                panic!(
                    "policies/README.md's syscall group section is out of date: run \
                     `CORRAL_BLESS=1 cargo test -p agent-user syscall_groups_doc`"
                );
            }
        }
    }
}
