//! Syscall allowlists: the `SYSCALL_POLICY` map value and the decision every
//! layer makes from it.
//!
//! Three layers judge a syscall of a tagged process, all from one value per
//! identity that the daemon replaces atomically (one hash map update):
//! - the seccomp filter `corral run` installs before exec (compiled once, at
//!   launch): wrong ABI and `deny` entries get EPERM in the kernel, hot
//!   allowed syscalls pass, everything else is a user notification;
//! - the launcher answers each notification from this map (pinned, read
//!   with `BPF_OBJ_GET`), so a policy change reaches running processes;
//! - the `sys_enter`/`sys_exit` observers report every refusal, and for
//!   tagged processes without the filter (`corral assign`) audit or, when
//!   the policy says `assigned = "kill"`, kill (after the fact).
//!
//! [`SyscallPolicy::allows`] is the one decision, shared by the launcher and
//! the kernel programs, so they cannot disagree.

use crate::user_pod;

/// Bitmap words: 512 bits, syscall numbers 0..`PSEUDO_BASE` plus the
/// pseudo-syscalls below. x86_64 numbers end below 470 (Linux 6.18).
pub const BITMAP_WORDS: usize = 8;
pub const BITMAP_BITS: u32 = (BITMAP_WORDS * 64) as u32;

/// Bits above every real syscall number that gate socket families the
/// network rules cannot see. `socket` itself must be allowed as well.
pub const PSEUDO_BASE: u32 = 504;
/// `socket:packet`: AF_PACKET (raw link-layer frames).
pub const PSEUDO_SOCKET_PACKET: u32 = 504;
/// `socket:netlink`: AF_NETLINK other than NETLINK_ROUTE.
pub const PSEUDO_SOCKET_NETLINK: u32 = 505;
/// `socket:vsock`: AF_VSOCK (host/guest sockets).
pub const PSEUDO_SOCKET_VSOCK: u32 = 506;
/// `socket:raw`: SOCK_RAW of AF_INET/AF_INET6 (raw IP, ICMP).
pub const PSEUDO_SOCKET_RAW: u32 = 507;
/// `socket:other`: any family but AF_UNIX, AF_INET, AF_INET6, AF_NETLINK,
/// AF_PACKET and AF_VSOCK (AF_ALG, AF_BLUETOOTH, AF_XDP, ...).
pub const PSEUDO_SOCKET_OTHER: u32 = 508;
/// `socket:unix`: AF_UNIX sockets without `socket` (which allows them too).
/// In `@default` because glibc's name service client (nscd, systemd-userdb)
/// opens one on every user lookup; where an AF_UNIX socket may connect is
/// still judged by `[network]`'s unix rules.
pub const PSEUDO_SOCKET_UNIX: u32 = 509;

/// x86_64 numbers the decision looks at.
pub const NR_SOCKET: u32 = 41;
/// Judged like `socket` (its family is an argument too: AF_UNIX, or AF_TIPC).
pub const NR_SOCKETPAIR: u32 = 53;
pub const NR_SECCOMP: u32 = 317;
pub const NR_IOCTL: u32 = 16;
/// `SyscallEvent::nr` flag: the number is of the i386 table (`int 0x80`
/// from a 64-bit process), not the x86_64 one.
pub const NR_IA32_FLAG: u32 = 0x8000_0000;
/// The x32 ABI's bit in a syscall number.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets into `struct task_struct` (from the running kernel's BTF) the
/// syscall observers read; a zero field means unknown. Global
/// `maps::GLOBAL_TASK_OFFSETS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `seccomp.mode`: whether the task runs under a filter.
    pub seccomp_mode: u32,
    /// `real_parent` (a pointer): walked to find a `corral run` launcher.
    pub real_parent: u32,
    /// `tgid`.
    pub tgid: u32,
    /// `thread_info.status` (x86: `TS_COMPAT` marks an i386 syscall).
    pub ti_status: u32,
    /// `start_boottime` (u64 ns): tells a launcher from a later process
    /// given its pid.
    pub start_boottime: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TaskOffsets>() == 24);

