//! Names of every map and program in the Corral eBPF object.
//!
//! Both halves use these constants, so a rename cannot silently break the
//! user side's `map_mut(..)`/`program_mut(..)` lookups.

/// `HashMap<u64 cgroup id, u32 identity id>`: which cgroups are agents. The
/// kernel walks a task's cgroup ancestors and the deepest tagged one wins.
pub const CGROUP_IDENTITY: &str = "CGROUP_IDENTITY";
/// `HashMap<u32 identity id, IdentityState>`: mode and active ruleset.
pub const IDENTITIES: &str = "IDENTITIES";
/// `LpmTrie<Net4Key, NetRuleList>`: IPv4 rules, keyed by ruleset + class + address.
pub const NET4_RULES: &str = "NET4_RULES";
/// `LpmTrie<Net6Key, NetRuleList>`: IPv6 rules, same layout with 16-byte addresses.
pub const NET6_RULES: &str = "NET6_RULES";
/// Ring buffer of every kernel event (`event::*`), shared by all programs.
pub const EVENTS: &str = "EVENTS";
/// `PerCpuArray<u64>[1]`: ring buffer reservations that failed (events lost).
pub const EVENT_DROPS: &str = "EVENT_DROPS";
/// `PerCpuArray<IdentityStats>[MAX_IDENTITIES]`: decisions per identity.
pub const IDENTITY_STATS: &str = "IDENTITY_STATS";

/// Program names (the Rust function names in agent-ebpf).
pub const PROG_CONNECT4: &str = "corral_connect4";
pub const PROG_CONNECT6: &str = "corral_connect6";
pub const PROG_SENDMSG4: &str = "corral_sendmsg4";
pub const PROG_SENDMSG6: &str = "corral_sendmsg6";
pub const PROG_BIND4: &str = "corral_bind4";
pub const PROG_BIND6: &str = "corral_bind6";

/// Every cgroup sock_addr program, for loaders that attach them as a set.
pub const SOCK_ADDR_PROGRAMS: [&str; 6] = [
    PROG_CONNECT4,
    PROG_CONNECT6,
    PROG_SENDMSG4,
    PROG_SENDMSG6,
    PROG_BIND4,
    PROG_BIND6,
];

/// Global overridden at load time with the daemon's tgid (never judged).
pub const GLOBAL_DAEMON_TGID: &str = "CORRAL_DAEMON_TGID";
