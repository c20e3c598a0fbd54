//! Leases as records, and their persistence in the state dir.
//!
//! The whole store is one JSON file, replaced atomically (write a temp file,
//! fsync, rename, fsync the directory), so a crash leaves either the old or
//! the new store. A store that cannot be read is an error for the daemon:
//! it refuses to start rather than forget revocations, suspensions and
//! frozen identities (see `Leases::open`).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub const STORE_VERSION: u32 = 1;
/// Ended leases are kept this long for `corral lease show`, then dropped.
const KEEP_ENDED_MS: u64 = 24 * 3600 * 1000;
const KEEP_ENDED_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseState {
    /// Waiting for `corral lease approve` (or deny, or the timeout).
    Pending,
    Active,
    /// Approval denied or timed out.
    Denied,
    Revoked,
    Expired,
}

impl LeaseState {
    pub fn name(self) -> &'static str {
        match self {
            LeaseState::Pending => "pending",
            LeaseState::Active => "active",
            LeaseState::Denied => "denied",
            LeaseState::Revoked => "revoked",
            LeaseState::Expired => "expired",
        }
    }

    pub fn ended(self) -> bool {
        !matches!(self, LeaseState::Pending | LeaseState::Active)
    }
}

/// Who asked for a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Requester {
    /// Through the control socket (`corral lease issue`).
    Operator,
    /// A process of the identity, attested through the agent socket.
    Agent {
        pid: u32,
        uid: u32,
        exe: Option<String>,
        cgroup: String,
    },
    /// The daemon's own token rotation.
    Rotation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub identity: String,
    /// The identity's cgroup id when the lease was requested.
    pub cgroup_id: u64,
    pub scopes: Vec<String>,
    pub state: LeaseState,
    pub requested_by: Requester,
    /// Unix milliseconds.
    pub requested_ms: u64,
    /// The lifetime asked for, after the `max_ttl` cap, seconds.
    pub ttl_s: u64,
    pub ttl_capped: bool,
    /// Scopes of this lease that needed an approval.
    #[serde(default)]
    pub approval_scopes: Vec<String>,
    /// Pending requests are denied at this time (unix ms).
    pub approval_deadline_ms: Option<u64>,
    /// Who approved or denied, when someone did.
    pub decided_by: Option<String>,
    /// When the lease became active (unix ms).
    pub issued_ms: Option<u64>,
    /// When it ends unless renewed or revoked (unix ms, whole seconds).
    pub expires_ms: Option<u64>,
    /// `expires_ms` on this boot's `CLOCK_BOOTTIME` (ns): what the kernel
    /// compares. Mapped once per activation or renewal (and again after a
    /// reboot), so re-applies do not churn.
    #[serde(default)]
    pub expires_boot_ns: u64,
    /// Renewals never go past this (issue + max_ttl, unix ms).
    pub max_expires_ms: Option<u64>,
    pub renewals: u32,
    /// When it ended (revoked, expired, denied), unix ms, and why.
    pub ended_ms: Option<u64>,
    pub end_reason: Option<String>,
    /// Denials of the identity while the lease was active.
    #[serde(default)]
    pub denials: u64,
    /// SHA-256 (hex) of the secret handed to the agent that requested the
    /// lease, and to it only: what makes a request "its own" (its token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_sha256: Option<String>,
    /// Leases with approval scopes: the end the approver agreed to (unix
    /// ms). An agent's renewal stops there; only the operator (who
    /// approves) extends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_end_ms: Option<u64>,
}

/// Lease-related state of one identity.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdentityState {
    /// Set by an anomaly response or `corral lease revoke --identity`: the
    /// identity's processes may not request leases and rotation pauses,
    /// until `corral thaw`.
    #[serde(default)]
    pub suspended: bool,
    /// Its cgroups were frozen by an anomaly response.
    #[serde(default)]
    pub frozen: bool,
    #[serde(default)]
    pub anomalies: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreFile {
    pub version: u32,
    /// The kernel boot the lease expiries were mapped for.
    pub boot_id: String,
    pub leases: Vec<Lease>,
    #[serde(default)]
    pub identities: BTreeMap<String, IdentityState>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
}

impl StoreFile {
    pub fn load(path: &Path) -> Result<StoreFile, StoreError> {
        let text = fs::read(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let s: StoreFile = serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        if s.version != STORE_VERSION {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                why: format!("version {} (this corral reads {STORE_VERSION})", s.version),
            });
        }
        Ok(s)
    }

    /// Drops leases that ended long ago.
    pub fn prune(&mut self, now_ms: u64) {
        self.leases.retain(|l| {
            l.ended_ms
                .is_none_or(|e| now_ms.saturating_sub(e) < KEEP_ENDED_MS)
        });
        let ended = self.leases.iter().filter(|l| l.state.ended()).count();
        if ended > KEEP_ENDED_MAX {
            let mut drop = ended - KEEP_ENDED_MAX;
            self.leases.retain(|l| {
                if drop > 0 && l.state.ended() {
                    drop -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

/// Atomically replaces `path` with `bytes` (mode 0600).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    crate::fsutil::write_atomic(path, bytes, 0o600)
        .map_err(|(path, source)| StoreError::Io { path, source })
}

pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_corrupt_detection() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("leases.json");
        let s = StoreFile {
            version: STORE_VERSION,
            ..Default::default()
        };
        write_atomic(&p, &serde_json::to_vec(&s).unwrap()).expect("write");
        assert!(StoreFile::load(&p).is_ok());
        fs::write(&p, b"{\"version\":1,\"leases\":[{").unwrap();
        assert!(matches!(
            StoreFile::load(&p),
            Err(StoreError::Corrupt { .. })
        ));
        fs::remove_file(&p).unwrap();
        assert!(matches!(StoreFile::load(&p), Err(StoreError::Io { .. })));
    }
}
