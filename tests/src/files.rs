//! For the `[files]` suites: a scratch tree addressed by real path (rules
//! name real paths), TOML lists, and the probe's own real path.

use std::path::PathBuf;

use crate::probe_bin;

/// A scratch tree under a temp dir, removed on drop.
pub struct ScratchTree {
    _t: tempfile::TempDir,
    /// The tree's real path (symlinks resolved).
    pub root: PathBuf,
}

impl ScratchTree {
    /// The directories `dirs`, and the files `files` each holding "data\n".
    pub fn new(dirs: &[&str], files: &[&str]) -> ScratchTree {
        let t = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(t.path()).expect("real path");
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for f in files {
            std::fs::write(root.join(f), "data\n").expect("write");
        }
        ScratchTree { _t: t, root }
    }

    /// The real path of `rel` in the tree, as a string.
    pub fn p(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
}

/// `"a", "b"`: the inside of a TOML array of strings.
pub fn toml_list<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| format!("\"{}\"", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The probe binary's real path (what a rule must name to let it run).
pub fn probe_real() -> String {
    std::fs::canonicalize(probe_bin())
        .expect("probe")
        .display()
        .to_string()
}
