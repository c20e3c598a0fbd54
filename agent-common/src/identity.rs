//! Identities: which cgroup belongs to which agent, and how it is judged.

use crate::user_pod;

/// Identity ids are small integers allocated by the daemon; 0 means "none".
pub const MAX_IDENTITIES: u32 = 1024;
/// How many cgroup levels the kernel walks looking for a tagged ancestor.
pub const CGROUP_MAX_DEPTH: i32 = 32;
pub const IDENTITY_NAME_LEN: usize = 64;

/// Denied operations fail (EPERM) and are reported.
pub const MODE_ENFORCE: u32 = 1;
/// Denied operations are allowed and reported as "would deny".
pub const MODE_AUDIT: u32 = 2;

/// Value of `IDENTITIES`.
///
/// `ruleset` is the generation the rule maps are keyed by; a reload writes a
/// new ruleset beside the old one and then flips this one field, so a lookup
/// sees either the old rules or the new ones, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityState {
    pub ruleset: u32,
    pub mode: u32,
    pub flags: u32,
    pub _pad: u32,
    /// NUL-padded identity name, so a daemon re-adopting pinned maps knows
    /// which id is which without any other state.
    pub name: [u8; IDENTITY_NAME_LEN],
}
const _: () = assert!(core::mem::size_of::<IdentityState>() == 80);

/// Value of `IDENTITY_STATS` (per CPU; the user side sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityStats {
    pub allowed: u64,
    pub denied: u64,
    pub audited: u64,
}
const _: () = assert!(core::mem::size_of::<IdentityStats>() == 24);

user_pod!(IdentityState, IdentityStats);

#[cfg(feature = "user")]
crate::wire_enum!(
    /// User-side view of `IdentityState::mode`.
    Mode {
        Enforce = MODE_ENFORCE,
        Audit = MODE_AUDIT,
    }
);
