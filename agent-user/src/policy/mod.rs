//! Policies: one TOML file per identity, checked and compiled into the
//! tables the kernel judges by.
//!
//! - `raw`: the file as serde sees it (every user value keeps its span);
//! - `rule`: the grammar of rule strings, names and unix paths;
//! - `load`: files and directories to [`PolicySet`], collecting every error;
//! - `compile`: rules to LPM entries, and [`decide`], the kernel's decision
//!   replayed in userspace;
//! - `error`: file:line:col errors.
//!
//! `policies/README.md` is the user-facing description of the format.

mod compile;
#[cfg(test)]
mod compile_tests;
pub mod compiled;
mod error;
pub mod files;
mod leases;
mod load;
mod raw;
mod rule;
pub mod suggest;
pub mod syscalls;
#[cfg(test)]
mod tests;
pub(crate) mod text;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use agent_common::identity::Mode;
use agent_common::net::{CLASS_BIND_TCP, CLASS_BIND_UDP, CLASS_TCP, CLASS_UDP};

pub use compile::{LpmEntry, NetTables, compile_network, decide};
#[cfg(test)]
pub use error::PolicyError;
pub use error::PolicyErrors;
/// The rule deciding one access bit (the LSM compiler's tests check their
/// tables against it).
#[cfg(test)]
pub use files::deciding_rule;
pub use files::{
    ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, FilePolicy, FileRule, decide_file,
    is_dir as files_is_dir,
};
pub use leases::{AnomalyAction, AnomalyPolicy, LeasePolicy, LiveGrant, TokenOwner, with_grants};
pub use load::parse_str;
pub use load::{
    HostExpired, PolicySource, host_names, load_dir, load_dir_sources, load_dir_with, load_file,
    load_sources,
};

/// Every identity of a policy directory, by name.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicySet {
    pub dir: PathBuf,
    pub identities: BTreeMap<String, IdentityPolicy>,
    /// Each identity's network tables, as compiled for its digest: the
    /// compile stage (`compiled`) takes them instead of compiling again.
    #[serde(skip)]
    pub network: BTreeMap<String, NetTables>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IdentityPolicy {
    pub name: String,
    #[serde(serialize_with = "serialize_mode")]
    pub mode: Mode,
    pub source: PathBuf,
    pub network: NetworkPolicy,
    /// `[files]`: confined when the section is written (see `files/`).
    pub files: FilePolicy,
    /// `[leases]`: scopes this identity may hold and what they grant.
    pub leases: Option<LeasePolicy>,
    /// `[anomaly]`: the response to a burst of denials.
    pub anomaly: Option<AnomalyPolicy>,
    /// `[syscalls]`: `None` when the section is absent (no syscall
    /// confinement at all).
    pub syscalls: Option<syscalls::SyscallsPolicy>,
    /// Hash of everything that reaches the kernel (name, mode, compiled
    /// tables, unix paths), so a reload can skip identities that did not
    /// change. Stable across runs and builds (FNV-1a over a fixed encoding).
    pub digest: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetworkPolicy {
    pub rules: Vec<NetRule>,
    pub unix: Vec<UnixRule>,
    /// `[network] sockets`: inet socket kinds besides TCP/UDP/MPTCP that the
    /// identity may create. Every other kind is refused at `socket()`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<SocketKind>,
    /// `CLOCK_BOOTTIME` expiry (ns) of rules that end on their own, by rule
    /// id: the grants of live leases, added by the daemon (never written in
    /// a file). Rules not listed never expire.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub expires: BTreeMap<u32, u64>,
}

#[cfg(test)]
impl NetworkPolicy {
    /// The rule behind a `rule_id` from a kernel event (tests check ids).
    pub fn rule_by_id(&self, id: u32) -> Option<&NetRule> {
        self.rules.iter().find(|r| r.id == id)
    }
}

/// An inet socket kind no address rule can judge, allowed by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SocketKind {
    /// ICMP echo sockets (`SOCK_DGRAM`, `IPPROTO_ICMP`/`IPPROTO_ICMPV6`).
    Ping,
    /// Raw IP sockets (`SOCK_RAW`, any protocol; CAP_NET_RAW).
    Raw,
    /// AF_PACKET sockets (CAP_NET_RAW); refused by BPF LSM otherwise.
    Packet,
    /// AF_VSOCK sockets; refused by BPF LSM otherwise.
    Vsock,
}

