//! Names inside the daemon's state dir that more than one part of the
//! daemon must agree on: the lease service writes these, and self-protection
//! (`lsm::builtin`) refuses agents any access to them. A leaf, so the two
//! need not import each other.

/// The lease service's ed25519 signing key.
pub const KEY_FILE: &str = "lease-signing-key.pem";
/// Where lease tokens are written for agents to read.
pub const TOKENS_DIR: &str = "tokens";