/// Value of `maps::SC_LAUNCHERS` (key: the launcher's tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LauncherEntry {
    /// The identity it launched: a launched process later assigned to
    /// another identity is that identity's assigned process.
    pub identity: u32,
    /// The `SyscallPolicy::generation` its agent's filter was compiled
    /// from: the daemon needs the host-wide observers for this agent only
    /// if a hot syscall that policy allowed has been dropped since.
    pub generation: u32,
    /// The launcher's start time in clock ticks since boot (USER_HZ, as
    /// `/proc/PID/stat` field 22 gives it).
    pub start_ticks: u64,
}
const _: () = assert!(core::mem::size_of::<LauncherEntry>() == 16);
/// Nanoseconds per USER_HZ tick (USER_HZ is 100 on every architecture
/// the kernel's `/proc` reports in).
pub const NS_PER_USER_TICK: u64 = 10_000_000;
crate::user_pod!(TaskOffsets, LauncherEntry);

/// x86 `TS_COMPAT`: the current syscall came through an i386 entry point.
pub const TS_COMPAT: u32 = 0x0002;
/// How many parents up the observers look for a launcher.
pub const LAUNCHER_MAX_DEPTH: u32 = 16;
/// ioctls that push input into a terminal: `corral run` refuses them in
/// the kernel for every agent (seccomp, whatever its policy).
pub const TIOCSTI: u32 = 0x5412;
pub const TIOCLINUX: u32 = 0x541c;

pub const AF_UNIX: u32 = 1;
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const AF_NETLINK: u32 = 16;
pub const AF_PACKET: u32 = 17;
pub const AF_VSOCK: u32 = 40;
pub const SOCK_RAW: u32 = 3;
/// Obsolete `AF_INET` type the kernel turns into an AF_PACKET socket.
pub const SOCK_PACKET: u32 = 10;
/// `socket()` type bits that are the type (the rest are SOCK_NONBLOCK/CLOEXEC).
pub const SOCK_TYPE_MASK: u32 = 0xf;
pub const NETLINK_ROUTE: u32 = 0;
/// `seccomp()` flag that creates a notification listener. An agent holding
/// one would receive the notifications of its own filter first (the newest
/// filter wins ties), so Corral's filter refuses it in the kernel.
pub const SECCOMP_FILTER_FLAG_NEW_LISTENER: u64 = 1 << 3;

/// `SyscallPolicy::flags`: the identity has a `[syscalls]` section. Without
/// it nothing is confined: notifications (from processes launched while it
/// had one) are allowed and the observers report nothing but refusals.
pub const FLAG_CONFINED: u32 = 1;
/// `assigned = "kill"`: a tagged process without Corral's seccomp filter is
/// killed (SIGKILL from `sys_enter`) on a syscall the policy does not allow.
/// The call itself still runs: this is after the fact, not prevention.
pub const FLAG_ASSIGNED_KILL: u32 = 2;

/// Value of `SYSCALL_POLICY` (key: `u32` identity id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallPolicy {
    /// The identity's ruleset when this was written (grows with every apply
    /// of a changed policy); audit de-duplication restarts when it changes.
    pub generation: u32,
    /// `identity::MODE_ENFORCE` or `MODE_AUDIT`.
    pub mode: u32,
    /// `FLAG_*`.
    pub flags: u32,
    pub _pad: u32,
    /// Allowed syscall numbers and pseudo-syscalls, `deny` already removed.
    pub allow: [u64; BITMAP_WORDS],
    /// The `deny` entries (what the launch-time filter refuses in the kernel).
    pub deny: [u64; BITMAP_WORDS],
    /// NUL-padded identity name: a launcher checks that the id it holds still
    /// names its identity (ids are reused after `corral unload`).
    pub name: [u8; crate::identity::IDENTITY_NAME_LEN],
}
const _: () = assert!(core::mem::size_of::<SyscallPolicy>() == 16 + 128 + 64);

