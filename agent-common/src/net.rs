//! Network rule maps.
//!
//! A rule set is a pair of LPM tries (IPv4, IPv6) keyed by
//! `ruleset | class | address`. The value of a prefix holds every port rule
//! that can apply to an address under it — its own and those inherited from
//! shorter prefixes, which the compiler pushes down — sorted most specific
//! first. So one LPM lookup plus a scan of at most `MAX_PORT_RULES` entries
//! decides, whatever the number of rules.

use crate::user_pod;

pub const MAX_PORT_RULES: usize = 16;

/// Rule classes (the middle part of every key). Connects and sends of a
/// stream socket are TCP, of a UDP datagram socket UDP; binds are separate
/// so that `bind = [...]` cannot widen connects.
pub const CLASS_TCP: u32 = 1;
pub const CLASS_UDP: u32 = 2;
pub const CLASS_BIND_TCP: u32 = 3;
pub const CLASS_BIND_UDP: u32 = 4;

pub const ACTION_ALLOW: u32 = 1;
pub const ACTION_DENY: u32 = 2;

/// Bits of the key before the address: ruleset (32) + class (32).
pub const KEY_FIXED_BITS: u32 = 64;

/// `NET4_RULES` key data (the LPM prefix length is carried by aya's `Key`).
/// Fields are stored big-endian so that the trie's bitwise prefix order is
/// ruleset, then class, then address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Net4Key {
    pub ruleset_be: u32,
    pub class_be: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<Net4Key>() == 12);

/// `NET6_RULES` key data.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Net6Key {
    pub ruleset_be: u32,
    pub class_be: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Net6Key>() == 24);

/// One port rule. `expires_ns` (CLOCK_BOOTTIME, 0 = never) lets a temporary
/// grant stop working on time even when the daemon is not running.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    pub port_lo: u16,
    pub port_hi: u16,
    pub action: u32,
    /// Daemon-assigned id of the policy rule this came from, echoed in events.
    pub rule_id: u32,
    pub _pad: u32,
    pub expires_ns: u64,
}
const _: () = assert!(core::mem::size_of::<PortRule>() == 24);

/// LPM value: the candidate port rules for a prefix, most specific first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetRuleList {
    pub count: u32,
    pub _pad: u32,
    pub rules: [PortRule; MAX_PORT_RULES],
}
const _: () = assert!(core::mem::size_of::<NetRuleList>() == 8 + 24 * MAX_PORT_RULES);

user_pod!(Net4Key, Net6Key, PortRule, NetRuleList);

/// `NetEvent::op`: which hook judged.
pub const OP_CONNECT: u32 = 1;
pub const OP_SENDMSG: u32 = 2;
pub const OP_BIND: u32 = 3;
/// `cgroup/sock_create`: an inet socket of a kind no rule class judges.
pub const OP_CREATE: u32 = 4;

/// Socket types and protocols the `sock_create` program tells apart.
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const SOCK_RAW: u32 = 3;
pub const IPPROTO_ICMP: u32 = 1;
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;
pub const IPPROTO_ICMPV6: u32 = 58;
pub const IPPROTO_MPTCP: u32 = 262;

/// `IdentityState::flags`: `[network] sockets` names ICMP echo ("ping")
/// sockets, which the identity may then create (their sends are not judged
/// by address: no hook sees them).
pub const IDENTITY_FLAG_NET_PING: u32 = 1 << 1;
/// `IdentityState::flags`: `[network] sockets` names raw IP sockets.
pub const IDENTITY_FLAG_NET_RAW: u32 = 1 << 2;
/// `IdentityState::flags`: `[network] sockets` names AF_PACKET sockets
/// (refused by BPF LSM otherwise).
pub const IDENTITY_FLAG_NET_PACKET: u32 = 1 << 3;
/// `IdentityState::flags`: `[network] sockets` names AF_VSOCK sockets.
pub const IDENTITY_FLAG_NET_VSOCK: u32 = 1 << 4;

/// Address families as the kernel numbers them.
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

#[cfg(feature = "user")]
crate::wire_enum!(
    /// User-side view of `NetEvent::op`.
    NetOp {
        Connect = OP_CONNECT,
        Sendmsg = OP_SENDMSG,
        Bind = OP_BIND,
        Create = OP_CREATE,
    }
);

#[cfg(feature = "user")]
crate::wire_enum!(
    /// User-side view of a rule class.
    Class {
        Tcp = CLASS_TCP,
        Udp = CLASS_UDP,
        BindTcp = CLASS_BIND_TCP,
        BindUdp = CLASS_BIND_UDP,
    }
);
