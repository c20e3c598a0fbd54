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
}