impl SyscallPolicy {
    pub const fn empty() -> Self {
        SyscallPolicy {
            generation: 0,
            mode: crate::identity::MODE_ENFORCE,
            flags: 0,
            _pad: 0,
            allow: [0; BITMAP_WORDS],
            deny: [0; BITMAP_WORDS],
            name: [0; crate::identity::IDENTITY_NAME_LEN],
        }
    }

    #[inline(always)]
    pub fn confined(&self) -> bool {
        self.flags & FLAG_CONFINED != 0
    }

    #[inline(always)]
    pub fn allowed_bit(&self, nr: u32) -> bool {
        bit(&self.allow, nr)
    }

    #[inline(always)]
    pub fn denied_bit(&self, nr: u32) -> bool {
        bit(&self.deny, nr)
    }

    /// Whether the policy allows syscall `nr` with these first three
    /// arguments. Arguments are only looked at for `socket` (the family,
    /// type and protocol are values, never pointers: no TOCTOU). An
    /// unconfined identity allows everything.
    #[inline(always)]
    pub fn allows(&self, nr: u32, args: &[u64; 3]) -> bool {
        if !self.confined() {
            return true;
        }
        if nr == NR_SOCKET {
            return self.socket_allowed(args[0] as u32, args[1] as u32, args[2] as u32);
        }
        if nr == NR_SOCKETPAIR {
            // Its own bit, and what `socket` of the same family needs (so
            // `socketpair(AF_TIPC, ...)` is not a way around `socket:other`).
            return self.allowed_bit(nr)
                && self.socket_allowed(args[0] as u32, args[1] as u32, args[2] as u32);
        }
        self.allowed_bit(nr)
    }

    /// `socket` plus the pseudo-syscall its family needs, if any; or
    /// `socket:unix` alone for AF_UNIX. A `deny` of `socket` refuses every
    /// family, and a `deny` of `socket:unix` refuses AF_UNIX even where
    /// `socket` is allowed (as the launch-time filter does in the kernel).
    #[inline(always)]
    pub fn socket_allowed(&self, family: u32, ty: u32, protocol: u32) -> bool {
        if self.denied_bit(NR_SOCKET) {
            return false;
        }
        if family == AF_UNIX {
            if self.denied_bit(PSEUDO_SOCKET_UNIX) {
                return false;
            }
            if self.allowed_bit(PSEUDO_SOCKET_UNIX) {
                return true;
            }
        }
        if !self.allowed_bit(NR_SOCKET) {
            return false;
        }
        match socket_pseudo(family, ty, protocol) {
            0 => true,
            p => self.allowed_bit(p),
        }
    }
}

/// Which pseudo-syscall gates `socket(family, ty, protocol)`; 0 for none.
///
/// Judged by the socket the kernel will create, not by the arguments as
/// written: `__sock_create` turns `AF_INET` + `SOCK_PACKET` into an
/// AF_PACKET socket (the only family/type rewrite it makes; the flag bits
/// above `SOCK_TYPE_MASK` are stripped first).
#[inline(always)]
pub fn socket_pseudo(family: u32, ty: u32, protocol: u32) -> u32 {
    match family {
        AF_UNIX => 0,
        AF_INET if ty & SOCK_TYPE_MASK == SOCK_PACKET => PSEUDO_SOCKET_PACKET,
        AF_INET | AF_INET6 => {
            if ty & SOCK_TYPE_MASK == SOCK_RAW {
                PSEUDO_SOCKET_RAW
            } else {
                0
            }
        }
        AF_NETLINK => {
            if protocol == NETLINK_ROUTE {
                0
            } else {
                PSEUDO_SOCKET_NETLINK
            }
        }
        AF_PACKET => PSEUDO_SOCKET_PACKET,
        AF_VSOCK => PSEUDO_SOCKET_VSOCK,
        _ => PSEUDO_SOCKET_OTHER,
    }
}

