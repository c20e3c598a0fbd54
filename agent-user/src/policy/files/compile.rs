//! `[files]` rules → `FILE_RULES` LPM entries.
//!
//! Semantics (the kernel replays exactly this, see [`decide`]):
//! - a path ending in `/` covers the directory and everything beneath it
//!   (the kernel looks a directory up with a `/` appended, so `/srv/kb/`
//!   covers `/srv/kb` and never `/srv/kbx`); any other path is exactly that
//!   path (file or directory), and beats a `/`-rule of the same path;
//! - for each access (read, write, exec) separately, the most specific rule
//!   that speaks about that access decides; at equal specificity deny wins;
//! - the access bits of a rule are already effective (`policy::FileRule`:
//!   write grants read, exec lists are optional, deny rules speak about every
//!   bit);
//! - no rule: denied (an identity with a `[files]` section is default-deny).
//!
//! `policy::decide_file` is the reference; a test checks this compiler
//! against it.
//!
//! Every ancestor directory of every rule becomes an entry too, carrying the
//! decisions it inherits. That makes inheritance a parent lookup, lets the
//! kernel's single longest-prefix match decide, and marks directories with
//! rules beneath them (`FILE_VALUE_RULES_BELOW`: such a directory cannot be
//! renamed away from its rules).

use std::collections::{BTreeMap, HashMap, HashSet};

use agent_common::{
    file::{
        ACCESS_EXEC, ACCESS_IDX_EXEC, ACCESS_IDX_READ, ACCESS_IDX_WRITE, ACCESS_READ, ACCESS_WRITE,
        FILE_KEY_PATH_LEN, FILE_VALUE_EXACT, FILE_VALUE_RULES_BELOW, FileDecision, FileRuleValue,
    },
    net::{ACTION_ALLOW, ACTION_DENY},
};

/// One validated rule as the compiler needs it (an adapter from the policy
/// model's `FileRule`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleIn {
    /// Absolute and normalised; a trailing `/` means "beneath".
    pub path: String,
    /// `ACCESS_*` bits the rule speaks about (granted, or refused if deny).
    pub access: u32,
    pub deny: bool,
    /// Rule id, echoed in events.
    pub id: u32,
    /// `CLOCK_BOOTTIME` end of a lease grant; 0 for a written rule.
    pub expires_ns: u64,
}

/// One `FILE_RULES` entry (the ruleset is added when it is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub path: Vec<u8>,
    pub value: FileRuleValue,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error(
        "file rule `{0}` is longer than the {FILE_KEY_PATH_LEN} bytes the kernel's path trie holds"
    )]
    TooLong(String),
    #[error("file rule `{0}` is not an absolute path")]
    NotAbsolute(String),
}

const IDX: [(u32, usize); 3] = [
    (ACCESS_READ, ACCESS_IDX_READ),
    (ACCESS_WRITE, ACCESS_IDX_WRITE),
    (ACCESS_EXEC, ACCESS_IDX_EXEC),
];

/// The parent directory entry of a path: `/a/b/` → `/a/`, `/a/b` → `/a/`,
/// `/` → none.
fn parent_dir(p: &str) -> Option<&str> {
    let trimmed = p.strip_suffix('/').unwrap_or(p);
    let i = trimmed.rfind('/')?;
    Some(&p[..=i])
}

