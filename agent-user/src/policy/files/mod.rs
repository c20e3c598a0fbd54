//! The `[files]` section: which paths an identity may read, write and
//! execute, checked at load and decided by [`decide_file`].
//!
//! ```toml
//! [files]
//! read  = ["/usr/", "/etc/ssl/", "/etc/hostname"]  # trailing "/" = beneath; else exact
//! write = ["/srv/tickets/", "/tmp/"]               # write implies read
//! exec  = ["/usr/bin/"]    # optional; absent = whatever may be read may be executed
//! deny  = ["/srv/tickets/vip/", "/etc/shadow"]
//! ```
//!
//! The model every enforcement layer implements (BPF LSM, Landlock) and
//! `decide_file` replays in userspace:
//! - A rule names a real path (after symlinks are resolved, as the kernel
//!   sees an opened file). `"/a/b/"` covers `/a/b` itself and everything
//!   beneath it; `"/a/b"` covers exactly that path.
//! - Each access bit (read, write, exec) is decided separately by the most
//!   specific rule that speaks about that bit: a longer path beats a shorter
//!   one, an exact rule beats a beneath rule of the same path, and at equal
//!   specificity deny wins. Deny rules speak about every bit. No rule: denied.
//! - `write` grants read too; `exec` grants read too (the kernel opens a
//!   binary for reading to execute it); without an `exec` list, every
//!   `read`/`write` rule also grants exec.
//!
//! Rule ids continue the identity's numbering after its network and unix
//! rules, in the order read, write, exec, deny, so one id names one rule.

pub mod compile;
#[cfg(test)]
mod tests;

use std::path::Path;

use agent_common::file::FILE_KEY_PATH_LEN;

pub use agent_common::file::{ACCESS_ALL, ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE};

use super::error::{PolicyError, Source};
use super::raw::RawFiles;
use super::{Action, Origin};

/// Longest path the kernel accepts, terminating NUL included.
pub const PATH_MAX: usize = 4096;
/// Longest file name (one path component).
pub const NAME_MAX: usize = 255;

/// The `[files]` rules of one identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilePolicy {
    /// A `[files]` section was written: file access is confined to its
    /// rules (default deny). Without one, no layer restricts files and
    /// [`decide_file`] is not consulted.
    pub confined: bool,
    /// In id order (read, write, exec, deny; each in file order).
    pub rules: Vec<FileRule>,
    /// An `exec` list was written: only its paths may be executed. When
    /// false, `read` and `write` rules carry `ACCESS_EXEC` too.
    pub exec_restricted: bool,
    /// `CLOCK_BOOTTIME` expiry (ns) of rules that end on their own, by rule
    /// id: the file grants of live leases, added by the daemon (never
    /// written in a file). Only the BPF LSM layer can end a rule on time,
    /// so Landlock never grants these.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub expires: std::collections::BTreeMap<u32, u64>,
}

/// Which list a rule was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileList {
    Read,
    Write,
    Exec,
    Deny,
}

impl FileList {
    /// The access bits a rule of this list speaks about: `write` grants
    /// reading too, and without an `exec` list what may be read or written
    /// may also be executed; a deny refuses everything.
    pub fn access(self, exec_restricted: bool) -> u32 {
        let implied_exec = if exec_restricted { 0 } else { ACCESS_EXEC };
        match self {
            FileList::Read => ACCESS_READ | implied_exec,
            FileList::Write => ACCESS_READ | ACCESS_WRITE | implied_exec,
            FileList::Exec => ACCESS_READ | ACCESS_EXEC,
            FileList::Deny => ACCESS_ALL,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FileList::Read => "read",
            FileList::Write => "write",
            FileList::Exec => "exec",
            FileList::Deny => "deny",
        }
    }
}