#[inline(always)]
pub fn bit(words: &[u64; BITMAP_WORDS], nr: u32) -> bool {
    if nr >= BITMAP_BITS {
        return false;
    }
    let w = ((nr >> 6) as usize) & (BITMAP_WORDS - 1);
    words[w] & (1u64 << (nr & 63)) != 0
}

#[inline(always)]
pub fn set_bit(words: &mut [u64; BITMAP_WORDS], nr: u32) {
    if nr < BITMAP_BITS {
        words[(nr >> 6) as usize] |= 1u64 << (nr & 63);
    }
}

#[inline(always)]
pub fn clear_bit(words: &mut [u64; BITMAP_WORDS], nr: u32) {
    if nr < BITMAP_BITS {
        words[(nr >> 6) as usize] &= !(1u64 << (nr & 63));
    }
}

/// `SyscallEvent::layer`: who refused (or saw) the call.
/// The seccomp filter itself returned EPERM (a `deny` entry, a 32-bit or
/// x32 syscall, a listener request), or let a call through that the policy
/// no longer allows (audit: the filter was compiled at launch).
pub const LAYER_KERNEL: u32 = 1;
/// The launcher answered the notification: EPERM, or nobody answered
/// (the launcher is gone: ENOSYS, closed).
pub const LAYER_NOTIFY: u32 = 2;
/// `assigned = "kill"`: the process was sent SIGKILL from `sys_enter`.
pub const LAYER_KILL: u32 = 3;
/// A tagged process without the filter made a syscall the policy does not
/// allow; the call ran (audit).
pub const LAYER_OBSERVED: u32 = 4;

/// A syscall refused, killed for, or audited.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallEvent {
    pub hdr: crate::event::EventHeader,
    /// x86_64 syscall number (as the task passed it).
    pub nr: u32,
    /// `LAYER_*`.
    pub layer: u32,
    /// Positive errno the caller got (1 EPERM, 38 ENOSYS); 0 when the call ran.
    pub errno: u32,
    pub _pad: u32,
    /// The first three arguments, as values (only meaningful for calls such
    /// as `socket` whose arguments are not pointers).
    pub args: [u64; 3],
}
const _: () = assert!(core::mem::size_of::<SyscallEvent>() == 64 + 16 + 24);

/// `LauncherReport::magic`: "CRL1".
pub const LAUNCHER_REPORT_MAGIC: u32 = 0x314c_5243;

/// One datagram from a `corral run` launcher to the daemon's report socket:
/// a syscall the launcher refused or audited (the same record the observers
/// write to the ring buffer), and how many reports it dropped before this
/// one (its queue was full while no daemon listened).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LauncherReport {
    pub magic: u32,
    pub lost: u32,
    pub event: SyscallEvent,
}
const _: () = assert!(core::mem::size_of::<LauncherReport>() == 8 + 104);

user_pod!(SyscallPolicy, SyscallEvent, LauncherReport);