/// Compiles `rules`. Decisions that come from a lease grant carry its end
/// and, as their fallback, the decision of the written rules alone for the
/// same slot: once the grant has ended the kernel decides as if it had
/// never been added, daemon or no daemon. (Where grants of different ends
/// overlap, the fallback is still the written policy: an earlier end can
/// only narrow access, never widen it.)
pub fn compile(rules: &[RuleIn]) -> Result<Vec<FileEntry>, CompileError> {
    let mut out = compile_all(rules)?;
    if rules.iter().any(|r| r.expires_ns != 0) {
        let written: Vec<RuleIn> = rules
            .iter()
            .filter(|r| r.expires_ns == 0)
            .cloned()
            .collect();
        let base = compile_all(&written)?;
        let by_path: HashMap<&[u8], &FileRuleValue> =
            base.iter().map(|e| (e.path.as_slice(), &e.value)).collect();
        let lookup = |key: &[u8], is_dir: bool, idx: usize| {
            replay(|p| by_path.get(p).copied(), key, is_dir, idx)
        };
        for e in &mut out {
            let is_dir = e.path.ends_with(b"/");
            // Any path this entry is only a prefix of.
            let mut below = e.path.clone();
            below.push(1);
            for i in 0..3 {
                if e.value.exact[i].expires_ns != 0 {
                    let d = lookup(&e.path, is_dir, i);
                    e.value.exact[i].fallback_action = d.action;
                    e.value.exact[i].fallback_rule_id = d.rule_id;
                }
                if e.value.beneath[i].expires_ns != 0 {
                    let d = lookup(&below, false, i);
                    e.value.beneath[i].fallback_action = d.action;
                    e.value.beneath[i].fallback_rule_id = d.rule_id;
                }
            }
        }
    }
    Ok(out)
}

/// The kernel's lookup and decision (agent-ebpf `lsm::files::decide`) for
/// one access slot: the longest entry that is a prefix of `key`, its own
/// decision when `key` is its path (or, for a directory, an exact entry's
/// path plus `/`), else what lies beneath it.
fn replay<'a>(
    find: impl Fn(&[u8]) -> Option<&'a FileRuleValue>,
    key: &[u8],
    is_dir: bool,
    idx: usize,
) -> FileDecision {
    let len = key.len() as u32;
    let key = &key[..key.len().min(FILE_KEY_PATH_LEN)];
    for n in (1..=key.len()).rev() {
        if let Some(v) = find(&key[..n]) {
            let own =
                v.len == len || (is_dir && v.flags & FILE_VALUE_EXACT != 0 && v.len + 1 == len);
            return if own { v.exact[idx] } else { v.beneath[idx] };
        }
    }
    FileDecision::default()
}

fn compile_all(rules: &[RuleIn]) -> Result<Vec<FileEntry>, CompileError> {
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    let at = decisions_at(rules)?;
    let (all_dirs, below) = directories(&at);
    let eff = effective(&all_dirs, &at);
    let mut out = Vec::with_capacity(all_dirs.len() + at.len());
    for d in &all_dirs {
        let e = eff[d];
        // The directory itself: an exact rule of the same path beats it.
        let mut own = e;
        if d.len() > 1
            && let Some(x) = at.get(&d[..d.len() - 1])
        {
            for i in 0..3 {
                if x[i].action != 0 {
                    own[i] = x[i];
                }
            }
        }
        out.push(FileEntry {
            path: d.as_bytes().to_vec(),
            value: FileRuleValue {
                flags: if below.contains(d) {
                    FILE_VALUE_RULES_BELOW
                } else {
                    0
                },
                len: d.len() as u32,
                exact: own,
                beneath: e,
            },
        });
    }
    for (p, own) in &at {
        if p.ends_with('/') {
            continue;
        }
        let inherited = parent_dir(p)
            .and_then(|d| eff.get(d).copied())
            .unwrap_or_default();
        let mut exact = inherited;
        for i in 0..3 {
            if own[i].action != 0 {
                exact[i] = own[i];
            }
        }
        out.push(FileEntry {
            path: p.as_bytes().to_vec(),
            value: FileRuleValue {
                flags: FILE_VALUE_EXACT,
                len: p.len() as u32,
                exact,
                beneath: inherited,
            },
        });
    }
    Ok(out)
}

type Decisions = [FileDecision; 3];

