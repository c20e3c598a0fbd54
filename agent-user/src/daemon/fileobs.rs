//! File events: making a refused open readable, and replaying the policy
//! for the Landlock layer, whose observer only sees an errno.

use std::path::{Path, PathBuf};

use agent_common::file::{
    DIRFD_CWD, FILE_REASON_OBSERVED, FILE_REASON_OBSERVED_CREATE, FileEvent, LAYER_LANDLOCK,
};

use super::{
    capabilities::Capabilities,
    mechanism::{Mechanism, MechanismState},
};
use crate::{
    event::{self, Event, EventReason},
    policy::{Action, IdentityPolicy, decide_file},
    views::FilesLayer,
};

/// Fills `ev.file` and, for Landlock events, `reason` and `rule` from the
/// identity's current policy (`reason` is `deny-rule`, `no-rule`, or
/// `not-by-policy` when the policy allows the path: then file permissions
/// refused it, or a Landlock limit did — a file created after launch in an
/// expanded directory, a rule path missing at launch).
pub fn complete(ev: &mut Event, x: &FileEvent, policy: Option<&IdentityPolicy>) {
    let raw = event::file_path_str(&x.path, x.path_len);
    let path = if x.layer == LAYER_LANDLOCK {
        absolute(&raw, x.hdr.tgid, x.dirfd).unwrap_or(raw)
    } else {
        raw
    };
    // Rules name real paths: a symlink is judged by its target.
    let real = (x.layer == LAYER_LANDLOCK && path.starts_with('/'))
        .then(|| std::fs::canonicalize(&path).ok())
        .flatten()
        .map(|p| p.display().to_string())
        .filter(|r| r != path.trim_end_matches('/'));
    let create = x.reason == FILE_REASON_OBSERVED_CREATE;
    if x.layer == LAYER_LANDLOCK && (x.reason == FILE_REASON_OBSERVED || create) {
        let judged = real.as_deref().unwrap_or(&path);
        let decided = policy
            .filter(|p| p.files.confined && judged.starts_with('/'))
            .map(|p| {
                let is_dir = crate::policy::files_is_dir(Path::new(judged));
                (p, decide_file(&p.files, judged, is_dir, x.access))
            });
        let (reason, rule) = match decided {
            Some((p, Some((Action::Deny, id)))) => (EventReason::DenyRule, describe(p, id)),
            Some((_, None)) => (EventReason::NoRule, None),
            _ => (EventReason::NotByPolicy, None),
        };
        ev.reason = Some(reason);
        ev.rule = rule;
    }
    let mut info = event::file_info(x, path);
    if create {
        info.op = Some("create".into());
        info.note = Some(
            "creating in this directory: Landlock's audit record names the directory, not the new name"
                .into(),
        );
    }
    if let Some(r) = real
        && info.note.is_none()
    {
        info.note = Some(format!("resolves to {r}"));
    }
    ev.file = Some(info);
}

fn describe(p: &IdentityPolicy, id: u32) -> Option<String> {
    p.files
        .rules
        .iter()
        .find(|r| r.id == id)
        .map(|r| r.describe())
}

/// A relative path as the process meant it, from its working directory or
/// the directory fd it passed (read from procfs now: racy if the process
/// changed directory since, and then left relative).
fn absolute(path: &str, tgid: u32, dirfd: i32) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let base: PathBuf = if dirfd == DIRFD_CWD {
        std::fs::read_link(format!("/proc/{tgid}/cwd")).ok()?
    } else if dirfd >= 0 {
        std::fs::read_link(format!("/proc/{tgid}/fd/{dirfd}")).ok()?
    } else {
        return None;
    };
    let joined = base.join(path);
    // Lexically: `a/../b` as the kernel would walk it (symlinks aside).
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Some(out.display().to_string())
}

/// Which layer enforces an identity's `[files]` rules, and what that means:
/// (`lsm` | `landlock` | `none`, note).
pub fn files_layer(
    files: &crate::policy::FilePolicy,
    mode: agent_common::identity::Mode,
    files_lsm: bool,
) -> (FilesLayer, &'static str) {
    use agent_common::identity::Mode;
    if !files.confined {
        return (
            FilesLayer::None,
            "no [files] section: file access is not confined",
        );
    }
    if files_lsm {
        return (
            FilesLayer::Lsm,
            "BPF LSM file_open: judged in the kernel on every open; policy changes apply at once",
        );
    }
    if mode == Mode::Audit {
        return (
            FilesLayer::None,
            "audit mode without BPF LSM: Landlock can only refuse, so file rules are neither \
             enforced nor reported",
        );
    }
    (
        FilesLayer::Landlock,
        "fallback (BPF LSM unavailable): applied by `corral run` at launch with Landlock, fixed \
         for the life of the process tree (policy changes reach new launches only); processes \
         added with `corral assign` are not file-confined",
    )
}

/// The `files` section of `GET /v1/policy/NAME` (what `corral run` reads)
/// and of `policy show`.
pub fn files_json(p: &IdentityPolicy, files_lsm: bool) -> serde_json::Value {
    let (layer, note) = files_layer(&p.files, p.mode, files_lsm);
    let mut v = serde_json::to_value(&p.files).unwrap_or_default();
    v["enforced_by"] = serde_json::json!(layer);
    v["note"] = note.into();
    v
}

/// The `files` line of `corral status` / the daemon log.
pub fn mechanism(caps: &Capabilities) -> Mechanism {
    let abi = crate::sandbox::landlock::abi();
    let observer = match &caps.file_observer {
        Some(Ok(form)) => {
            format!("denials reach `corral tail` through {form}")
        }
        Some(Err(e)) => format!("denials are NOT reported: the observer did not attach ({e})"),
        None => "denial observer not loaded".to_string(),
    };
    if caps.files_lsm() {
        Mechanism {
            name: "files",
            state: MechanismState::Enforcing,
            detail: "lsm: BPF LSM file_open judges every open of a tagged process".into(),
        }
    } else if abi >= 1 {
        Mechanism {
            name: "files",
            state: MechanismState::Fallback,
            detail: format!(
                "landlock (fallback, applied by corral run at launch; Landlock ABI {abi}): BPF \
                 LSM is unavailable, so [files] rules bind only processes started with `corral \
                 run`, fixed at launch; `corral assign`ed processes are not file-confined; \
                 {observer}"
            ),
        }
    } else {
        Mechanism {
            name: "files",
            state: MechanismState::Unavailable,
            detail: "NOT ENFORCED: neither BPF LSM nor Landlock is available; `corral run` \
                     refuses identities with [files] rules"
                .into(),
        }
    }
}

/// `corral assign` cannot give a running process Landlock: without BPF LSM
/// its `[files]` rules do not bind it. Said loudly in the daemon log (the
/// CLI says it too).
pub fn warn_assign(identity: &str, policy: Option<&IdentityPolicy>, what: &str, files_lsm: bool) {
    let Some(p) = policy else { return };
    if p.files.confined && !files_lsm {
        tracing::warn!(
            identity,
            "{what} assigned WITHOUT file confinement: BPF LSM is unavailable and Landlock can \
             only be applied at launch; its [files] rules do not bind it (network rules do). \
             Start agents with `corral run` for file rules"
        );
    }
}