#[cfg(feature = "user")]
crate::wire_enum!(
    /// User-side view of `SyscallEvent::layer`.
    Layer {
        Kernel = LAYER_KERNEL,
        Notify = LAYER_NOTIFY,
        Kill = LAYER_KILL,
        Observed = LAYER_OBSERVED,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[u32]) -> SyscallPolicy {
        let mut p = SyscallPolicy::empty();
        p.flags = FLAG_CONFINED;
        for &n in allowed {
            set_bit(&mut p.allow, n);
        }
        p
    }

    #[test]
    fn bits_cover_the_whole_bitmap_and_nothing_beyond() {
        let p = policy(&[0, 63, 64, 469, 511]);
        for n in [0, 63, 64, 469, 511] {
            assert!(p.allowed_bit(n), "{n}");
        }
        assert!(!p.allowed_bit(1));
        assert!(!p.allowed_bit(512));
        assert!(!p.allowed_bit(u32::MAX));
    }

    #[test]
    fn socket_families_need_their_pseudo_syscall() {
        let p = policy(&[NR_SOCKET]);
        assert!(p.allows(NR_SOCKET, &[AF_INET as u64, 1, 0]));
        assert!(p.allows(NR_SOCKET, &[AF_UNIX as u64, 1 | 0x80000, 0]));
        assert!(p.allows(NR_SOCKET, &[AF_NETLINK as u64, SOCK_RAW as u64, 0]));
        assert!(!p.allows(NR_SOCKET, &[AF_NETLINK as u64, SOCK_RAW as u64, 9]));
        assert!(!p.allows(NR_SOCKET, &[AF_PACKET as u64, SOCK_RAW as u64, 0]));
        // The kernel makes an AF_PACKET socket of AF_INET + SOCK_PACKET.
        assert!(!p.allows(NR_SOCKET, &[AF_INET as u64, SOCK_PACKET as u64, 0x300]));
        assert!(!p.allows(
            NR_SOCKET,
            &[AF_INET as u64, SOCK_PACKET as u64 | 0x80000, 0]
        ));
        assert!(!p.allows(NR_SOCKET, &[AF_INET6 as u64, SOCK_RAW as u64 | 0x800, 58]));
        assert!(!p.allows(NR_SOCKET, &[AF_VSOCK as u64, 1, 0]));
        assert!(!p.allows(NR_SOCKET, &[38, 5, 0]), "AF_ALG");
        let p = policy(&[NR_SOCKET, PSEUDO_SOCKET_PACKET]);
        assert!(p.allows(NR_SOCKET, &[AF_PACKET as u64, SOCK_RAW as u64, 0]));
        assert!(p.allows(NR_SOCKET, &[AF_INET as u64, SOCK_PACKET as u64, 0x300]));
        let p = policy(&[PSEUDO_SOCKET_PACKET]);
        assert!(!p.allows(NR_SOCKET, &[AF_PACKET as u64, SOCK_RAW as u64, 0]));
        let p = policy(&[PSEUDO_SOCKET_UNIX]);
        assert!(p.allows(NR_SOCKET, &[AF_UNIX as u64, 1 | 0x80000, 0]));
        assert!(!p.allows(NR_SOCKET, &[AF_INET as u64, 1, 0]));
        assert!(!p.allows(NR_SOCKET, &[AF_NETLINK as u64, SOCK_RAW as u64, 0]));
    }

    #[test]
    fn socket_denies_and_socketpair_follow_the_family() {
        // deny = ["socket"] with socket:unix still allowed (from @default).
        let mut p = policy(&[PSEUDO_SOCKET_UNIX, NR_SOCKETPAIR]);
        set_bit(&mut p.deny, NR_SOCKET);
        assert!(!p.allows(NR_SOCKET, &[AF_UNIX as u64, 1, 0]));
        // deny = ["socket:unix"] with socket allowed.
        let mut p = policy(&[NR_SOCKET]);
        set_bit(&mut p.deny, PSEUDO_SOCKET_UNIX);
        assert!(!p.allows(NR_SOCKET, &[AF_UNIX as u64, 1, 0]));
        assert!(p.allows(NR_SOCKET, &[AF_INET as u64, 1, 0]));
        // socketpair: AF_UNIX with socket:unix; AF_TIPC needs socket:other.
        let p = policy(&[PSEUDO_SOCKET_UNIX, NR_SOCKETPAIR]);
        assert!(p.allows(NR_SOCKETPAIR, &[AF_UNIX as u64, 1, 0]));
        assert!(!p.allows(NR_SOCKETPAIR, &[30, 4, 0]), "AF_TIPC");
        let p = policy(&[PSEUDO_SOCKET_UNIX]);
        assert!(
            !p.allows(NR_SOCKETPAIR, &[AF_UNIX as u64, 1, 0]),
            "its own bit"
        );
        let p = policy(&[NR_SOCKET, NR_SOCKETPAIR, PSEUDO_SOCKET_OTHER]);
        assert!(p.allows(NR_SOCKETPAIR, &[30, 4, 0]));
    }

    #[test]
    fn unconfined_allows_everything() {
        let p = SyscallPolicy::empty();
        assert!(p.allows(101, &[0; 3]));
    }
}
