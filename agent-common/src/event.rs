//! Events the kernel programs write to the `EVENTS` ring buffer.
//!
//! Every event starts with `EventHeader`; `kind` says which payload follows.
//! Kinds live in ranges per family so later families slot in without
//! renumbering: 1–99 network, 100–199 files, 200–299 syscalls.

use crate::user_pod;

pub const KIND_NET: u32 = 1;
/// `UnixEvent`: an AF_UNIX connect or sendmsg to an address no rule allows.
pub const KIND_UNIX: u32 = 2;
/// `file::FileEvent`: an open or exec of a tagged process was refused
/// (by the BPF LSM program, or by Landlock as the syscall observer saw it).
pub const KIND_FILE: u32 = 100;
/// `file::FileOpEvent`: a hard link, rename or mount refused by the BPF LSM
/// programs.
pub const KIND_FILE_OP: u32 = 101;
/// `file::ProtectEvent`: self-protection refused a tagged process `bpf()`, a
/// signal or ptrace.
pub const KIND_PROTECT: u32 = 102;
/// `syscall::SyscallEvent`: a syscall refused (seccomp, in the kernel or
/// through the launcher), killed for, or audited.
pub const KIND_SYSCALL: u32 = 200;

/// The operation was refused (the caller got EPERM).
pub const VERDICT_DENY: u32 = 1;
/// Audit mode: the operation was allowed but would have been refused.
pub const VERDICT_AUDIT: u32 = 2;
/// The process was killed for the operation (which itself still ran):
/// `[syscalls] assigned = "kill"`.
pub const VERDICT_KILL: u32 = 3;

/// Why the decision was made.
/// A rule with action deny matched.
pub const REASON_DENY_RULE: u32 = 1;
/// No rule matched: an identity in enforce mode is default-deny.
pub const REASON_NO_RULE: u32 = 2;
/// The socket's type/protocol is one no rule class covers (e.g. raw, ICMP).
pub const REASON_UNSUPPORTED: u32 = 3;
/// Corral's self-protection: the operation would let an agent tamper with
/// Corral or leave its identity (bpf(), signals/ptrace across identities,
/// cgroupfs writes, bpffs, mounts). Enforced in audit mode too.
pub const REASON_PROTECTED: u32 = 4;
/// The kernel could not establish what was asked for (a path longer than its
/// buffer, or one it cannot resolve): refused, fail closed.
pub const REASON_FAIL_CLOSED: u32 = 5;

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
    /// SOCK_* type of the socket (`net::SOCK_STREAM`, ...).
    pub sock_type: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<NetEvent>() == 104);

/// An AF_UNIX connect()/sendmsg() judged by the cgroup unix hooks.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnixEvent {
    pub hdr: EventHeader,
    /// `net::OP_CONNECT` or `net::OP_SENDMSG`.
    pub op: u32,
    /// Meaningful bytes of `path` (see `unix::UnixKey`).
    pub path_len: u32,
    /// A pathname, or an abstract name with its leading NUL; NUL-padded.
    pub path: [u8; crate::unix::UNIX_PATH_LEN],
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<UnixEvent>() == 184);

user_pod!(EventHeader, NetEvent, UnixEvent);

#[cfg(feature = "user")]
crate::wire_enum!(
    /// User-side view of `EventHeader::kind`.
    Kind {
        Net = KIND_NET,
        Unix = KIND_UNIX,
        File = KIND_FILE,
        FileOp = KIND_FILE_OP,
        Protect = KIND_PROTECT,
        Syscall = KIND_SYSCALL,
    }
);

#[cfg(feature = "user")]
crate::wire_enum!(
    /// User-side view of `EventHeader::verdict`.
    Verdict {
        Deny = VERDICT_DENY,
        Audit = VERDICT_AUDIT,
        Kill = VERDICT_KILL,
    }
);

#[cfg(feature = "user")]
crate::wire_enum!(
    /// User-side view of `EventHeader::reason`.
    Reason {
        DenyRule = REASON_DENY_RULE,
        NoRule = REASON_NO_RULE,
        Unsupported = REASON_UNSUPPORTED,
        Protected = REASON_PROTECTED,
        FailClosed = REASON_FAIL_CLOSED,
    }
);
