//! Views of the control API that both ends read as types: the daemon
//! serialises them, `corral run` (the launcher) and the tests deserialise
//! them, so a renamed field or a new layer is a compile error on both
//! sides, not a string comparison that quietly stops matching.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::policy::FilePolicy;

/// Which layer holds an identity's `[files]` rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilesLayer {
    /// BPF LSM judges every open in the kernel; policy changes apply at once.
    Lsm,
    /// `corral run` applies them with Landlock at launch (fallback).
    Landlock,
    /// Nothing: no `[files]` section, or audit mode without BPF LSM.
    None,
}

impl FilesLayer {
    pub fn name(self) -> &'static str {
        match self {
            FilesLayer::Lsm => "lsm",
            FilesLayer::Landlock => "landlock",
            FilesLayer::None => "none",
        }
    }
}

/// What `corral run` reads of `GET /v1/policy/NAME?sections=files,syscalls`.
#[derive(Debug, Clone, Deserialize)]
pub struct LaunchPolicy {
    pub name: String,
    pub identity_id: u32,
    pub files: LaunchFiles,
    pub syscalls: LaunchSyscalls,
}

/// The `files` section: the rules, and who applies them. Read through a
/// `Value` rather than `#[serde(flatten)]`: flattening buffers the map and
/// loses serde_json's reading of `expires`' integer keys (written as
/// strings), which a lease's file grant puts there.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct LaunchFiles {
    pub enforced_by: FilesLayer,
    pub policy: FilePolicy,
    /// Present when the daemon reads Landlock's audit records.
    pub audit: Option<LaunchAudit>,
}

/// What `corral run` does for the daemon's Landlock-audit observer: join
/// `gid` (when the daemon names each refused process) before forking the
/// agent, and name the child `token` before it restricts itself
/// (`daemon::llaudit`).
#[derive(Debug, Clone, Deserialize)]
pub struct LaunchAudit {
    #[serde(default)]
    pub gid: Option<u32>,
    pub token: String,
}

impl TryFrom<serde_json::Value> for LaunchFiles {
    type Error = serde_json::Error;

    fn try_from(v: serde_json::Value) -> Result<Self, Self::Error> {
        Ok(LaunchFiles {
            enforced_by: serde_json::from_value(v["enforced_by"].clone())?,
            audit: match v.get("audit") {
                Some(a) if !a.is_null() => Some(serde_json::from_value(a.clone())?),
                _ => None,
            },
            policy: serde_json::from_value(v)?,
        })
    }
}

/// The `syscalls` section, as far as the launcher needs it.
#[derive(Debug, Clone, Deserialize)]
pub struct LaunchSyscalls {
    pub confined: bool,
    /// The pinned `SYSCALL_POLICY` map the launcher answers from.
    #[serde(default)]
    pub map: Option<PathBuf>,
    /// The daemon's report socket for what the launcher refuses.
    #[serde(default)]
    pub report: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A launch view as the daemon serves it reads into the typed view.
    #[test]
    fn the_served_launch_view_reads_as_a_type() {
        let v = serde_json::json!({
            "name": "t", "mode": "enforce", "source": "/p/t.toml", "digest": "00",
            "identity_id": 7,
            "files": { "confined": true, "rules": [], "exec_restricted": false,
                       "expires": { "2147483649": 12345 }, "enforced_by": "landlock",
                       "note": "fallback" },
            "protected_paths": [], "protected_paths_enforced": false,
            "syscalls": { "confined": true, "map": "/sys/fs/bpf/corral/maps/SYSCALL_POLICY",
                          "report": "/var/lib/corral/report.sock", "allow": [] },
        });
        let p: LaunchPolicy = serde_json::from_value(v).expect("reads");
        assert_eq!(p.identity_id, 7);
        assert_eq!(p.files.enforced_by, FilesLayer::Landlock);
        assert!(p.files.policy.confined);
        // A lease's file grant: its rule id's end, keyed by a number.
        assert_eq!(p.files.policy.expires.get(&2_147_483_649), Some(&12345));
        assert!(p.syscalls.confined);
        assert_eq!(
            p.syscalls.map.as_deref(),
            Some(std::path::Path::new(
                "/sys/fs/bpf/corral/maps/SYSCALL_POLICY"
            ))
        );
    }
}
