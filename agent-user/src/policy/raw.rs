//! The policy file exactly as written, before any checking.
//!
//! Every value a user can get wrong is a `Spanned` so its error can point at
//! it. Unknown keys are errors everywhere: a misspelt `alow` silently
//! allowing nothing (or a misspelt `deny` denying nothing) is the kind of
//! mistake an allowlist must not forgive.
//!
//! A new section (`[files]`, `[syscalls]`, `[leases]`, `[anomaly]`) is one
//! more `Option` field on [`RawPolicy`] plus its own struct here.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub identity: RawIdentity,
    #[serde(default)]
    pub network: Option<RawNetwork>,
    #[serde(default)]
    pub files: Option<RawFiles>,
    #[serde(default)]
    pub leases: Option<RawLeases>,
    #[serde(default)]
    pub anomaly: Option<RawAnomaly>,
    #[serde(default)]
    pub syscalls: Option<RawSyscalls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub name: Spanned<String>,
    /// A string rather than an enum so that a bad value gets our message
    /// (and our position) instead of serde's variant list.
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub bind: Vec<Spanned<String>>,
    #[serde(default)]
    pub unix: Vec<Spanned<String>>,
    /// Socket kinds beyond TCP/UDP the identity may create (`ping`, `raw`).
    #[serde(default)]
    pub sockets: Vec<Spanned<String>>,
}

/// `[files]`: see `files.rs`. `exec` is an `Option` because an absent list
/// (anything readable may be executed) differs from an empty one (nothing).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    #[serde(default)]
    pub read: Vec<Spanned<String>>,
    #[serde(default)]
    pub write: Vec<Spanned<String>>,
    #[serde(default)]
    pub exec: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
}

/// `[leases]`: see `leases.rs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLeases {
    #[serde(default)]
    pub max_ttl: Option<Spanned<String>>,
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
    #[serde(default)]
    pub approval: Vec<Spanned<String>>,
    #[serde(default)]
    pub approval_timeout: Option<Spanned<String>>,
    /// `[[leases.grant]]` tables.
    #[serde(default)]
    pub grant: Vec<RawGrant>,
    #[serde(default)]
    pub rotate: Option<RawRotate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrant {
    pub scope: Spanned<String>,
    /// Rules in the `[network] allow` grammar.
    #[serde(default)]
    pub network: Vec<Spanned<String>>,
    #[serde(default)]
    pub files: Option<RawGrantFiles>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrantFiles {
    #[serde(default)]
    pub read: Vec<Spanned<String>>,
    #[serde(default)]
    pub write: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRotate {
    pub scopes: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub ttl: Option<Spanned<String>>,
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub owner: Option<Spanned<String>>,
}

/// `[anomaly]`: see `leases.rs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnomaly {
    pub max_denials: Spanned<i64>,
    pub window: Spanned<String>,
    #[serde(default)]
    pub actions: Vec<Spanned<String>>,
}

/// `[syscalls]`: see `syscalls/mod.rs`. `assigned` is a string for our own
/// message, like `mode`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSyscalls {
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub assigned: Option<Spanned<String>>,
}