/// The decisions written at each rule path.
fn decisions_at(rules: &[RuleIn]) -> Result<BTreeMap<&str, Decisions>, CompileError> {
    let mut at: BTreeMap<&str, Decisions> = BTreeMap::new();
    for r in rules {
        if !r.path.starts_with('/') {
            return Err(CompileError::NotAbsolute(r.path.clone()));
        }
        if r.path.len() > FILE_KEY_PATH_LEN {
            return Err(CompileError::TooLong(r.path.clone()));
        }
        let d = at.entry(r.path.as_str()).or_default();
        let (bits, action) = if r.deny {
            (r.access, ACTION_DENY)
        } else {
            (r.access, ACTION_ALLOW)
        };
        for (bit, idx) in IDX {
            if bits & bit == 0 {
                continue;
            }
            let cur = &mut d[idx];
            // Deny wins at equal specificity; otherwise the first rule,
            // except that of equal rules the longer-lived one decides (a
            // written rule outlives every grant).
            let longer = action == cur.action
                && cur.expires_ns != 0
                && (r.expires_ns == 0 || r.expires_ns > cur.expires_ns);
            if cur.action == 0 || (action == ACTION_DENY && cur.action == ACTION_ALLOW) || longer {
                *cur = FileDecision {
                    action,
                    rule_id: r.id,
                    expires_ns: r.expires_ns,
                    ..FileDecision::default()
                };
            }
        }
    }
    Ok(at)
}

/// Every directory entry (each rule's ancestors, and directory rules),
/// parents first; and the directories with rules beneath them.
fn directories(at: &BTreeMap<&str, Decisions>) -> (Vec<String>, HashSet<String>) {
    // Every ancestor directory of every rule is an entry.
    let mut dirs: HashSet<String> = HashSet::new();
    let mut below: HashSet<String> = HashSet::new();
    for p in at.keys() {
        let mut cur: &str = p;
        while let Some(parent) = parent_dir(cur) {
            below.insert(parent.to_string());
            if !dirs.insert(parent.to_string()) {
                break;
            }
            cur = parent;
        }
    }
    // Effective decisions of directory entries, parents first (a parent is
    // always shorter than its child).
    let mut all_dirs: Vec<String> = dirs
        .into_iter()
        .chain(
            at.keys()
                .filter(|p| p.ends_with('/'))
                .map(|p| p.to_string()),
        )
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    all_dirs.sort_by_key(|d| d.len());
    (all_dirs, below)
}

/// Effective decisions of directory entries, parents first (a parent is
/// always shorter than its child).
fn effective(
    all_dirs: &[String],
    at: &BTreeMap<&str, Decisions>,
) -> std::collections::HashMap<String, Decisions> {
    let mut eff: std::collections::HashMap<String, [FileDecision; 3]> =
        std::collections::HashMap::with_capacity(all_dirs.len());
    for d in all_dirs {
        let inherited = parent_dir(d)
            .and_then(|p| eff.get(p).copied())
            .unwrap_or_default();
        let own = at.get(d.as_str()).copied().unwrap_or_default();
        let mut e = inherited;
        for i in 0..3 {
            if own[i].action != 0 {
                e[i] = own[i];
            }
        }
        eff.insert(d.clone(), e);
    }
    eff
}

/// The kernel's decision replayed at `now_ns` (CLOCK_BOOTTIME): (action,
/// rule_id) for `access` (one `ACCESS_*` bit) on `path`; a directory is
/// looked up with a trailing `/` (the root is `/`).
#[cfg(test)]
pub fn decide_at(entries: &[FileEntry], path: &str, access: u32, now_ns: u64) -> (u32, u32) {
    let idx = IDX
        .iter()
        .find(|(b, _)| *b == access)
        .map_or(0, |(_, i)| *i);
    let find = |p: &[u8]| entries.iter().find(|e| e.path == p).map(|e| &e.value);
    let is_dir = path.ends_with('/');
    replay(find, path.as_bytes(), is_dir, idx).at(now_ns)
}

#[cfg(test)]
pub fn decide(entries: &[FileEntry], path: &str, access: u32) -> (u32, u32) {
    decide_at(entries, path, access, 0)
}

/// The compiler's input from a policy: `None` when the identity has no
/// `[files]` section (its opens are not judged).
pub fn rules_of(files: &crate::policy::FilePolicy) -> Option<Vec<RuleIn>> {
    if !files.confined {
        return None;
    }
    Some(
        files
            .rules
            .iter()
            .map(|r| RuleIn {
                path: r.path.clone(),
                access: r.access,
                deny: r.action == crate::policy::Action::Deny,
                id: r.id,
                expires_ns: files.expires.get(&r.id).copied().unwrap_or(0),
            })
            .collect(),
    )
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;
