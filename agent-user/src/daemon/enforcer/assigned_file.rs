//! `<state-dir>/assigned.json`: the paths of cgroups tagged with `corral
//! assign --cgroup`.
//!
//! The pinned `CGROUP_IDENTITY` map keeps which cgroup ids are tagged with
//! which identity across restarts, but not where those cgroups are; without
//! their paths a restarted daemon cannot count their processes (so removing
//! the identity's policy would untag them instead of orphaning them), freeze
//! them, or attest lease callers in them. The kernel map stays the truth
//! for what is tagged: this file only names the cgroups, and an entry the
//! map does not have is ignored. Replaced atomically (temp file, fsync,
//! rename, fsync of the directory).

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "assigned.json";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub identity: String,
    pub path: PathBuf,
    /// The cgroup's id (inode) when it was assigned: a cgroup removed and
    /// made again under the same path is another cgroup, not tagged.
    pub cgroup_id: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    assigned: Vec<Entry>,
}

/// The recorded entries; none when the file does not exist.
pub fn load(path: &Path) -> Result<Vec<Entry>, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |why: String| StateError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    let f: File = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if f.version != VERSION {
        return Err(corrupt(format!(
            "version {} (this corral reads {VERSION})",
            f.version
        )));
    }
    Ok(f.assigned)
}

/// Replaces the file with `entries`: after a crash it holds either the old
/// or the new list.
pub fn save(path: &Path, entries: &[Entry]) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(&File {
        version: VERSION,
        assigned: entries.to_vec(),
    })
    .expect("plain data serializes");
    crate::fsutil::write_atomic(path, &bytes, 0o600)
        .map_err(|(path, source)| StateError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join(FILE_NAME);
        assert_eq!(load(&p).expect("missing is fine"), Vec::new());
        let e = vec![Entry {
            identity: "unit".into(),
            path: "/sys/fs/cgroup/system.slice/agent.service".into(),
            cgroup_id: 4242,
        }];
        save(&p, &e).expect("save");
        assert_eq!(load(&p).expect("load"), e);
        assert!(!dir.path().join(format!(".{FILE_NAME}.tmp")).exists());
    }

    #[test]
    fn corrupt_file_names_itself() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join(FILE_NAME);
        fs::write(&p, "{\"version\": 1, \"assigned\": [").expect("write");
        let e = load(&p).expect_err("corrupt").to_string();
        assert!(e.starts_with(&format!("{} is corrupt", p.display())), "{e}");
        fs::write(&p, "{\"version\": 9, \"assigned\": []}").expect("write");
        let e = load(&p).expect_err("version").to_string();
        assert!(e.contains("version 9"), "{e}");
    }
}