/// One written file rule, as every layer enforces it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRule {
    /// Unique within the identity (shared numbering with network rules).
    pub id: u32,
    /// Absolute and normal. Ends with `/` exactly when `beneath` (and `/`
    /// alone is the beneath rule of the root), so the bytes are the prefix a
    /// path-keyed table matches; the directory itself is the same bytes
    /// without the final `/`.
    pub path: String,
    pub beneath: bool,
    /// `ACCESS_*` bits this rule speaks about: granted for allow rules,
    /// refused for deny rules (always `ACCESS_ALL`).
    pub access: u32,
    pub action: Action,
    pub list: FileList,
    /// The rule exactly as written.
    pub text: String,
    pub origin: Origin,
}

impl FileRule {
    /// The path without the trailing `/` of a beneath rule (`/` for the root).
    pub fn base(&self) -> &str {
        base_of(&self.path)
    }

    /// Whether this rule covers `path` (absolute, normal, no trailing `/`).
    pub fn matches(&self, path: &str, is_dir: bool) -> bool {
        if !self.beneath {
            return path == self.path;
        }
        if self.path == "/" {
            return true;
        }
        // "/a/b/" covers "/a/b/..." and the directory "/a/b" itself, but
        // never the sibling "/a/bx".
        path.starts_with(self.path.as_str()) || (is_dir && path == self.base())
    }

    /// Specificity: longer paths first, then exact before beneath.
    fn rank(&self) -> (usize, bool) {
        (self.base().len(), !self.beneath)
    }

    /// e.g. `deny /srv/tickets/vip/ (support-agent.toml:31:5)`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} ({})",
            self.list.name(),
            self.text,
            self.origin.short()
        )
    }
}

fn base_of(path: &str) -> &str {
    if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    }
}

/// The userspace twin of the kernel's file decision: may `access`
/// (`ACCESS_*` bits) be had on `path` (absolute and normal; a trailing `/`
/// is ignored)? `is_dir` says whether the path is a directory (a beneath
/// rule covers its own directory).
///
/// `None`: some requested bit has no rule (denied by default).
/// `Some((Deny, id))`: the rule that refuses (the first refused bit in the
/// order write, exec, read). `Some((Allow, id))`: every bit is granted; `id`
/// decided the first bit in that order.
pub fn decide_file(
    policy: &FilePolicy,
    path: &str,
    is_dir: bool,
    access: u32,
) -> Option<(Action, u32)> {
    let path = base_of(path);
    let mut allowed_by = None;
    for bit in [ACCESS_WRITE, ACCESS_EXEC, ACCESS_READ] {
        if access & bit == 0 {
            continue;
        }
        let r = deciding_rule(policy, path, is_dir, bit)?;
        if r.action == Action::Deny {
            return Some((Action::Deny, r.id));
        }
        allowed_by.get_or_insert(r.id);
    }
    allowed_by.map(|id| (Action::Allow, id))
}

/// The most specific rule speaking about `bit` that covers `path`; at equal
/// specificity deny wins, then the lower id.
pub fn deciding_rule<'a>(
    policy: &'a FilePolicy,
    path: &str,
    is_dir: bool,
    bit: u32,
) -> Option<&'a FileRule> {
    policy
        .rules
        .iter()
        .filter(|r| r.access & bit != 0 && r.matches(path, is_dir))
        .max_by(|a, b| {
            (a.rank(), a.action == Action::Deny, std::cmp::Reverse(a.id)).cmp(&(
                b.rank(),
                b.action == Action::Deny,
                std::cmp::Reverse(b.id),
            ))
        })
}