impl SocketKind {
    pub const ALL: [(&'static str, SocketKind); 4] = [
        ("ping", SocketKind::Ping),
        ("raw", SocketKind::Raw),
        ("packet", SocketKind::Packet),
        ("vsock", SocketKind::Vsock),
    ];

    /// The `IdentityState::flags` bit the kernel checks.
    pub fn flag(self) -> u32 {
        match self {
            SocketKind::Ping => agent_common::net::IDENTITY_FLAG_NET_PING,
            SocketKind::Raw => agent_common::net::IDENTITY_FLAG_NET_RAW,
            SocketKind::Packet => agent_common::net::IDENTITY_FLAG_NET_PACKET,
            SocketKind::Vsock => agent_common::net::IDENTITY_FLAG_NET_VSOCK,
        }
    }
}

impl NetworkPolicy {
    /// `IdentityState::flags` bits of `sockets`.
    pub fn socket_flags(&self) -> u32 {
        self.sockets.iter().fold(0, |f, k| f | k.flag())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Connect,
    Bind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Proto {
    Tcp,
    Udp,
}

/// One network rule of one address family, as the kernel will see it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NetRule {
    /// 1-based id of the written rule, unique within the identity; it goes
    /// into `PortRule::rule_id` and comes back in events. A rule written as
    /// `*` or as a host name becomes several `NetRule`s with the same id.
    pub id: u32,
    pub action: Action,
    pub direction: Direction,
    pub proto: Proto,
    /// Network address (host bits zero). Never IPv4-mapped IPv6.
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub port_lo: u16,
    pub port_hi: u16,
    /// The host name this address was resolved from, if any.
    pub host: Option<String>,
    /// The rule exactly as written.
    pub text: String,
    pub origin: Origin,
}

impl NetRule {
    /// The kernel rule class (`agent_common::net::CLASS_*`).
    pub fn class(&self) -> u32 {
        class_of(self.direction, self.proto)
    }

    /// One-line description for logs, events and `corral policy explain`,
    /// e.g. `deny tcp://10.20.9.0/24:* (support-agent.toml:9:12)`.
    pub fn describe(&self) -> String {
        let verb = match (self.direction, self.action) {
            (Direction::Connect, Action::Allow) => "allow",
            (Direction::Connect, Action::Deny) => "deny",
            (Direction::Bind, Action::Allow) => "bind",
            (Direction::Bind, Action::Deny) => "deny bind",
        };
        let resolved = match &self.host {
            Some(_) => format!(" [{}]", self.addr),
            None => String::new(),
        };
        format!("{verb} {}{resolved} ({})", self.text, self.origin.short())
    }
}

pub(crate) fn class_of(direction: Direction, proto: Proto) -> u32 {
    match (direction, proto) {
        (Direction::Connect, Proto::Tcp) => CLASS_TCP,
        (Direction::Connect, Proto::Udp) => CLASS_UDP,
        (Direction::Bind, Proto::Tcp) => CLASS_BIND_TCP,
        (Direction::Bind, Proto::Udp) => CLASS_BIND_UDP,
    }
}

/// A unix socket path the identity may connect to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UnixRule {
    /// Shares the numbering of `NetRule::id` (unix rules come after all
    /// network rules), so an id names one rule of the identity.
    pub id: u32,
    pub path: String,
    pub origin: Origin,
}

impl UnixRule {
    /// e.g. `allow unix:/run/nscd/socket (agent.toml:7:10)`.
    pub fn describe(&self) -> String {
        format!("allow unix:{} ({})", self.path, self.origin.short())
    }
}

/// Where a rule was written (1-based line and column of its first character).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl Origin {
    /// `file.toml:line:col`, the file by name only (as rules describe
    /// themselves in events and `explain`).
    pub fn short(&self) -> String {
        let name = self.file.file_name().unwrap_or(self.file.as_os_str());
        format!("{}:{}:{}", name.to_string_lossy(), self.line, self.col)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// The mode as written in policy files.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    }
}

fn serialize_mode<S: serde::Serializer>(mode: &Mode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode_name(*mode))
}

/// What the sock_addr programs judge a connect's destination as, when it
/// is not what was written: the unspecified address means "this host", and
/// judged as written a broad rule would let it reach loopback services a
/// narrower rule denies, so `judge4`/`judge6` (agent-ebpf/src/net.rs) judge
/// it as loopback and rewrite it. (Binds are local addresses and keep
/// theirs.)
pub fn judged_destination(ip: IpAddr) -> Option<IpAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(a) if a.is_unspecified() => Some(Ipv6Addr::LOCALHOST.into()),
        IpAddr::V6(a) if a.to_ipv4_mapped() == Some(Ipv4Addr::UNSPECIFIED) => {
            Some(Ipv4Addr::LOCALHOST.to_ipv6_mapped().into())
        }
        _ => None,
    }
}
