//! What this host and kernel let Corral do, found once at start-up and
//! then only read: which BPF LSM parts loaded, how the Landlock-denial
//! observer came up, and the paths no agent may touch. One value, built in
//! `daemon::main` before anything is served and handed to whoever decides
//! or reports by it (the enforcer, the lease service, the API), so "BPF LSM
//! enforces files" has one home and nobody reads it before it is known.

use super::lsm::{LsmReport, builtin::Protected};

pub struct Capabilities {
    /// What of BPF LSM loaded: `[files]` in the kernel, self-protection.
    pub lsm: LsmReport,
    /// The Landlock-denial observer: the form it attached in, or why it did
    /// not. `None`: not wanted (BPF LSM reports file denials itself) or
    /// switched off (`CORRAL_NO_FILE_OBSERVER`).
    pub file_observer: Option<Result<String, String>>,
    /// The observer when it reads Landlock's audit records (no host-wide
    /// hook): launch tokens, and the audit status to put back on stop.
    pub file_audit: Option<std::sync::Arc<super::llaudit::Setup>>,
    /// Corral's own paths, refused to every tagged process (written into
    /// each identity's file rules when BPF LSM enforces files).
    pub protected: Protected,
}

impl Capabilities {
    /// Whether BPF LSM judges file access: then `[files]` rules (and lease
    /// file grants) are compiled into `FILE_RULES`; otherwise `corral run`
    /// applies them with Landlock at launch.
    pub fn files_lsm(&self) -> bool {
        self.lsm.files_enforced()
    }

    /// A daemon with no kernel programs (the in-process API harness).
    pub fn none(why: &str) -> Capabilities {
        Capabilities {
            lsm: LsmReport::unavailable(why.to_string()),
            file_observer: None,
            file_audit: None,
            protected: Protected::default(),
        }
    }
}
