//! Events the kernel programs write to the `EVENTS` ring buffer.
//!
//! Every event starts with `EventHeader`; `kind` says which payload follows.
//! Kinds live in ranges per family so later families slot in without
//! renumbering: 1–99 network, 100–199 files, 200–299 syscalls.

use crate::user_pod;

pub const KIND_NET: u32 = 1;

/// The operation was refused (the caller got EPERM).
pub const VERDICT_DENY: u32 = 1;
/// Audit mode: the operation was allowed but would have been refused.
pub const VERDICT_AUDIT: u32 = 2;

/// Why the decision was made.
/// A rule with action deny matched.
pub const REASON_DENY_RULE: u32 = 1;
/// No rule matched: an identity in enforce mode is default-deny.
pub const REASON_NO_RULE: u32 = 2;
/// The socket's type/protocol is one no rule class covers (e.g. raw, ICMP).
pub const REASON_UNSUPPORTED: u32 = 3;

pub const COMM_LEN: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    pub identity: u32,
    /// CLOCK_BOOTTIME nanoseconds (`bpf_ktime_get_boot_ns`).
    pub ts_ns: u64,
    /// The task's own cgroup (not the tagged ancestor).
    pub cgroup_id: u64,
    /// Thread id and thread-group id, as the kernel names them.
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
    pub verdict: u32,
    pub mode: u32,
    pub reason: u32,
    /// `PortRule::rule_id` of the deciding rule, 0 when none matched.
    pub rule_id: u32,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 64);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetEvent {
    pub hdr: EventHeader,
    pub op: u32,
    pub family: u32,
    /// IPPROTO_* of the socket.
    pub protocol: u32,
    /// Host byte order.
    pub port: u32,
    /// IPv4 in the first 4 bytes; IPv6 as 16 bytes.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<NetEvent>() == 96);

user_pod!(EventHeader, NetEvent);

#[cfg(feature = "user")]
crate::wire_enum!(
    /// User-side view of `EventHeader::kind`.
    Kind {
        Net = KIND_NET,
    }
);

#[cfg(feature = "user")]
crate::wire_enum!(
    /// User-side view of `EventHeader::verdict`.
    Verdict {
        Deny = VERDICT_DENY,
        Audit = VERDICT_AUDIT,
    }
);

#[cfg(feature = "user")]
crate::wire_enum!(
    /// User-side view of `EventHeader::reason`.
    Reason {
        DenyRule = REASON_DENY_RULE,
        NoRule = REASON_NO_RULE,
        Unsupported = REASON_UNSUPPORTED,
    }
);
