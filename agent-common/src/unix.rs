//! AF_UNIX rules: the `UNIX_RULES` map the cgroup `connect_unix` and
//! `sendmsg_unix` programs consult.
//!
//! Those programs are not in the aya object (aya 0.14 cannot load the unix
//! attach types); the daemon assembles them at start-up
//! (agent-user `daemon::unix`). The map is a plain hash keyed by ruleset and
//! exact address, so one lookup decides.

use crate::user_pod;

/// `sizeof(sockaddr_un.sun_path)`.
pub const UNIX_PATH_LEN: usize = 108;

/// `UNIX_RULES` key. `path` holds the address exactly as the kernel uses it,
/// NUL-padded: a pathname up to its first NUL (`/run/nscd/socket`), or an
/// abstract name as its raw bytes with the leading NUL (`\0name`, written
/// `@name` in policies). `path_len` is that length, so abstract names that
/// differ only in trailing NULs stay distinct.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnixKey {
    pub ruleset: u32,
    pub path_len: u32,
    pub path: [u8; UNIX_PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<UnixKey>() == 116);

/// `UNIX_RULES` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnixRuleValue {
    /// Daemon-assigned id of the policy rule, echoed in events.
    pub rule_id: u32,
    /// `net::ACTION_ALLOW` or `net::ACTION_DENY`.
    pub action: u32,
}
const _: () = assert!(core::mem::size_of::<UnixRuleValue>() == 8);

user_pod!(UnixKey, UnixRuleValue);