/// Checks and numbers the `[files]` rules; ids start after `last_id`.
/// Returns the policy and the last id used.
pub(crate) fn build_files(
    src: &Source<'_>,
    raw: Option<&RawFiles>,
    last_id: u32,
    errors: &mut Vec<PolicyError>,
) -> (FilePolicy, u32) {
    let Some(raw) = raw else {
        return (FilePolicy::default(), last_id);
    };
    let exec_restricted = raw.exec.is_some();
    let no_exec = Vec::new();
    let lists = [
        (&raw.read, FileList::Read),
        (&raw.write, FileList::Write),
        (raw.exec.as_ref().unwrap_or(&no_exec), FileList::Exec),
        (&raw.deny, FileList::Deny),
    ]
    .map(|(l, kind)| (l, kind, kind.access(exec_restricted)));
    let mut files = FilePolicy {
        confined: true,
        exec_restricted,
        ..FilePolicy::default()
    };
    let mut id = last_id;
    for (list, kind, access) in lists {
        for text in list {
            id += 1;
            match check_file_path(text.get_ref()) {
                Ok(beneath) => files.rules.push(FileRule {
                    id,
                    path: text.get_ref().clone(),
                    beneath,
                    access,
                    action: if kind == FileList::Deny {
                        Action::Deny
                    } else {
                        Action::Allow
                    },
                    list: kind,
                    text: text.get_ref().clone(),
                    origin: src.origin(text),
                }),
                Err((at, message)) => errors.push(src.error_at(
                    src.offset_in_string(&text.span(), text.get_ref(), at),
                    message,
                )),
            }
        }
    }
    (files, id)
}

/// Checks one rule path; `Ok(beneath)`, or the byte offset of the problem
/// in the value and a message.
pub(crate) fn check_file_path(path: &str) -> Result<bool, (usize, String)> {
    if !path.starts_with('/') {
        return Err((
            0,
            format!(
                "file path `{path}` must be absolute (start with /); a trailing / means \
                 everything beneath a directory"
            ),
        ));
    }
    if let Some(i) = path.find('\0') {
        return Err((i, "file path contains a NUL byte".into()));
    }
    if path.len() >= PATH_MAX {
        let at = boundary_before(path, PATH_MAX - 1);
        return Err((
            at,
            format!(
                "file path is {} bytes, over the {} a path can have (PATH_MAX {PATH_MAX} with \
                 its NUL)",
                path.len(),
                PATH_MAX - 1
            ),
        ));
    }
    let beneath = path.ends_with('/');
    let body = &path[1..path.len() - usize::from(beneath && path.len() > 1)];
    if path == "/" {
        return Ok(true);
    }
    let mut at = 1;
    for c in body.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err((
                0,
                format!(
                    "file path `{path}` is not normalised (no `//`, `/./` or `..`); write `{}`",
                    super::text::normalise(path)
                ),
            ));
        }
        if c.len() > NAME_MAX {
            return Err((
                at,
                format!(
                    "a component of `{}…` is {} bytes, over the {NAME_MAX} a file name can have",
                    &path[..at],
                    c.len()
                ),
            ));
        }
        at += c.len() + 1;
    }
    if path.len() > FILE_KEY_PATH_LEN {
        let at = boundary_before(path, FILE_KEY_PATH_LEN);
        return Err((
            at,
            format!(
                "file rule is {} bytes; the kernel's path table holds rules of at most \
                 {FILE_KEY_PATH_LEN} (a BPF LPM-trie key is 256 bytes); write a shorter \
                 ancestor directory",
                path.len()
            ),
        ));
    }
    Ok(beneath)
}

/// The last char boundary at or before byte `limit` (where an over-long
/// path's error points).
fn boundary_before(path: &str, limit: usize) -> usize {
    (0..=limit.min(path.len()))
        .rev()
        .find(|&i| path.is_char_boundary(i))
        .unwrap_or(0)
}

/// Folds the file rules into an identity's digest (FNV-1a continued from
/// `h`, same encoding rules as `compile::digest`): a reload that changes only
/// `[files]` is a change.
pub(crate) fn fold_digest(mut h: u64, files: &FilePolicy) -> u64 {
    let mut raw = |b: &[u8]| {
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    raw(&(files.rules.len() as u64).to_le_bytes());
    raw(&[u8::from(files.confined), u8::from(files.exec_restricted)]);
    for r in &files.rules {
        raw(&r.id.to_le_bytes());
        raw(&r.access.to_le_bytes());
        raw(&[u8::from(r.action == Action::Deny), u8::from(r.beneath)]);
        raw(&(r.path.len() as u64).to_le_bytes());
        raw(r.path.as_bytes());
    }
    h
}

/// Whether `path` names a directory right now (for callers of
/// [`decide_file`] that judge real paths, e.g. `corral policy explain`).
pub fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}
